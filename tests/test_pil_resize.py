"""reward_models.pil_resize: PIL's 8-bit resample, bit for bit, in torch and in JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from reward_models.pil_resize import (
    pil_coefficients,
    pil_resize,
    pil_resize_jax,
    resample_name,
    to_uint8,
    vertical_first,
)

torch.set_num_threads(1)

CODES = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def gradient(h: int, w: int) -> np.ndarray:
    """Smooth ramps: the case where a float kernel differs from PIL most often (~5% of values)."""
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 255 / max(h + w - 2, 1)]
    return np.round(np.stack(chans, -1)).astype(np.uint8)


def smooth(h: int, w: int) -> np.ndarray:
    """Low-frequency waves with overshoot-prone edges (clipping matters)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 120 * np.sin(xx / 9.0) * np.cos(yy / 6.0)
    return np.clip(np.round(np.stack([base, base[::-1], 255 - base], -1)), 0, 255).astype(np.uint8)


def make(kind: str, h: int, w: int) -> np.ndarray:
    if kind == "gradient":
        return gradient(h, w)
    if kind == "smooth":
        return smooth(h, w)
    if kind == "noise":
        return np.random.default_rng(h * 7919 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.full((h, w, 3), 77, np.uint8)  # flat


def pil(img: np.ndarray, out_h: int, out_w: int, resample: str = "bicubic") -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((out_w, out_h), CODES[resample]))


def ours(img: np.ndarray, out_h: int, out_w: int, resample: str = "bicubic", **kw) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None]  # [1, 3, H, W] uint8
    out = pil_resize(x, (out_h, out_w), resample, **kw)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (1, 3, out_h, out_w)
    return out[0].permute(1, 2, 0).numpy()


SIZES = [
    ((512, 512), (224, 224)),
    ((256, 256), (224, 224)),
    ((768, 768), (224, 224)),
    ((512, 768), (224, 336)),  # non-square, both shrink
    ((400, 300), (298, 224)),
    ((97, 130), (224, 300)),  # upscale
    ((30, 40), (48, 64)),
    ((225, 224), (224, 224)),  # one axis only
    ((300, 64), (120, 60)),  # the height shrinks > 2x more pixels than the width: Pillow 13 goes vertical first
    ((1000, 37), (5, 3)),  # extreme downscale (801-tap windows)
]


@pytest.mark.parametrize(("src", "dst"), SIZES)
@pytest.mark.parametrize("kind", ["gradient", "noise", "flat", "smooth"])
def test_bicubic_bit_exact(src, dst, kind):
    img = make(kind, *src)
    np.testing.assert_array_equal(ours(img, *dst), pil(img, *dst))


@pytest.mark.parametrize(("src", "dst"), SIZES[::3])
def test_bilinear_bit_exact(src, dst):
    img = make("smooth", *src)
    np.testing.assert_array_equal(ours(img, *dst, "bilinear"), pil(img, *dst, "bilinear"))


def test_random_sizes_bit_exact():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        oh, ow = (int(v) for v in rng.integers(1, 90, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(ours(img, oh, ow), pil(img, oh, ow), err_msg=f"{h}x{w} -> {oh}x{ow}")


def test_a_float_kernel_is_not_enough():
    """The reason for this module: torch's antialiased float bicubic, rounded, misses PIL on smooth ramps."""
    img = gradient(512, 512)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    flt = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    flt = flt.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    want = pil(img, 224, 224)
    assert (flt != want).mean() > 0.005  # the float path is off on a noticeable share of values
    np.testing.assert_array_equal(ours(img, 224, 224), want)


def test_pass_orders():
    """Pillow 12 always resizes width first; Pillow 13 goes height first when it shrinks > 2x more pixels."""
    assert not vertical_first((512, 512), (224, 224), "pillow13")
    assert vertical_first((300, 64), (120, 60), "pillow13")
    assert not vertical_first((300, 64), (120, 60), "pillow12")
    assert not vertical_first((100, 100), (300, 10), "pillow13")  # the height grows
    img = make("noise", 300, 64)
    # Width-only then height-only through PIL is the width-first order in every Pillow.
    width_first = pil(pil(img, 300, 60), 120, 60)
    height_first = pil(pil(img, 120, 64), 120, 60)
    assert (width_first != height_first).any()  # the orders do differ here
    np.testing.assert_array_equal(ours(img, 120, 60, order="pillow12"), width_first)
    np.testing.assert_array_equal(ours(img, 120, 60, order="pillow13"), height_first)
    installed = "pillow12" if int(PIL.__version__.split(".")[0]) < 13 else "pillow13"
    np.testing.assert_array_equal(ours(img, 120, 60), ours(img, 120, 60, order=installed))
    with pytest.raises(ValueError, match="order"):
        vertical_first((4, 4), (2, 2), "pillow9")


def test_coefficients_are_fixed_point_and_sum_to_one():
    xmin, k = pil_coefficients(512, 224)
    assert xmin.shape == (224,) and k.dtype == np.int64 and k.shape == (224, 2 * 5 + 1)  # ceil(2 * 512/224) = 5
    # Each row is the normalised filter in 22-bit fixed point: the sum is 2**22 up to the per-tap rounding.
    assert np.all(np.abs(k.sum(1) - 2**22) <= k.shape[1])
    assert xmin[0] == 0 and xmin[-1] + np.count_nonzero(k[-1]) <= 512
    with pytest.raises(ValueError, match="resample"):
        pil_coefficients(8, 4, "lanczos")


def test_batch_and_leading_dims():
    imgs = np.stack([make("smooth", 64, 48), make("noise", 64, 48)])  # [2, H, W, 3]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)  # [2, 3, H, W]
    out = pil_resize(x, (30, 20))
    for i in range(2):
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), pil(imgs[i], 30, 20))
    same = pil_resize(x, (64, 48))
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()  # PIL returns a copy


@pytest.mark.parametrize(("src", "dst"), [((512, 512), (224, 224)), ((300, 64), (120, 60)), ((40, 30), (64, 48))])
def test_jax_version_bit_exact(src, dst):
    img = make("gradient", *src)
    fn = jax.jit(lambda x: pil_resize_jax(x, dst))
    got = np.asarray(fn(jnp.asarray(img.transpose(2, 0, 1))))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got.transpose(1, 2, 0), pil(img, *dst))


def test_to_uint8_rounds_like_numpy():
    x = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 0.2, 1.0, 1.3, -0.1])
    want = np.round(np.clip(x.numpy(), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(x).numpy(), want)


def test_resample_names():
    assert resample_name(3) == "bicubic" and resample_name(2) == "bilinear" and resample_name("bilinear") == "bilinear"
    with pytest.raises(ValueError, match="unsupported"):
        resample_name(1)


# ------------------------------------------------------------------------------ the CLIP-family processors


def _hf_processor(size: int, resample: int = 3):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=resample
    )


@pytest.mark.parametrize(("shape", "resample"), [((512, 512), 3), ((90, 150), 3), ((150, 90), 2)])
def test_torch_and_jax_preprocessing_equal_the_hf_clip_processor(shape, resample):
    """PickScore/aesthetic (torch) and CLIP score (JAX) preprocess as CLIPImageProcessor on 8-bit PIL images."""
    from reward_models.bridge import CLIP_MEAN, CLIP_STD, ImagePreprocess, preprocess_with
    from reward_models.clip_score import preprocess_jax

    imgs = np.stack([make("gradient", *shape), make("smooth", *shape)])
    want = _hf_processor(48, resample)(images=list(imgs), return_tensors="np").pixel_values  # [2, 3, 48, 48]
    floats = imgs.astype(np.float32) / 255.0
    cfg = ImagePreprocess(48, 48, CLIP_MEAN, CLIP_STD, interpolation=resample_name(resample))
    got_torch = preprocess_with(torch.from_numpy(floats), cfg).numpy()
    got_jax = np.asarray(jax.jit(lambda x: preprocess_jax(x, cfg))(jnp.asarray(floats)))
    np.testing.assert_allclose(got_torch, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_jax, want, atol=1e-6, rtol=0)
