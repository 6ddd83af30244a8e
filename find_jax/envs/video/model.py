"""The video environment's model: ModelScope text-to-video (``TextToVideoSDPipeline``) loaded offline.

Layout (diffusers', e.g. ``ali-vilab/text-to-video-ms-1.7b``)::

    model_index.json   {"_class_name": "TextToVideoSDPipeline", ...}
    unet/              config.json (UNet3DConditionModel) + diffusion_pytorch_model[.fp16].safetensors | .bin
    vae/               config.json + weights (SD's AutoencoderKL; frames are decoded one by one)
    text_encoder/      config.json + model.safetensors | pytorch_model.bin | flax_model.msgpack (CLIP)
    tokenizer/         vocab.json + merges.txt (CLIP BPE)
    scheduler/         scheduler_config.json (DDIM keys)

:func:`load_model` returns a :class:`VideoDiffusionModel`: the Flax UNet3D (:mod:`find_jax.envs.video.unet3d`),
diffusers' ``FlaxAutoencoderKL`` wrapped as a frame decoder, transformers' ``FlaxCLIPTextModel`` and the
tokenizer, with all params in one pytree kept apart from the modules.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp

from find_jax.envs.image.decoders import VaeDecoder
from find_jax.envs.loading import (
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
from find_jax.envs.video.loading import find_unet3d_weights, load_unet3d

DEFAULT_FRAMES = 16  # TextToVideoSDPipeline's num_frames default
DEFAULT_SAMPLE_SIZE = 32  # ModelScope's latent side (256 px) when unet/config.json has no sample_size


@dataclasses.dataclass(frozen=True, eq=False)
class VideoDiffusionModel:
    """A frozen text-to-video diffusion model, split into modules (static) and params (arguments).

    ``params`` is ``{"unet": ..., "text_encoder": ..., "decoder": ...}`` (``decoder``: the VAE's params).
    ``source`` records where the weights came from and ``fingerprint`` a hash of them.
    """

    unet: Any  # find_jax.envs.video.unet3d.UNet3DConditionModel (carries its UNet3DConfig as .config)
    text_encoder: Any  # transformers FlaxCLIPTextModel wrapper (created with _do_init=False)
    tokenizer: Any  # transformers CLIPTokenizer
    decoder: VaeDecoder  # per-frame VAE decoder
    scheduler_config: dict[str, Any]
    params: dict[str, Any]
    source: str
    fingerprint: str
    dtype: Any = jnp.float32
    num_frames: int = DEFAULT_FRAMES  # the model's own frame count (model_index.json "num_frames", else 16)
    kind = "video"  # the environment kind (find_jax.envs.make_environment)

    @property
    def default_frames(self) -> int:
        """Frames per video when the settings give none (16 for ModelScope, as the pipeline's default)."""
        return self.num_frames

    @property
    def default_size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels: the UNet's ``sample_size`` times the VAE's downscale (256 for ModelScope)."""
        side = (self.unet.config.sample_size or DEFAULT_SAMPLE_SIZE) * self.decoder.downscale
        return (side, side)

    def latent_shape(
        self, num_frames: int | None = None, height: int | None = None, width: int | None = None
    ) -> tuple[int, int, int, int]:
        """``(C, F, h, w)`` of the initial latent ``x_T`` of a ``num_frames x height x width`` video."""
        frames = self.default_frames if num_frames is None else num_frames
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"num_frames must be a whole number >= 1; got {frames!r}")
        dh, dw = self.default_size
        c, h, w = self.decoder.latent_shape(height or dh, width or dw)
        return (c, frames, h, w)

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)


def load_model(
    spec: str | os.PathLike | None, *, dtype: str | Any = "float32", weights: str = "auto"
) -> VideoDiffusionModel:
    """Loads every component of a diffusers-layout ModelScope directory, offline.

    Args:
      spec: a local directory or a hub id present in the local HF cache.
      dtype: ``"float32"`` (CPU, parity) or ``"bfloat16"`` / ``"float16"`` (GPU) for modules and params.
      weights: ``"auto"``, ``"pt"`` (torch weights everywhere) or ``"flax"`` (Flax msgpack for the VAE and text
        encoder; the UNet3D always reads torch weights). The UNet reads the fp32 file, or only the ``fp16``
        variant when that is all there is (upcast to ``dtype``).
    Raises :class:`~find_jax.envs.loading.ModelLoadError` naming what was looked for.
    """
    quiet_libraries()
    from diffusers import FlaxAutoencoderKL

    if weights not in ("auto", "flax", "pt"):
        raise ValueError(f"weights must be 'auto', 'flax' or 'pt'; got {weights!r}")
    dtype = jnp.dtype(dtype)
    root = resolve_model_dir(spec)
    how = (
        "a ModelScope text-to-video directory has model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
    )
    index = read_json(require(root / "model_index.json", "model_index.json", how))
    require(root / "unet" / "config.json", "unet/config.json", how)
    try:
        find_unet3d_weights(root / "unet")
        variant = None
    except ModelLoadError:
        try:
            find_unet3d_weights(root / "unet", variant="fp16")
        except ModelLoadError:
            find_unet3d_weights(root / "unet")  # raises, naming the fp32 files looked for and what is there
        variant = "fp16"
    unet, unet_params = load_unet3d(root, variant=variant, dtype=dtype)
    require(root / "vae", "component folder 'vae'", how)
    vae, vae_params = load_diffusers_component(FlaxAutoencoderKL, root / "vae", weights, dtype)
    text_encoder, text_params = load_text_encoder(root / "text_encoder", weights, dtype)
    tokenizer = load_tokenizer(root / "tokenizer")
    sched_file = require(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json", how)
    scheduler_config = read_json(sched_file)
    vcfg = vae.config
    decoder = VaeDecoder(
        vae=vae,
        scaling_factor=float(getattr(vcfg, "scaling_factor", 0.18215)),
        latent_channels=int(vcfg.latent_channels),
        downscale=2 ** (len(vcfg.block_out_channels) - 1),
    )
    if unet.config.in_channels != decoder.latent_channels:
        raise ModelLoadError(
            f"unet in_channels {unet.config.in_channels} != vae latent channels {decoder.latent_channels} in {root}"
        )
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ModelLoadError(
            f"unet cross_attention_dim {unet.config.cross_attention_dim} != text encoder hidden size "
            f"{text_encoder.config.hidden_size} in {root}"
        )
    params = {"unet": unet_params, "text_encoder": text_params, "decoder": vae_params}
    return VideoDiffusionModel(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        decoder=decoder,
        scheduler_config=scheduler_config,
        params=params,
        source=str(spec),
        fingerprint=fingerprint(params),
        dtype=dtype,
        num_frames=int(index.get("num_frames", DEFAULT_FRAMES)),
    )


__all__ = ["DEFAULT_FRAMES", "VideoDiffusionModel", "load_model"]
