"""Latent -> image decoders used by the sampler (the last stage of the environment).

Two kinds share one signature ``decode(params, latents) -> images``:

* :class:`VaeDecoder` — Stable Diffusion's ``FlaxAutoencoderKL`` decoder: ``latents / scaling_factor``
  through the VAE, ``[-1, 1] -> [0, 1]``.
* :class:`PixelDecoder` — pixel-space models (the shipped shapes-world model): the "latent" is the image
  itself folded by a ``factor x factor`` space-to-depth, values in ``[-1, 1]``, optionally followed by
  ``coord_channels`` coordinate planes (:func:`coord_planes`) that the decoder drops; no parameters.

Latents are NCHW ``[B, C, h, w]`` (the layout diffusers' Flax UNet takes); images are NHWC
``[B, H, W, 3]`` float32 in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


def space_to_depth(images: jax.Array, factor: int) -> jax.Array:
    """``[B, H, W, 3]`` -> ``[B, 3*f*f, H/f, W/f]``.

    Channel ``(dy * f + dx) * 3 + c`` of latent pixel ``(i, j)`` holds image pixel ``(i*f + dy, j*f + dx)``,
    colour ``c``. Inverse of :func:`depth_to_space`.
    """
    b, h, w, c = images.shape
    x = images.reshape(b, h // factor, factor, w // factor, factor, c)  # b, i, dy, j, dx, c
    x = x.transpose(0, 2, 4, 5, 1, 3)  # b, dy, dx, c, i, j
    return x.reshape(b, factor * factor * c, h // factor, w // factor)


def depth_to_space(latents: jax.Array, factor: int) -> jax.Array:
    """``[B, 3*f*f, h, w]`` -> ``[B, h*f, w*f, 3]``; inverse of :func:`space_to_depth`."""
    b, ch, h, w = latents.shape
    c = ch // (factor * factor)
    x = latents.reshape(b, factor, factor, c, h, w)  # b, dy, dx, c, i, j
    x = x.transpose(0, 4, 1, 5, 2, 3)  # b, i, dy, j, dx, c
    return x.reshape(b, h * factor, w * factor, c)


def coord_planes(height: int, width: int, n: int = 2) -> jax.Array:
    """``[n, height, width]`` coordinate planes in ``[-1, 1]``: plane 0 = column (x, left -1 to right +1),
    plane 1 = row (y, top -1 to bottom +1); ``n`` is 0 or 2.

    A pixel-space model trained with these planes appended to every ``x_0`` must learn to generate them,
    so its UNet learns absolute position (a convolution only knows where it is from zero padding), and at
    moderate noise it reads position from its input. That is what lets it place an object "on the left".
    """
    if n not in (0, 2):
        raise ValueError(f"coordinate planes: 0 or 2; got {n}")
    ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, height), jnp.linspace(-1.0, 1.0, width), indexing="ij")
    return jnp.stack([xs, ys])[:n].astype(jnp.float32)


def to_unit_range(x: jax.Array) -> jax.Array:
    """``[-1, 1]`` model output -> float32 ``[0, 1]`` (clipped), as diffusers' pipelines do."""
    return jnp.clip(x.astype(jnp.float32) / 2.0 + 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class PixelDecoder:
    """Identity decoder for pixel-space models: depth-to-space, then ``[-1, 1] -> [0, 1]``."""

    factor: int = 1  # space-to-depth factor
    coord_channels: int = 0  # trailing coordinate planes (coord_planes), dropped by decode

    @property
    def latent_channels(self) -> int:
        """``3 * factor**2`` folded image channels plus the coordinate planes."""
        return 3 * self.factor**2 + self.coord_channels

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latent for an image of ``height x width``."""
        if height % self.factor or width % self.factor:
            raise ValueError(f"height/width must be multiples of {self.factor}; got {height}x{width}")
        return (self.latent_channels, height // self.factor, width // self.factor)

    def decode(self, params: Any, latents: jax.Array) -> jax.Array:
        """``[B, 3 f^2 + coord_channels, h, w]`` -> ``[B, h f, w f, 3]`` in ``[0, 1]``."""
        del params
        return to_unit_range(depth_to_space(latents[:, : 3 * self.factor**2], self.factor))


@dataclasses.dataclass(frozen=True)
class VaeDecoder:
    """Stable Diffusion's VAE decoder (``FlaxAutoencoderKL``); ``params`` are the VAE's params."""

    vae: Any  # FlaxAutoencoderKL module (hashable, carries its config)
    scaling_factor: float
    latent_channels: int
    downscale: int  # 2 ** (len(block_out_channels) - 1): 8 for SD1.5

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        if height % self.downscale or width % self.downscale:
            raise ValueError(f"height/width must be multiples of {self.downscale}; got {height}x{width}")
        return (self.latent_channels, height // self.downscale, width // self.downscale)

    def decode(self, params: Any, latents: jax.Array) -> jax.Array:
        x = latents / self.scaling_factor
        images = self.vae.apply({"params": params}, x, method=self.vae.decode).sample  # [B, 3, H, W]
        return to_unit_range(images.transpose(0, 2, 3, 1))
