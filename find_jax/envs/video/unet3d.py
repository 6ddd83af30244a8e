"""Flax port of diffusers' PyTorch ``UNet3DConditionModel`` (ModelScope text-to-video, ms-1.7b).

diffusers never had a Flax UNet3D: this one is ours, checked against the torch model in ``tests/test_unet3d.py``.
The call takes and returns torch's channels-first video layout, `sample: [B, C, F, h, w]`; inside, frames are
folded into the batch (`[B * F, h, w, C]`, channels-last) exactly as torch folds them into its batch.

Structure (``unet_3d_condition.py``, ``unet_3d_blocks.py``): ``conv_in`` -> ``transformer_in`` (8 heads of
``attention_head_dim``) -> down blocks -> mid block -> up blocks -> GroupNorm/SiLU/``conv_out``. Inside a block,
each layer is resnet -> temporal conv -> spatial transformer -> temporal transformer (the last two only in
``CrossAttn*`` blocks). Every transformer in the blocks has heads of width ``attention_head_dim`` (64 for
ModelScope), so `C / attention_head_dim` heads at width C (diffusers passes the config value through its
``num_attention_heads`` argument and divides, issue #2011: the count is a width). The time
embedding and the text context are repeated per frame.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from find_jax.envs.video.layers import (
    Downsample2D,
    GroupNorm,
    ResnetBlock2D,
    TemporalConvLayer,
    Transformer2D,
    TransformerTemporal,
    Upsample2D,
    conv,
    dense,
)

Dtype = Any

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")


@dataclasses.dataclass(frozen=True)
class UNet3DConfig:
    """The architecture fields of a diffusers ``UNet3DConditionModel`` ``config.json`` (defaults as diffusers')."""

    sample_size: int | None = None  # latent side the model was trained at (informational)
    in_channels: int = 4  # latent channels in
    out_channels: int = 4  # predicted noise channels out
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "DownBlock3D",
    )
    up_block_types: tuple[str, ...] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # width of each resolution level
    layers_per_block: int = 2  # resnets per down block (up blocks have one more)
    downsample_padding: int = 1  # padding of the stride-2 downsampling conv
    mid_block_scale_factor: float = 1.0  # resnet output divisor in the mid block
    act_fn: str = "silu"  # only SiLU is supported (ModelScope's)
    norm_num_groups: int = 32  # GroupNorm groups everywhere
    norm_eps: float = 1e-5  # GroupNorm eps of the resnets and of the output norm
    cross_attention_dim: int = 1024  # text-context width
    attention_head_dim: int = 64  # head width; heads = C / attention_head_dim (diffusers issue #2011)
    num_attention_heads: None = None  # must be None, as diffusers requires
    time_cond_proj_dim: None = None  # must be None (no timestep conditioning projection)

    def __post_init__(self):
        n = len(self.block_out_channels)
        problems = []
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            problems.append("down_block_types, up_block_types and block_out_channels must have the same length")
        bad = [t for t in self.down_block_types if t not in DOWN_BLOCK_TYPES]
        bad += [t for t in self.up_block_types if t not in UP_BLOCK_TYPES]
        if bad:
            problems.append(f"unsupported block types {bad}")
        if self.act_fn not in ("silu", "swish"):
            problems.append(f"act_fn {self.act_fn!r} (only silu)")
        if self.num_attention_heads is not None:
            problems.append("num_attention_heads must be null (diffusers refuses it too)")
        if self.time_cond_proj_dim is not None:
            problems.append("time_cond_proj_dim is not supported")
        if not isinstance(self.attention_head_dim, int):
            problems.append("attention_head_dim must be one int")
        if self.norm_num_groups is None:
            problems.append("norm_num_groups must be set")
        if problems:
            raise ValueError("UNet3DConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNet3DConfig:
        """From a parsed ``config.json``; keys starting with ``_`` are metadata; unknown keys are refused."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if not k.startswith("_") and k not in fields)
        if unknown:
            raise ValueError(f"UNet3DConfig: unknown config keys {unknown}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in fields}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def timestep_embedding(timesteps: jax.Array, dim: int) -> jax.Array:
    """diffusers ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``: `[B]` -> `[B, dim]`, [cos, sin]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _block_layer(
    parent: nn.Module,
    i: int,
    x: jax.Array,
    temb: jax.Array,
    context: jax.Array | None,
    *,
    out_channels: int,
    cfg: UNet3DConfig,
    dim_head: int,
    num_frames: int,
    attn: bool,
    scale: float = 1.0,
) -> jax.Array:
    """Layer ``i`` of a 3-D block: resnet -> temp conv (-> spatial transformer -> temporal transformer).

    Called inside ``parent``'s compact ``__call__``, so the submodules land in its scope as ``resnets_i``,
    ``temp_convs_i``, ``attentions_i``, ``temp_attentions_i``, as the torch keys have them. `x: [B*F, h, w, C]`.
    """
    g, dt = cfg.norm_num_groups, parent.dtype
    x = ResnetBlock2D(out_channels, g, cfg.norm_eps, scale, dt, name=f"resnets_{i}")(x, temb)
    x = TemporalConvLayer(g, num_frames, dt, name=f"temp_convs_{i}")(x)
    if attn:
        heads = out_channels // dim_head
        x = Transformer2D(heads, dim_head, g, dt, parent.query_chunk, name=f"attentions_{i}")(x, context)
        x = TransformerTemporal(heads, dim_head, g, num_frames, dt, name=f"temp_attentions_{i}")(x)
    return x


class DownBlock3D(nn.Module):
    """``CrossAttnDownBlock3D`` (``attn=True``) or ``DownBlock3D``: `x: [B*F, h, w, C_in]` ->
    (`[B*F, h', w', C_out]`, skip tensors, one per layer plus one after the downsampler).
    """

    out_channels: int
    cfg: UNet3DConfig
    dim_head: int
    num_frames: int
    attn: bool
    add_downsample: bool
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None  # spatial attention queries per chunk (UNet3DConditionModel.query_chunk)

    @nn.compact
    def __call__(self, x, temb, context):
        skips = []
        for i in range(self.cfg.layers_per_block):
            x = _block_layer(
                self,
                i,
                x,
                temb,
                context,
                out_channels=self.out_channels,
                cfg=self.cfg,
                dim_head=self.dim_head,
                num_frames=self.num_frames,
                attn=self.attn,
            )
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.cfg.downsample_padding, self.dtype, name="downsamplers_0")(x)
            skips.append(x)
        return x, skips


class UpBlock3D(nn.Module):
    """``CrossAttnUpBlock3D`` (``attn=True``) or ``UpBlock3D``: concatenates one skip per layer (last first) on
    the channel axis before each resnet; `x: [B*F, h, w, C]` -> `[B*F, h'', w'', out_channels]`.
    """

    out_channels: int
    cfg: UNet3DConfig
    dim_head: int
    num_frames: int
    attn: bool
    add_upsample: bool
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None  # spatial attention queries per chunk (UNet3DConditionModel.query_chunk)

    @nn.compact
    def __call__(self, x, skips, temb, context, upsample_size=None):
        skips = list(skips)
        for i in range(self.cfg.layers_per_block + 1):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = _block_layer(
                self,
                i,
                x,
                temb,
                context,
                out_channels=self.out_channels,
                cfg=self.cfg,
                dim_head=self.dim_head,
                num_frames=self.num_frames,
                attn=self.attn,
            )
        if self.add_upsample:
            x = Upsample2D(self.dtype, name="upsamplers_0")(x, upsample_size)
        return x


class MidBlock3D(nn.Module):
    """``UNetMidBlock3DCrossAttn`` (one layer): resnet -> temp conv -> [transformer -> temporal transformer ->
    resnet -> temp conv]. `x: [B*F, h, w, C]` -> same shape.
    """

    cfg: UNet3DConfig
    dim_head: int
    num_frames: int
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None  # spatial attention queries per chunk (UNet3DConditionModel.query_chunk)

    @nn.compact
    def __call__(self, x, temb, context):
        c, g, dt, s = x.shape[-1], self.cfg.norm_num_groups, self.dtype, self.cfg.mid_block_scale_factor
        x = ResnetBlock2D(c, g, self.cfg.norm_eps, s, dt, name="resnets_0")(x, temb)
        x = TemporalConvLayer(g, self.num_frames, dt, name="temp_convs_0")(x)
        heads, d = c // self.dim_head, self.dim_head
        x = Transformer2D(heads, d, g, dt, self.query_chunk, name="attentions_0")(x, context)
        x = TransformerTemporal(heads, d, g, self.num_frames, dt, name="temp_attentions_0")(x)
        x = ResnetBlock2D(c, g, self.cfg.norm_eps, s, dt, name="resnets_1")(x, temb)
        return TemporalConvLayer(g, self.num_frames, dt, name="temp_convs_1")(x)


class UNet3DConditionModel(nn.Module):
    """ModelScope's text-to-video noise predictor.

    ``apply({"params": params}, sample, timesteps, encoder_hidden_states)``:
      `sample: [B, in_channels, F, h, w]` (torch layout), `timesteps`: scalar or `[B]` (int or float),
      `encoder_hidden_states: [B, S, cross_attention_dim]` -> `[B, out_channels, F, h, w]`.
    `h, w` need not be divisible by the total downsampling: upsampling then matches the skip sizes, as torch.
    ``dtype`` is the compute dtype (float32, or bfloat16 on GPU); GroupNorm statistics stay in float32.
    ``query_chunk``: the spatial (per-frame, `h * w` queries) attentions take this many queries at a time
    (``layers.attend``: same result, score memory `[B * F, heads, query_chunk, S]` instead of `[..., h * w, S]`);
    None computes each layer's scores at once. It changes no parameter: ``model.clone(query_chunk=n)`` reuses
    the params. The temporal attentions (over `F` frames) are never chunked.
    """

    config: UNet3DConfig
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None

    @nn.compact
    def __call__(self, sample: jax.Array, timesteps: jax.Array, encoder_hidden_states: jax.Array) -> jax.Array:
        cfg, dt = self.config, self.dtype
        b, _, f, h, w = sample.shape
        boc = cfg.block_out_channels
        n_levels = len(boc)

        t = jnp.broadcast_to(jnp.asarray(timesteps).reshape(-1), (b,))
        t_emb = timestep_embedding(t, boc[0]).astype(dt)
        emb = _TimeEmbedding(4 * boc[0], dt, name="time_embedding")(t_emb)
        emb = jnp.repeat(emb, f, axis=0)  # [B*F, E], frame-major within each sample as torch repeat_interleave
        context = jnp.repeat(encoder_hidden_states.astype(dt), f, axis=0)

        x = sample.astype(dt).transpose(0, 2, 3, 4, 1).reshape(b * f, h, w, -1)
        x = conv(boc[0], (3, 3), "conv_in", dt)(x)
        x = TransformerTemporal(8, cfg.attention_head_dim, cfg.norm_num_groups, f, dt, name="transformer_in")(x)

        skips = [x]
        dim_head = cfg.attention_head_dim
        for i, kind in enumerate(cfg.down_block_types):
            x, s = DownBlock3D(
                boc[i],
                cfg,
                dim_head,
                f,
                attn=kind == "CrossAttnDownBlock3D",
                add_downsample=i < n_levels - 1,
                dtype=dt,
                query_chunk=self.query_chunk,
                name=f"down_blocks_{i}",
            )(x, emb, context)
            skips += s

        x = MidBlock3D(cfg, dim_head, f, dt, self.query_chunk, name="mid_block")(x, emb, context)

        need_sizes = any(d % 2 ** (n_levels - 1) for d in (h, w))
        rev = list(reversed(boc))
        for i, kind in enumerate(cfg.up_block_types):
            n = cfg.layers_per_block + 1
            block_skips, skips = skips[-n:], skips[:-n]
            last = i == n_levels - 1
            size = tuple(skips[-1].shape[1:3]) if (need_sizes and not last) else None
            x = UpBlock3D(
                rev[i],
                cfg,
                dim_head,
                f,
                attn=kind == "CrossAttnUpBlock3D",
                add_upsample=not last,
                dtype=dt,
                query_chunk=self.query_chunk,
                name=f"up_blocks_{i}",
            )(x, block_skips, emb, context, size)

        x = nn.silu(GroupNorm(cfg.norm_num_groups, cfg.norm_eps, dt, name="conv_norm_out")(x))
        x = conv(cfg.out_channels, (3, 3), "conv_out", dt)(x)
        return x.reshape(b, f, h, w, -1).transpose(0, 4, 1, 2, 3)


class _TimeEmbedding(nn.Module):
    """``TimestepEmbedding``: linear -> SiLU -> linear, `[B, C0]` -> `[B, 4 * C0]`."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.silu(dense(self.features, "linear_1", self.dtype)(x))
        return dense(self.features, "linear_2", self.dtype)(x)


@functools.lru_cache(maxsize=8)
def unet3d_param_shapes(config: UNet3DConfig) -> Any:
    """The parameter tree of ``UNet3DConditionModel(config)`` as ``jax.ShapeDtypeStruct`` leaves (no compute).

    Cached per config (read it, do not modify it).
    """
    model = UNet3DConditionModel(config)
    side = 2 ** (len(config.block_out_channels) - 1)
    sample = jnp.zeros((1, config.in_channels, 1, side, side), jnp.float32)
    context = jnp.zeros((1, 1, config.cross_attention_dim), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample, jnp.zeros((1,)), context))
    return shapes["params"]
