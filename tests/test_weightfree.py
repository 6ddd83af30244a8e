"""Weight-free rewards on hand-made images whose ordering (or exact value) is known."""

from __future__ import annotations

import io
import math

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from reward_models import make_reward
from reward_models.weightfree import jpeg_sizes_kb, parse_color


def _images() -> np.ndarray:
    """[3, 32, 32, 3]: flat grey (most compressible), a smooth ramp, uniform noise (least)."""
    flat = np.full((32, 32, 3), 0.5, np.float32)
    ramp = np.broadcast_to(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None], (32, 32, 3)).copy()
    noise = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    return np.stack([flat, ramp, noise])


PROMPTS = ["x", "y", "z"]


def test_jpeg_size_is_pil_file_size_in_kb():
    img = _images()[2]
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    assert jpeg_sizes_kb(img[None])[0] == pytest.approx(buf.tell() / 1000.0)


def test_jpeg_rewards_order_known_images():
    images = _images()
    comp = make_reward("jpeg_compressibility")(jnp.asarray(images), PROMPTS)
    incomp = make_reward("jpeg_incompressibility")(images, PROMPTS)
    assert comp.dtype == np.float32 and comp.shape == (3,)
    assert comp[0] > comp[1] > comp[2]  # flat > ramp > noise
    assert incomp[0] < incomp[1] < incomp[2]
    np.testing.assert_allclose(comp, -incomp)
    assert np.all(incomp > 0)


def test_jpeg_quality_changes_size_and_is_validated():
    noise = _images()[2:]
    low = make_reward("jpeg_incompressibility", quality=10)(noise, ["n"])
    high = make_reward("jpeg_incompressibility", quality=95)(noise, ["n"])
    assert low[0] < high[0]
    same = make_reward("jpeg_incompressibility", quality="95")(noise, ["n"])  # a command-line string
    np.testing.assert_array_equal(same, high)
    for bad in (0, 101, 9.5, "high", True):
        with pytest.raises(ValueError, match="quality"):
            make_reward("jpeg_compressibility", quality=bad)


def _solid(rgb) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.float32), (8, 8, 3)).copy()


def test_color_reward_hand_values():
    red = make_reward("color", color="red")
    half = _solid((1, 0, 0))
    half[:, 4:] = (0, 0, 1)  # half red, half blue
    images = np.stack([_solid((1, 0, 0)), _solid((0, 1, 0)), half, _solid((0, 0, 0))])
    got = red(images, ["a"] * 4)
    want = [1.0, 1 - math.sqrt(2) / math.sqrt(3), 1 - 0.5 * math.sqrt(2) / math.sqrt(3), 1 - 1 / math.sqrt(3)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] > got[2] > got[3] > got[1]  # red > half red > black > green


def test_color_rgb_option_forms_agree():
    images = np.stack([_solid((0.2, 0.4, 0.6)), _solid((1, 1, 0))])
    a = make_reward("color", rgb=(0.2, 0.4, 0.6))(images, ["a", "b"])
    b = make_reward("color", rgb=(51, 102, 153))(images, ["a", "b"])  # 8-bit values
    c = make_reward("color", rgb="0.2,0.4,0.6")(images, ["a", "b"])  # from the command line
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    assert a[0] == pytest.approx(1.0) and a[0] > a[1]


def test_color_bad_options():
    with pytest.raises(ValueError, match="exactly one"):
        make_reward("color")
    with pytest.raises(ValueError, match="exactly one"):
        make_reward("color", rgb=(1, 0, 0), color="red")
    with pytest.raises(ValueError, match="known colours: .*magenta"):
        make_reward("color", color="octarine")
    for bad in ((1, 0), (2.5, 0, 0), (-1, 0, 0), "a,b,c", (300, 0, 0), 5):
        with pytest.raises(ValueError, match="rgb"):
            parse_color(rgb=bad)


def test_brightness_hand_values():
    images = np.stack([_solid((0, 0, 0)), _solid((0, 1, 0)), _solid((1, 1, 1))])
    got = make_reward("brightness")(jnp.asarray(images), ["a"] * 3)
    np.testing.assert_allclose(got, [0.0, 0.587, 1.0], atol=1e-6)
