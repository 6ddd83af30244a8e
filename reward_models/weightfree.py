"""Rewards that need no weights: JPEG (in)compressibility, closeness to a colour, brightness.

* ``jpeg_compressibility`` / ``jpeg_incompressibility`` follow DDPO (Black et al., 2023): each image is
  rounded to 8 bits and JPEG-encoded with PIL at a fixed quality (95); the reward is minus / plus the file
  size in kB (1 kB = 1000 bytes). This one runs **on the host**: the images are copied to host memory and
  encoded image by image with PIL (there is no JPEG encoder on the accelerator); prompts are ignored.
* ``color``: mean closeness of the pixels to a target colour, ``1 - mean_pixels ||rgb - target||_2 /
  sqrt(3)``, in [0, 1] (1 = every pixel is exactly the target). Target given as ``rgb=(r, g, b)`` in
  [0, 1] (integers up to 255 are read as 8-bit values) or ``color="red"`` (see :data:`COLOR_NAMES`).
  Jitted JAX on the images' device; prompts are ignored.
* ``brightness``: mean Rec. 601 luma ``0.299 R + 0.587 G + 0.114 B`` in [0, 1]; jitted JAX.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reward_models.registry import RewardFn, register

# Named target colours for the ``color`` reward, RGB in [0, 1].
COLOR_NAMES: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 0.5),
    "pink": (1.0, 0.75, 0.8),
    "brown": (0.6, 0.3, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "grey": (0.5, 0.5, 0.5),
}


def to_uint8(images: Any) -> np.ndarray:
    """``[..., 3]`` floats in [0, 1] -> host uint8, rounding as DDPO does (``round(x * 255)``, clipped)."""
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def jpeg_sizes_kb(images: Any, quality: int = 95) -> np.ndarray:
    """JPEG file size in kB (1000 bytes) of each image. Host-side (PIL).

    Args:
      images: ``[B, H, W, 3]`` float in [0, 1].
      quality: PIL JPEG quality (DDPO uses 95).

    Returns:
      ``sizes: [B]`` float32.
    """
    from PIL import Image

    pixels = to_uint8(images)
    sizes = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img, mode="RGB").save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return np.asarray(sizes, dtype=np.float32)


def _check_quality(quality: Any) -> int:
    """An integer JPEG quality in [1, 100]; digit strings (from the command line) are accepted."""
    if isinstance(quality, str) and quality.strip().isdigit():
        quality = int(quality)
    if isinstance(quality, bool) or not isinstance(quality, int | np.integer) or not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be an integer in [1, 100] (PIL JPEG quality), got {quality!r}")
    return int(quality)


@register(
    "jpeg_compressibility",
    description="minus the JPEG size in kB at quality 95 (DDPO); host-side PIL, prompts ignored",
)
def make_jpeg_compressibility(quality: int = 95) -> RewardFn:
    """Reward = ``-jpeg_size_kb(image)``: smaller files (simpler images) score higher."""
    q = _check_quality(quality)

    def reward_fn(images: Any, prompts: Sequence[str]) -> np.ndarray:
        del prompts
        return -jpeg_sizes_kb(images, q)

    return reward_fn


@register(
    "jpeg_incompressibility",
    description="the JPEG size in kB at quality 95 (DDPO); host-side PIL, prompts ignored",
)
def make_jpeg_incompressibility(quality: int = 95) -> RewardFn:
    """Reward = ``+jpeg_size_kb(image)``: larger files (more detailed images) score higher."""
    q = _check_quality(quality)

    def reward_fn(images: Any, prompts: Sequence[str]) -> np.ndarray:
        del prompts
        return jpeg_sizes_kb(images, q)

    return reward_fn


def parse_color(rgb: Any = None, color: str | None = None) -> tuple[float, float, float]:
    """The target colour as RGB in [0, 1] from ``rgb=(r, g, b)`` or a name in :data:`COLOR_NAMES`.

    ``rgb`` values in [0, 1] are taken as they are; if any exceeds 1 and all are integers in [0, 255] they
    are read as 8-bit values. ``rgb`` may also be a string ``"r,g,b"`` (from the command line).
    """
    if (rgb is None) == (color is None):
        raise ValueError("give exactly one of rgb=(r, g, b) and color=NAME for the color reward")
    if color is not None:
        key = str(color).strip().lower()
        if key not in COLOR_NAMES:
            raise ValueError(f"unknown colour {color!r}; known colours: {', '.join(sorted(COLOR_NAMES))}")
        return COLOR_NAMES[key]
    if isinstance(rgb, str):
        try:
            rgb = tuple(float(v) for v in rgb.replace("(", "").replace(")", "").split(","))
        except ValueError as err:
            raise ValueError(f"rgb must be three numbers 'r,g,b', got {rgb!r}") from err
    try:
        values = tuple(float(v) for v in rgb)
    except TypeError as err:
        raise ValueError(f"rgb must be three numbers (r, g, b), got {rgb!r}") from err
    if len(values) != 3 or not all(np.isfinite(values)):
        raise ValueError(f"rgb must be three finite numbers (r, g, b), got {rgb!r}")
    if all(0.0 <= v <= 1.0 for v in values):
        return values  # type: ignore[return-value]
    if all(v.is_integer() and 0 <= v <= 255 for v in values):
        return tuple(v / 255.0 for v in values)  # type: ignore[return-value]
    raise ValueError(f"rgb values must lie in [0, 1] (or be integers in [0, 255]), got {rgb!r}")


@jax.jit
def color_closeness(images: jax.Array, target: jax.Array) -> jax.Array:
    """``1 - mean_pixels ||rgb - target||_2 / sqrt(3)``.

    Args:
      images: ``[B, H, W, 3]`` in [0, 1].
      target: ``[3]`` in [0, 1].

    Returns:
      ``[B]`` float32 in [0, 1].
    """
    diff = images.astype(jnp.float32) - target.astype(jnp.float32)
    dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))  # [B, H, W]
    return 1.0 - jnp.mean(dist, axis=(1, 2)) / jnp.sqrt(3.0)


@jax.jit
def mean_luma(images: jax.Array) -> jax.Array:
    """Mean Rec. 601 luma of ``images: [B, H, W, 3]`` -> ``[B]`` float32 in [0, 1]."""
    weights = jnp.asarray([0.299, 0.587, 0.114], jnp.float32)
    return jnp.mean(images.astype(jnp.float32) @ weights, axis=(1, 2))


@register(
    "color",
    description="mean closeness of the pixels to a target colour (rgb=(r,g,b) or color=NAME), in [0, 1]",
)
def make_color(rgb: Any = None, color: str | None = None) -> RewardFn:
    """Reward = :func:`color_closeness` to the target given by ``rgb`` or ``color`` (one of them)."""
    target = jnp.asarray(parse_color(rgb, color), jnp.float32)

    def reward_fn(images: Any, prompts: Sequence[str]) -> jax.Array:
        del prompts
        return color_closeness(jnp.asarray(images), target)

    return reward_fn


@register("brightness", description="mean Rec. 601 luma of the image, in [0, 1]")
def make_brightness() -> RewardFn:
    """Reward = :func:`mean_luma`: brighter images score higher."""

    def reward_fn(images: Any, prompts: Sequence[str]) -> jax.Array:
        del prompts
        return mean_luma(jnp.asarray(images))

    return reward_fn


MOTION_DIRECTIONS = {"left": (0, -1.0), "right": (0, 1.0), "up": (1, -1.0), "down": (1, 1.0)}


@jax.jit
def luma_centroids(videos: jax.Array) -> jax.Array:
    """``videos: [B, T, H, W, 3]`` -> ``[B, T, 2]``: each frame's luma-weighted centroid ``(x, y)`` in [0, 1]
    (a black frame counts as centred)."""
    weights = jnp.asarray([0.299, 0.587, 0.114], jnp.float32)
    luma = videos.astype(jnp.float32) @ weights  # [B, T, H, W]
    h, w = luma.shape[-2:]
    ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    mass = jnp.sum(luma, axis=(-2, -1))
    safe = jnp.maximum(mass, 1e-8)
    cx = jnp.where(mass > 1e-8, jnp.sum(luma * xs, axis=(-2, -1)) / safe, 0.5)
    cy = jnp.where(mass > 1e-8, jnp.sum(luma * ys[:, None], axis=(-2, -1)) / safe, 0.5)
    return jnp.stack([cx, cy], axis=-1)


@register(
    "motion",
    description="how far the bright centroid moves in a named direction (direction=left|right|up|down) from the "
    "first to the last frame, in [-1, 1]",
    video=True,
)
def make_motion(direction: str = "right") -> RewardFn:
    """Reward = displacement of the luma-weighted centroid (:func:`luma_centroids`) from the first to the last
    frame along ``direction``, in image widths/heights: 1 = from one edge to the other, negative = backwards."""
    if direction not in MOTION_DIRECTIONS:
        raise ValueError(f"motion direction must be one of {', '.join(MOTION_DIRECTIONS)}; got {direction!r}")
    axis, sign = MOTION_DIRECTIONS[direction]

    def reward_fn(videos: Any, prompts: Sequence[str]) -> jax.Array:
        del prompts
        c = luma_centroids(jnp.asarray(videos))
        return sign * (c[:, -1, axis] - c[:, 0, axis])

    return reward_fn
