"""The shapes-world text-to-image model: configs, construction and the saved diffusers-style layout.

Same architecture classes and sampler as Stable Diffusion (DESIGN.md §4): a
``diffusers.FlaxUNet2DConditionModel`` conditioned on a ``transformers.FlaxCLIPTextModel``, a DDIM
scheduler, but in pixel space: the "latent" is the 32x32x3 image in ``[-1, 1]`` folded by a ``f x f``
space-to-depth (the shipped model: ``f = 2``, ``[12, 16, 16]``; ``f = 1`` keeps the image at full resolution,
``[3, 32, 32]``), followed by ``coord_channels`` coordinate planes that the model learns to generate (its source
of absolute position) and the decoder drops (:class:`find_jax.envs.image.decoders.PixelDecoder` with
``factor=f``).

Saved layout (what the sampler's loader reads)::

    model_index.json
    unet/config.json + diffusion_flax_model.msgpack
    text_encoder/config.json + flax_model.msgpack
    tokenizer/vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json        (diffusers DDIMScheduler keys)
    decoder/config.json                    {"_class_name": "PixelDecoder", "factor": 2, "coord_channels": 2}
    training.json                          (steps, final loss, seed, data bias, wall time)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp

from find_jax.envs.image.decoders import coord_planes, space_to_depth
from find_jax.envs.image.shapes import tokenizer as shapes_tokenizer
from find_jax.envs.image.shapes import world

FACTORS = (1, 2, 4)  # space-to-depth factors a model may use (they divide the 32 px image side)


@dataclasses.dataclass(frozen=True)
class ShapesModelConfig:
    """Sizes of the UNet, the text encoder and the noise schedule."""

    # Space-to-depth factor f: latent = [3 f^2 + coord_channels, 32 / f, 32 / f] (shipped: 2, [14, 16, 16])
    factor: int = 2
    # UNet channels per resolution (shipped: 16x16, 8x8); multiples of 32 (diffusers' Flax GroupNorm: 32 groups)
    block_out_channels: tuple[int, ...] = (64, 128)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D")  # attention at 8x8 only
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D")  # mirror of the down blocks
    layers_per_block: int = 1  # resnets per down block (up blocks get one more, as in diffusers)
    attention_head_dim: int = 8  # diffusers' name for the number of heads (SD uses 8 too)
    text_hidden: int = 64  # CLIP text width = UNet cross_attention_dim
    text_layers: int = 2  # CLIP text transformer layers
    text_heads: int = 4  # CLIP text attention heads
    text_intermediate: int = 256  # CLIP text MLP width
    max_length: int = shapes_tokenizer.MAX_LENGTH  # tokens per caption = max_position_embeddings
    num_train_timesteps: int = 1000  # DDPM steps
    beta_start: float = 1e-4  # linear beta schedule start (pixel-space DDPM default)
    beta_end: float = 0.02  # linear beta schedule end
    # UNet target: "v_prediction" (v = sqrt(abar) eps - sqrt(1 - abar) x0) or "epsilon". In pixel space
    # with this schedule abar_T ~ 4e-5, so an epsilon model's x0 estimate (x - sqrt(1-abar) eps) / sqrt(abar)
    # amplifies its error ~100x at the first DDIM steps; measured here: 20-step DDIM samples from an
    # epsilon model at 500 steps stayed noise, x0_hat std 13. v-prediction has no such division.
    prediction_type: str = "v_prediction"
    # Coordinate planes appended to every x_0 (find_jax.envs.image.decoders.coord_planes): 0 or 2. Without them the UNet
    # has no absolute position (measured: the x0 prediction for "on the left" and "on the right" had the same
    # centroid to 0.02 px after 3000 steps), so position captions land in the named half by chance.
    coord_channels: int = 2

    @property
    def image_channels(self) -> int:
        """Channels of the folded image, ``3 f^2``."""
        return 3 * self.factor**2

    @property
    def latent_channels(self) -> int:
        """Channels of the UNet's input/output: the folded image plus the coordinate planes."""
        return self.image_channels + self.coord_channels

    @property
    def latent_size(self) -> int:
        """Side of the latent, ``32 / f``."""
        return world.IMAGE_SIZE // self.factor


def with_levels(cfg: ShapesModelConfig, channels: tuple[int, ...], attention_levels: int = 1) -> ShapesModelConfig:
    """``cfg`` with one UNet level per entry of ``channels``, cross-attention at the ``attention_levels`` lowest
    resolutions (default: the lowest only).

    Two levels give the shipped layout (``DownBlock2D``, ``CrossAttnDownBlock2D``); three add a plain level on
    top (for ``factor=1``: 32x32 and 16x16 plain, attention at 8x8, as in the shipped model).
    """
    n = len(channels)
    if n < 1:
        raise ValueError("a UNet needs at least one level")
    if not 1 <= attention_levels <= n:
        raise ValueError(f"attention_levels must be in [1, {n}] for {n} UNet levels; got {attention_levels}")
    plain, attn = n - attention_levels, attention_levels
    down = ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * attn
    up = ("CrossAttnUpBlock2D",) * attn + ("UpBlock2D",) * plain
    return dataclasses.replace(cfg, block_out_channels=tuple(channels), down_block_types=down, up_block_types=up)


def tiny_config() -> ShapesModelConfig:
    """A minimal model for tests (seconds to init and step)."""
    return ShapesModelConfig(
        block_out_channels=(32,),
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        attention_head_dim=2,
        text_hidden=16,
        text_layers=1,
        text_heads=2,
        text_intermediate=32,
    )


def make_unet(cfg: ShapesModelConfig):
    """The ``FlaxUNet2DConditionModel`` module for ``[B, 3 f^2 + coord_channels, 32 / f, 32 / f]`` latents."""
    from diffusers import FlaxUNet2DConditionModel

    return FlaxUNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        cross_attention_dim=cfg.text_hidden,
    )


def make_text_config(cfg: ShapesModelConfig, vocab_size: int, bos_id: int, eos_id: int):
    """The ``CLIPTextConfig`` of the text encoder (pad = EOS as in SD's tokenizer)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        projection_dim=cfg.text_hidden,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


@dataclasses.dataclass(frozen=True)
class ShapesModel:
    """The modules of the model (no params): UNet, text encoder, tokenizer and model config."""

    unet: Any  # FlaxUNet2DConditionModel
    text_encoder: Any  # FlaxCLIPTextModel (created with _do_init=False)
    tokenizer: Any  # CLIPTokenizer for the world's vocabulary
    config: ShapesModelConfig  # sizes


def build_model(cfg: ShapesModelConfig, tokenizer_dir: str) -> ShapesModel:
    """Writes the offline tokenizer to ``tokenizer_dir`` and builds the (parameter-free) modules."""
    from transformers import FlaxCLIPTextModel

    from find_jax.envs.quiet import quiet_upstream_deprecations

    quiet_upstream_deprecations()  # the training log shows each upstream deprecation notice once
    tok = shapes_tokenizer.write_tokenizer(tokenizer_dir, max_length=cfg.max_length)
    text_cfg = make_text_config(cfg, len(tok), tok.bos_token_id, tok.eos_token_id)
    text = FlaxCLIPTextModel(text_cfg, _do_init=False)
    return ShapesModel(make_unet(cfg), text, tok, cfg)


def init_params(model: ShapesModel, rng: jax.Array) -> dict[str, Any]:
    """Random ``{"unet": ..., "text_encoder": ...}`` params (jitted init: eager UNet init is ~40 s)."""
    rng_unet, rng_text = jax.random.split(rng)
    cfg = model.config

    @jax.jit
    def init_fn(rng_unet, rng_text):
        sample = jnp.zeros((1, cfg.latent_channels, cfg.latent_size, cfg.latent_size), jnp.float32)
        ctx = jnp.zeros((1, cfg.max_length, cfg.text_hidden), jnp.float32)
        unet = model.unet.init(rng_unet, sample, jnp.zeros((1,), jnp.int32), ctx)["params"]
        text = model.text_encoder.init_weights(rng_text, (1, cfg.max_length))
        return {"unet": unet, "text_encoder": text}

    return init_fn(rng_unet, rng_text)


def image_latents(cfg: ShapesModelConfig, images: jax.Array) -> jax.Array:
    """Training images ``[B, 32, 32, 3]`` in ``[0, 1]`` -> the model's ``x_0``: ``[B, 3 f^2 + c, 32/f, 32/f]``.

    The image in ``[-1, 1]`` folded by space-to-depth, then ``c = cfg.coord_channels`` coordinate planes
    (the same for every image). :class:`find_jax.envs.image.decoders.PixelDecoder` inverts it.
    """
    x0 = space_to_depth(images * 2.0 - 1.0, cfg.factor)  # [B, 3 f^2, 32/f, 32/f]
    planes = coord_planes(x0.shape[2], x0.shape[3], cfg.coord_channels)  # [c, 32/f, 32/f]
    return jnp.concatenate([x0, jnp.broadcast_to(planes, (x0.shape[0], *planes.shape))], axis=1)


def encode_text(model: ShapesModel, text_params: Any, input_ids: jax.Array) -> jax.Array:
    """``input_ids [B, L]`` -> text embeddings ``[B, L, text_hidden]`` (last hidden state, as SD)."""
    return model.text_encoder(input_ids, params=text_params, train=False)[0]


def scheduler_config(cfg: ShapesModelConfig) -> dict[str, Any]:
    """diffusers ``DDIMScheduler`` config of the model's noise schedule."""
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "beta_schedule": "linear",
        "prediction_type": cfg.prediction_type,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "clip_sample": False,
        "timestep_spacing": "leading",
    }


def decoder_config(cfg: ShapesModelConfig) -> dict[str, Any]:
    """``decoder/config.json``: the :class:`find_jax.envs.image.decoders.PixelDecoder` of the saved layout."""
    return {"_class_name": "PixelDecoder", "factor": cfg.factor, "coord_channels": cfg.coord_channels}


def model_index() -> dict[str, Any]:
    """``model_index.json`` of the saved layout."""
    return {
        "_class_name": "ShapesPipeline",
        "unet": ["diffusers", "FlaxUNet2DConditionModel"],
        "text_encoder": ["transformers", "FlaxCLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "FlaxDDIMScheduler"],
        "decoder": ["find_jax.envs.image.decoders", "PixelDecoder"],
    }


# FindConfig fields this model recommends (read by find_jax.optimize.make_config; explicit flags win): its exact
# scorer as the reward, 20 DDIM steps (the model is small; 50 adds nothing), and its guidance scale: CFG 2, the
# best of 1-7.5 for common captions on the separate tuning prompts (README, "Model quality"); higher scales
# cost counts and relations.
FIND_DEFAULTS = {"reward": "shapes", "steps": 20, "guidance": 2.0}


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def save_model(model: ShapesModel, params: dict[str, Any], out_dir: str, training: dict[str, Any]) -> None:
    """Writes the full layout to ``out_dir`` atomically (a temp dir, then a rename).

    ``params``: ``{"unet": ..., "text_encoder": ...}``; ``training``: the ``training.json`` record. A reader
    never sees a half-written directory; an existing ``out_dir`` is replaced.
    """
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".tmp"
    old = out_dir + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    params = jax.device_get(params)
    model.unet.save_pretrained(os.path.join(tmp, "unet"), params=params["unet"])
    model.text_encoder.save_pretrained(os.path.join(tmp, "text_encoder"), params=params["text_encoder"])
    model.tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    os.makedirs(os.path.join(tmp, "scheduler"))
    _write_json(os.path.join(tmp, "scheduler", "scheduler_config.json"), scheduler_config(model.config))
    os.makedirs(os.path.join(tmp, "decoder"))
    _write_json(os.path.join(tmp, "decoder", "config.json"), decoder_config(model.config))
    _write_json(os.path.join(tmp, "model_index.json"), model_index())
    _write_json(os.path.join(tmp, "training.json"), training)
    _write_json(os.path.join(tmp, "find_defaults.json"), FIND_DEFAULTS)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
