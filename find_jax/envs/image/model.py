"""The image environment's model: a frozen text-to-image diffusion model (Stable Diffusion, or the shipped
shapes world) loaded offline from a diffusers-format directory.

Layout (see :mod:`find_jax.envs.loading`)::

    model_index.json
    unet/          config.json + diffusion_flax_model.msgpack | diffusion_pytorch_model.safetensors | .bin
    text_encoder/  config.json + flax_model.msgpack | model.safetensors | pytorch_model.bin
    tokenizer/     vocab.json + merges.txt (CLIP BPE)
    scheduler/     scheduler_config.json (DDIM keys)
    vae/           config.json + weights          (latent models: Stable Diffusion)
    decoder/       config.json {"_class_name": "PixelDecoder", "factor": f, "coord_channels": 0|2}   (pixel space)

:func:`load_model` returns a :class:`DiffusionModel`: the Flax modules, their params as one pytree, the tokenizer
and the scheduler config. The params are kept apart from the modules so jitted code takes them as arguments.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp

from find_jax.envs.image.decoders import PixelDecoder, VaeDecoder
from find_jax.envs.loading import (
    DEFAULT_MODEL,
    ModelLoadError,
    fingerprint,
    load_diffusers_component,
    load_text_encoder,
    load_tokenizer,
    quiet_libraries,
    read_json,
    require,
    resolve_model_dir,
)


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionModel:
    """A frozen text-to-image diffusion model, split into modules (static) and params (arguments).

    ``params`` is ``{"unet": ..., "text_encoder": ..., "decoder": ...}`` (``decoder`` is ``{}`` for pixel-space
    models). ``source`` records where the weights came from and ``fingerprint`` a hash of them: FIND never
    checkpoints the frozen weights, it records these instead.
    """

    unet: Any  # diffusers FlaxUNet2DConditionModel (linen module, carries its config)
    text_encoder: Any  # transformers FlaxCLIPTextModel wrapper (created with _do_init=False)
    tokenizer: Any  # transformers CLIPTokenizer
    decoder: PixelDecoder | VaeDecoder
    scheduler_config: dict[str, Any]
    params: dict[str, Any]
    source: str
    fingerprint: str
    dtype: Any = jnp.float32
    kind = "image"  # the environment kind (find_jax.envs.make_environment)

    @property
    def default_size(self) -> tuple[int, int]:
        """``(height, width)`` the UNet was trained at: ``sample_size * downscale``."""
        size = self.unet.config.sample_size
        f = self.decoder.factor if isinstance(self.decoder, PixelDecoder) else self.decoder.downscale
        return (size * f, size * f)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """``(C, h, w)`` of the initial latent ``x_T`` for an image of ``height x width``."""
        dh, dw = self.default_size
        return self.decoder.latent_shape(height or dh, width or dw)

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)


def load_model(
    spec: str | os.PathLike | None = None, *, dtype: str | Any = "float32", weights: str = "auto"
) -> DiffusionModel:
    """Loads every component of a diffusers-format model, offline.

    Args:
      spec: a local directory, a hub id present in the local HF cache, or ``None`` / ``"shapes"`` for the
        model shipped in the package.
      dtype: ``"float32"`` (CPU, parity) or ``"bfloat16"`` (GPU) for modules and params.
      weights: ``"auto"`` (Flax if present, else PyTorch), ``"flax"`` or ``"pt"`` (``.safetensors`` or ``.bin``).
    """
    quiet_libraries()  # before the import: diffusers' Flax modules log a deprecation line when imported
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel

    if weights not in ("auto", "flax", "pt"):
        raise ValueError(f"weights must be 'auto', 'flax' or 'pt'; got {weights!r}")
    dtype = jnp.dtype(dtype)
    root = resolve_model_dir(spec)
    how = "a diffusers-format model directory has model_index.json and one folder per component"
    require(root / "model_index.json", "model_index.json", how)
    unet, unet_params = load_diffusers_component(FlaxUNet2DConditionModel, root / "unet", weights, dtype)
    text_encoder, text_params = load_text_encoder(root / "text_encoder", weights, dtype)
    tokenizer = load_tokenizer(root / "tokenizer")
    sched_file = require(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json", how)
    scheduler_config = read_json(sched_file)
    if (root / "vae").is_dir():
        vae, vae_params = load_diffusers_component(FlaxAutoencoderKL, root / "vae", weights, dtype)
        vcfg = vae.config
        decoder: PixelDecoder | VaeDecoder = VaeDecoder(
            vae=vae,
            scaling_factor=float(getattr(vcfg, "scaling_factor", 0.18215)),
            latent_channels=int(vcfg.latent_channels),
            downscale=2 ** (len(vcfg.block_out_channels) - 1),
        )
    elif (root / "decoder" / "config.json").is_file():
        dcfg = read_json(root / "decoder" / "config.json")
        if dcfg.get("_class_name") != "PixelDecoder":
            raise ModelLoadError(f"unknown decoder {dcfg.get('_class_name')!r} in {root / 'decoder'}")
        decoder = PixelDecoder(factor=int(dcfg.get("factor", 1)), coord_channels=int(dcfg.get("coord_channels", 0)))
        vae_params = {}
    else:
        raise ModelLoadError(f"{root} has neither vae/ nor decoder/config.json — {how}")
    if unet.config.in_channels != decoder.latent_channels:
        raise ModelLoadError(
            f"unet in_channels {unet.config.in_channels} != decoder latent channels {decoder.latent_channels}"
        )
    params = {"unet": unet_params, "text_encoder": text_params, "decoder": vae_params}
    return DiffusionModel(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        decoder=decoder,
        scheduler_config=scheduler_config,
        params=params,
        source=str(spec if spec is not None else DEFAULT_MODEL),
        fingerprint=fingerprint(params),
        dtype=dtype,
    )
