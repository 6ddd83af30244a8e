"""PIL's 8-bit resampling (``Image.resize`` of an ``RGB`` image), bit for bit, in torch on any device.

The original reward code (ImageReward, OpenAI CLIP's ``preprocess``, Hugging Face's CLIP image processor
used by PickScore) resizes 8-bit PIL images. Pillow's ``ImagingResample`` (``libImaging/Resample.c``) does
that in fixed point, and a float kernel differs from it on up to ~5% of the values of smooth images. This
module reproduces it exactly:

1. Per axis, the filter coefficients are computed in double precision as Pillow does (``precompute_coeffs``:
   ``scale = in / out``, the filter widened by ``max(scale, 1)`` (antialiasing), window
   ``[trunc(center - support + 0.5), trunc(center + support + 0.5))`` clipped to the image, the weights
   normalised by their sequential sum), then turned into integers with 22 fractional bits
   (``normalize_coeffs_8bpc``: ``trunc(k * 2**22 +- 0.5)``).
2. Each output value is ``clip8((2**21 + sum_i pixel_i * coeff_i) >> 22)``: round half up, clip to 0..255.
3. Two passes, each skipped when its axis keeps its size, each on 8-bit input with 8-bit output. Pillow <= 12
   always runs the horizontal pass first; Pillow 13 runs the vertical one first when the height shrinks by
   more than twice as many pixels as the width (``ImagingResampleInner``). :func:`pil_resize` follows the
   installed Pillow by default (``order="auto"``); the two orders differ by a grey level on a few values.

On the device, each pass is one matmul against a dense ``[out, in]`` coefficient matrix in float64. Every
operand is an integer (pixels <= 255, coefficients < 2**23) and every partial sum stays below 2**31, far
inside float64's exact integer range (2**53), so the result is the integer sum whatever the summation order
(integer matmul has no CUDA kernel; float64 has one everywhere). The coefficients are computed once per
``(in, out, filter)`` on the host and cached.

Checked bit for bit against the installed Pillow in ``tests/test_pil_resize.py``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic filter (Keys, a = -0.5), evaluated in the order of ``bicubic_filter``."""
    a = -0.5
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    """Pillow's triangle filter."""
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


# name -> (filter, support); the names are PIL's Image.Resampling members in lower case.
FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


def pil_coefficients(in_size: int, out_size: int, resample: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """Pillow's fixed-point resampling coefficients for one axis (box = the whole axis).

    Args:
      in_size: input length along the axis.
      out_size: output length.
      resample: ``"bicubic"`` or ``"bilinear"``.

    Returns:
      ``(xmin, coeffs)``: ``xmin: [out_size]`` int64, the first input index each output reads, and
      ``coeffs: [out_size, ksize]`` int64, the weights of inputs ``xmin .. xmin + ksize - 1`` scaled by
      ``2**22`` (zero past the window).
    """
    if resample not in FILTERS:
        raise ValueError(f"resample must be one of {sorted(FILTERS)}; got {resample!r}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1; got {in_size} -> {out_size}")
    fn, base_support = FILTERS[resample]
    scale = float(np.float32(in_size) - np.float32(0.0)) / out_size  # the box is float in Pillow
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = 0.0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # [out]
    xmin = np.maximum(np.trunc(center - support + 0.5), 0.0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), float(in_size)).astype(np.int64) - xmin  # window length
    x = np.arange(ksize, dtype=np.int64)[None, :]  # [1, ksize]
    valid = x < xmax[:, None]
    arg = (((x + xmin[:, None]).astype(np.float64) - center[:, None]) + 0.5) * (1.0 / filterscale)
    w = np.where(valid, fn(arg), 0.0)  # [out, ksize]
    ww = np.zeros(out_size, dtype=np.float64)
    for col in range(ksize):  # the sequential sum of the C loop (not numpy's pairwise sum)
        ww = ww + w[:, col]
    k = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    scaled = k * float(1 << PRECISION_BITS)
    fixed = np.trunc(np.where(k < 0.0, scaled - 0.5, scaled + 0.5)).astype(np.int64)
    return xmin, np.where(valid, fixed, 0)


@functools.lru_cache(maxsize=64)
def _dense_matrix(in_size: int, out_size: int, resample: str, device: str) -> torch.Tensor:
    """``[in_size, out_size]`` float64 on ``device``: column ``j`` holds output ``j``'s fixed-point weights."""
    import torch

    xmin, coeffs = pil_coefficients(in_size, out_size, resample)
    mat = np.zeros((in_size, out_size), dtype=np.float64)
    for j in range(out_size):
        n = min(coeffs.shape[1], in_size - int(xmin[j]))
        mat[xmin[j] : xmin[j] + n, j] = coeffs[j, :n]
    return torch.from_numpy(mat).to(device)


def _pass_last_axis(x: torch.Tensor, out_size: int, resample: str) -> torch.Tensor:
    """One Pillow pass along the last axis: ``[..., n]`` integer-valued float64 -> ``[..., out_size]``."""
    import torch

    mat = _dense_matrix(int(x.shape[-1]), out_size, resample, str(x.device))
    acc = x @ mat + float(1 << (PRECISION_BITS - 1))  # exact: integers below 2**31
    return torch.floor(acc / float(1 << PRECISION_BITS)).clamp_(0.0, 255.0)


@functools.lru_cache(maxsize=1)
def installed_pillow_major() -> int | None:
    """The major version of the importable Pillow, or ``None`` when there is none."""
    try:
        import PIL
    except ImportError:  # pragma: no cover - Pillow comes with transformers' image processors
        return None
    return int(PIL.__version__.split(".")[0])


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int], order: str = "auto") -> bool:
    """Whether Pillow runs the vertical pass first for ``(H, W) -> (out_h, out_w)``.

    ``order``: ``"pillow13"`` (vertical first iff ``H - out_h > 0`` and ``H - out_h > 2 (W - out_w)``),
    ``"pillow12"`` (always horizontal first, Pillow <= 12), or ``"auto"``: the installed Pillow's rule
    (Pillow 13's when none is installed).
    """
    if order == "auto":
        major = installed_pillow_major()
        order = "pillow12" if major is not None and major < 13 else "pillow13"
    if order == "pillow12":
        return False
    if order != "pillow13":
        raise ValueError(f"order must be 'auto', 'pillow12' or 'pillow13'; got {order!r}")
    shrink_h, shrink_w = in_size[0] - out_size[0], in_size[1] - out_size[1]
    return shrink_h > 0 and shrink_h > 2 * shrink_w


def pil_resize(
    images: torch.Tensor, size: tuple[int, int], resample: str = "bicubic", *, order: str = "auto"
) -> torch.Tensor:
    """``PIL.Image.resize((w, h), resample)`` of 8-bit images, bit for bit, on ``images``' device.

    Args:
      images: ``[..., H, W]`` uint8 (channels first, e.g. ``[B, 3, H, W]``), or any dtype holding
        integers 0..255.
      size: ``(out_h, out_w)``.
      resample: ``"bicubic"`` (PIL's default for these models) or ``"bilinear"``.
      order: which Pillow's pass order to follow (:func:`vertical_first`); default the installed one's.

    Returns:
      ``[..., out_h, out_w]`` uint8 on the same device. An unchanged size returns a copy, as PIL does.
    """
    import torch

    if images.ndim < 2:
        raise ValueError(f"images must be [..., H, W]; got shape {tuple(images.shape)}")
    out_h, out_w = (int(s) for s in size)
    h, w = int(images.shape[-2]), int(images.shape[-1])
    x = images.to(torch.float64)

    def horizontal(t: torch.Tensor) -> torch.Tensor:
        return _pass_last_axis(t, out_w, resample) if out_w != w else t

    def vertical(t: torch.Tensor) -> torch.Tensor:
        return _pass_last_axis(t.transpose(-1, -2), out_h, resample).transpose(-1, -2) if out_h != h else t

    x = horizontal(vertical(x)) if vertical_first((h, w), (out_h, out_w), order) else vertical(horizontal(x))
    return x.to(torch.uint8).contiguous()


def pil_resize_jax(images: Any, size: tuple[int, int], resample: str = "bicubic", *, order: str = "auto") -> Any:
    """:func:`pil_resize` in JAX (jit-compatible; sizes static): the same integers in int32 arithmetic.

    Args:
      images: ``[..., H, W]`` integer-valued array (uint8 or int32) 0..255, channels first.
      size: ``(out_h, out_w)``.

    Returns:
      ``[..., out_h, out_w]`` int32 in 0..255. Each pass is an int32 dot with the fixed-point coefficients,
      as Pillow's C loop (sums below 2**31, so no overflow), then ``(acc + 2**21) >> 22`` clipped to 0..255.
    """
    import jax.numpy as jnp

    out_h, out_w = (int(s) for s in size)
    h, w = int(images.shape[-2]), int(images.shape[-1])
    x = jnp.asarray(images).astype(jnp.int32)

    def one_pass(t: Any, n_out: int) -> Any:
        mat = _dense_matrix(int(t.shape[-1]), n_out, resample, "cpu").numpy().astype(np.int32)
        acc = jnp.matmul(t, jnp.asarray(mat), preferred_element_type=jnp.int32) + (1 << (PRECISION_BITS - 1))
        return jnp.clip(jnp.right_shift(acc, PRECISION_BITS), 0, 255)

    def horizontal(t: Any) -> Any:
        return one_pass(t, out_w) if out_w != w else t

    def vertical(t: Any) -> Any:
        return jnp.swapaxes(one_pass(jnp.swapaxes(t, -1, -2), out_h), -1, -2) if out_h != h else t

    return horizontal(vertical(x)) if vertical_first((h, w), (out_h, out_w), order) else vertical(horizontal(x))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 ``round(255 x)`` (half to even, as numpy's), clipped first.

    The 8-bit image the original code would be given (diffusers' ``numpy_to_pil`` rounds the same way).
    """
    import torch

    return torch.round(images.to(torch.float32).clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def resample_name(code: Any) -> str:
    """A PIL resample code (3 = bicubic, 2 = bilinear) or name as the name :func:`pil_resize` takes."""
    names = {3: "bicubic", 2: "bilinear"}
    if isinstance(code, str) and code in FILTERS:
        return code
    if isinstance(code, int) and code in names:
        return names[code]
    raise ValueError(f"unsupported resample filter {code!r} (supported: bicubic = 3, bilinear = 2)")


__all__ = [
    "FILTERS",
    "PRECISION_BITS",
    "pil_coefficients",
    "pil_resize",
    "pil_resize_jax",
    "resample_name",
    "to_uint8",
    "vertical_first",
]
