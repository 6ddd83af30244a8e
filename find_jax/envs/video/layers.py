"""Flax building blocks of ModelScope's UNet3D, written to equal diffusers' PyTorch modules exactly.

Everything here is channels-last (`x: [N, h, w, C]` for per-frame tensors, `[B, F, h, w, C]` for video); the
model in ``unet3d.py`` converts from and to torch's channels-first layout at its boundary. Submodule names
mirror the torch state-dict keys with ``.<i>`` folded into ``_<i>`` (``to_out.0`` -> ``to_out_0``), which is
what ``convert.py`` relies on.

Facts from diffusers 0.39 (``resnet.py``, ``attention.py``, ``transformer_2d.py``, ``transformer_temporal.py``):
GroupNorm eps is 1e-6 in both transformers, 1e-5 (torch's default) in ``TemporalConvLayer`` and ``norm_eps`` in
the resnets; LayerNorm eps 1e-5; GEGLU uses the exact (erf) GELU; q/k/v projections have no bias.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class GroupNorm(nn.Module):
    """torch ``GroupNorm`` on a channels-last tensor: statistics per (sample, group) over every other axis.

    `x: [N, ..., C]` -> same shape. On a 5-D video tensor `[B, F, h, w, C]` this is torch's GroupNorm over
    `(C/G, F, h, w)` jointly, as ``TransformerTemporalModel`` and ``TemporalConvLayer`` use it. Statistics are
    computed in float32 with the two-pass (biased) variance, as torch does.
    """

    num_groups: int
    epsilon: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels do not split into {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xg = x.astype(jnp.float32).reshape(x.shape[0], -1, self.num_groups, c // self.num_groups)
        mean = xg.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(xg - mean).mean(axis=(1, 3), keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def _layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
    # torch LayerNorm: eps 1e-5, two-pass variance.
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32, name=name)


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def conv(features: int, kernel: tuple[int, ...], name: str, dtype: Dtype, stride: int = 1, padding: Any = 1):
    return nn.Conv(
        features,
        kernel,
        strides=stride,
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, query_chunk: int | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v per head: `q: [N, T, H, D]`, `k, v: [N, S, H, D]` -> `[N, T, H, D]`.

    ``jax.nn.dot_product_attention`` with its default implementation (XLA's, on every backend in jax 0.10)
    builds the whole `[N, H, T, S]` score tensor: at ModelScope's top level, 64x64 latents (512 px) and 16
    frames with CFG that is `32 * 5 * 4096^2` floats, 10.7 GB for one layer. ``query_chunk`` (queries per
    chunk) runs the same call on `query_chunk` queries at a time under ``lax.map``, so only
    `[N, H, query_chunk, S]` scores exist at once. The softmax is over keys, so each query's row is computed
    from the same numbers either way (exactly the same math); the last chunk is padded with zero queries, whose
    rows are dropped. ``None`` (or a chunk >= T) is the plain call.
    """
    t = q.shape[1]
    if query_chunk is None or query_chunk >= t:
        return jax.nn.dot_product_attention(q, k, v)
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1 or None; got {query_chunk}")
    n, _, h, d = q.shape
    pad = -t % query_chunk
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    chunks = q.reshape(n, -1, query_chunk, h, d).transpose(1, 0, 2, 3, 4)  # [n_chunks, N, chunk, H, D]
    out = jax.lax.map(lambda qc: jax.nn.dot_product_attention(qc, k, v), chunks)
    return out.transpose(1, 0, 2, 3, 4).reshape(n, t + pad, h, d)[:, :t]


class Attention(nn.Module):
    """diffusers ``Attention`` with the default processor: `x: [N, T, D]`, `context: [N, S, D_ctx]` -> `[N, T, D]`.

    Self-attention when ``context`` is None. Scores are scaled by `dim_head ** -0.5`; computed by
    :func:`attend`, all at once (``query_chunk=None``) or ``query_chunk`` queries at a time (same result,
    bounded score memory).
    """

    heads: int
    dim_head: int
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None  # queries per attention chunk (None: all at once); see attend()

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        inner = self.heads * self.dim_head
        q = dense(inner, "to_q", self.dtype, use_bias=False)(x)
        k = dense(inner, "to_k", self.dtype, use_bias=False)(context)
        v = dense(inner, "to_v", self.dtype, use_bias=False)(context)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head)
        out = attend(split(q), split(k), split(v), query_chunk=self.query_chunk)
        out = out.reshape(x.shape[0], x.shape[1], inner)
        return dense(x.shape[-1], "to_out_0", self.dtype)(out)


class GEGLU(nn.Module):
    """``GEGLU``: `x: [..., D]` -> `[..., inner]`, `h * gelu(gate)` with the exact (erf) GELU, as torch's."""

    inner_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, gate = jnp.split(dense(2 * self.inner_dim, "proj", self.dtype)(x), 2, axis=-1)
        return h * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """``FeedForward`` with GEGLU and mult 4: `x: [..., D]` -> `[..., D]` (keys ``net.0.proj``, ``net.2``)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = GEGLU(4 * x.shape[-1], self.dtype, name="net_0")(x)
        return dense(x.shape[-1], "net_2", self.dtype)(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: self-attention, then cross-attention on ``context`` (or a second self-attention when
    ``context`` is None, i.e. diffusers' ``double_self_attention``), then GEGLU feed-forward.

    `x: [N, T, D]`, `context: [N, S, D_ctx] | None` -> `[N, T, D]`.
    """

    heads: int
    dim_head: int
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None  # Attention.query_chunk of both attentions

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        attn = lambda name: Attention(self.heads, self.dim_head, self.dtype, self.query_chunk, name=name)
        x = attn("attn1")(_layer_norm("norm1", self.dtype)(x)) + x
        x = attn("attn2")(_layer_norm("norm2", self.dtype)(x), context) + x
        return FeedForward(self.dtype, name="ff")(_layer_norm("norm3", self.dtype)(x)) + x


class Transformer2D(nn.Module):
    """``Transformer2DModel`` (continuous input, linear ``proj_in``/``proj_out``, one block) over each frame.

    `x: [N, h, w, C]`, `context: [N, S, D_ctx]` -> `[N, h, w, C]` (residual added).
    """

    heads: int
    dim_head: int
    groups: int
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None  # pixel queries per attention chunk (None: all h * w at once)

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        y = GroupNorm(self.groups, 1e-6, self.dtype, name="norm")(x).reshape(n, h * w, c)
        y = dense(self.heads * self.dim_head, "proj_in", self.dtype)(y)
        block = BasicTransformerBlock(
            self.heads, self.dim_head, self.dtype, self.query_chunk, name="transformer_blocks_0"
        )
        y = block(y, context)
        y = dense(c, "proj_out", self.dtype)(y)
        return y.reshape(n, h, w, c) + x


class TransformerTemporal(nn.Module):
    """``TransformerTemporalModel``: self-attention over the frame axis at every pixel, no positional embedding.

    `x: [B * F, h, w, C]` -> same shape (residual added). GroupNorm (eps 1e-6) is taken on the 5-D tensor,
    i.e. jointly over `(C/G, F, h, w)`; the block's two attentions are both self-attentions (no text).
    """

    heads: int
    dim_head: int
    groups: int
    num_frames: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bf, h, w, c = x.shape
        b, f = bf // self.num_frames, self.num_frames
        y = GroupNorm(self.groups, 1e-6, self.dtype, name="norm")(x.reshape(b, f, h, w, c))
        y = y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, f, c)
        y = dense(self.heads * self.dim_head, "proj_in", self.dtype)(y)
        y = BasicTransformerBlock(self.heads, self.dim_head, self.dtype, name="transformer_blocks_0")(y)
        y = dense(c, "proj_out", self.dtype)(y)
        y = y.reshape(b, h, w, f, c).transpose(0, 3, 1, 2, 4).reshape(bf, h, w, c)
        return y + x


class TemporalConvLayer(nn.Module):
    """``TemporalConvLayer``: 4 x [GroupNorm (eps 1e-5, 5-D) -> SiLU -> Conv3d (3, 1, 1)] plus identity.

    `x: [B * F, h, w, C]` -> same shape. The Conv3d pads the frame axis with zeros (padding (1, 0, 0)).
    Dropout is inactive at inference. Keys: ``conv1.0``/``conv1.2``, then ``convK.0``/``convK.3`` for K = 2..4.
    """

    groups: int
    num_frames: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bf, h, w, c = x.shape
        y = x.reshape(bf // self.num_frames, self.num_frames, h, w, c)
        identity = y
        for k in range(1, 5):
            y = nn.silu(GroupNorm(self.groups, 1e-5, self.dtype, name=f"conv{k}_0")(y))
            conv_index = 2 if k == 1 else 3
            pad = ((1, 1), (0, 0), (0, 0))
            y = conv(c, (3, 1, 1), f"conv{k}_{conv_index}", self.dtype, padding=pad)(y)
        return (identity + y).reshape(bf, h, w, c)


class ResnetBlock2D(nn.Module):
    """``ResnetBlock2D`` (default time-embedding norm, pre-norm, SiLU): `x: [N, h, w, C_in]`, `temb: [N, E]`
    -> `[N, h, w, out_channels]`; a 1x1 ``conv_shortcut`` when the widths differ.
    """

    out_channels: int
    groups: int
    eps: float
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        y = nn.silu(GroupNorm(self.groups, self.eps, self.dtype, name="norm1")(x))
        y = conv(self.out_channels, (3, 3), "conv1", self.dtype)(y)
        t = dense(self.out_channels, "time_emb_proj", self.dtype)(nn.silu(temb))
        y = y + t[:, None, None, :]
        y = nn.silu(GroupNorm(self.groups, self.eps, self.dtype, name="norm2")(y))
        y = conv(self.out_channels, (3, 3), "conv2", self.dtype)(y)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, (1, 1), "conv_shortcut", self.dtype, padding=0)(x)
        return (x + y) / self.output_scale_factor


class Downsample2D(nn.Module):
    """``Downsample2D`` with a conv: 3x3 stride 2; `x: [N, h, w, C]` -> `[N, ceil(h/2), ceil(w/2), C]`.

    ``padding=0`` pads right/bottom by one first, as torch does.
    """

    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        pad = ((self.padding, self.padding),) * 2
        return conv(x.shape[-1], (3, 3), "conv", self.dtype, stride=2, padding=pad)(x)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch ``F.interpolate(mode="nearest")`` to ``size``: source index `floor(i * in / out)`. `x: [N, h, w, C]`."""
    (h, w), (oh, ow) = x.shape[1:3], size
    rows = (jnp.arange(oh) * h) // oh
    cols = (jnp.arange(ow) * w) // ow
    return x[:, rows][:, :, cols]


class Upsample2D(nn.Module):
    """``Upsample2D`` with a conv: nearest x2 (or to ``output_size``) then 3x3 conv. `x: [N, h, w, C]`."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        if output_size is None:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = nearest_resize(x, output_size)
        return conv(x.shape[-1], (3, 3), "conv", self.dtype)(x)
