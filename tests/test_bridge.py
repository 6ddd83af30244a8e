"""The DLPack bridge (no copies, clear device errors) and the torch-side CLIP preprocessing."""

from __future__ import annotations

import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from multidevice import run_on_four_devices
from PIL import Image

from reward_models.bridge import (
    CLIP_MEAN,
    CLIP_STD,
    DeviceMismatchError,
    clip_preprocess,
    gather_to_one_device,
    jax_to_torch,
    preprocess_images,
    preprocess_with,
    read_preprocess_config,
    torch_device_of,
    torch_to_jax,
)

torch.set_num_threads(1)


def _other_device(x: jax.Array) -> str:
    """A torch device that is not where ``x`` lives."""
    return "cuda:0" if next(iter(x.devices())).platform == "cpu" else "cpu"


def test_jax_to_torch_shares_memory():
    x = jnp.arange(2 * 5 * 7 * 3, dtype=jnp.float32).reshape(2, 5, 7, 3) / 210.0
    t = jax_to_torch(x)
    assert t.data_ptr() == x.unsafe_buffer_pointer()  # same buffer: no copy
    assert tuple(t.shape) == x.shape and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), np.asarray(x))


def test_jax_to_torch_accepts_its_own_device_and_bfloat16():
    x = jnp.ones((3, 4), jnp.bfloat16)
    t = jax_to_torch(x, device="cpu")
    assert t.dtype == torch.bfloat16 and t.data_ptr() == x.unsafe_buffer_pointer()


def test_numpy_input_is_shared_not_copied():
    a = np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32)
    t = jax_to_torch(a)
    assert t.data_ptr() == a.ctypes.data


def test_torch_to_jax_shares_memory():
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    x = torch_to_jax(t)
    assert isinstance(x, jax.Array)
    assert x.unsafe_buffer_pointer() == t.data_ptr()
    np.testing.assert_array_equal(np.asarray(x), t.numpy())


def test_round_trip_keeps_the_buffer():
    x = jnp.linspace(0.0, 1.0, 64, dtype=jnp.float32).reshape(4, 16)
    y = torch_to_jax(jax_to_torch(x))
    assert y.unsafe_buffer_pointer() == x.unsafe_buffer_pointer()


def test_torch_to_jax_detaches_and_handles_non_contiguous():
    w = torch.randn(3, 5, requires_grad=True)
    np.testing.assert_allclose(np.asarray(torch_to_jax(w * 2)), (w * 2).detach().numpy())
    t = torch.arange(15, dtype=torch.float32).reshape(3, 5).T  # a strided view
    np.testing.assert_array_equal(np.asarray(torch_to_jax(t)), t.numpy())


def test_device_mismatch_is_a_clear_error():
    x = jnp.zeros((1, 2, 2, 3))
    other = _other_device(x)
    with pytest.raises(DeviceMismatchError, match="never copies across devices"):
        jax_to_torch(x, device=other)


def test_torch_device_jax_cannot_see_is_refused():
    t = torch.empty(3, device="meta")
    with pytest.raises(DeviceMismatchError, match="meta"):
        torch_to_jax(t)


def test_wrong_types_are_refused():
    with pytest.raises(TypeError, match="jax.Array or numpy"):
        jax_to_torch([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torch.Tensor"):
        torch_to_jax(np.zeros(3))  # type: ignore[arg-type]


def test_gather_keeps_a_single_device_array():
    x = jnp.ones((2, 3))
    assert gather_to_one_device(x) is x
    with pytest.raises(TypeError, match="jax.Array"):
        gather_to_one_device(np.ones(3))  # type: ignore[arg-type]


@pytest.mark.skipif(len(jax.devices()) < 2, reason="needs several (forced host) devices")
def test_sharded_array_is_gathered():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:2]), ("b",))
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    x = jax.device_put(jnp.asarray(a), NamedSharding(mesh, PartitionSpec("b")))
    np.testing.assert_array_equal(jax_to_torch(x).numpy(), a)
    with pytest.raises(ValueError, match="sharded over 2 devices"):
        torch_device_of(x)  # no single buffer: only jax_to_torch gathers


SHARDED_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    from pathlib import Path
    import jax, jax.numpy as jnp, numpy as np, torch
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    sys.path.insert(0, sys.argv[2])
    from reward_fixtures import random_images, write_tiny_clip
    from test_aesthetic import _mlp_state
    from reward_models import make_reward
    from reward_models.bridge import DeviceMismatchError, gather_to_one_device, jax_to_torch

    torch.set_num_threads(1)
    assert len(jax.devices()) == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("b",))
    out = {}

    # The bridge itself: a batch split over 4 devices reaches torch whole, in order.
    a = np.arange(8 * 5 * 3, dtype=np.float32).reshape(8, 5, 3)
    x = jax.device_put(jnp.asarray(a), NamedSharding(mesh, PartitionSpec("b")))
    out["split"] = [len(x.sharding.device_set), x.addressable_shards[0].data.shape[0]]
    t = jax_to_torch(x, device="cpu")
    del x
    gc.collect()  # the gathered buffer must outlive the temporary jax.Array
    out["bridge_equal"] = bool(np.array_equal(t.numpy(), a))
    y = jax.device_put(jnp.asarray(a), NamedSharding(mesh, PartitionSpec("b")))
    try:
        jax_to_torch(y, device="meta")  # a device none of the shards is on: refused, not copied
    except DeviceMismatchError as err:
        out["mismatch"] = str(err)
    # Fully replicated: the target device's own copy is shared, no gather.
    r = jax.device_put(jnp.asarray(a), NamedSharding(mesh, PartitionSpec()))
    own = gather_to_one_device(r).unsafe_buffer_pointer()
    held = [s.data.unsafe_buffer_pointer() for s in r.addressable_shards]
    out["replicated_zero_copy"] = own in held and jax_to_torch(r).data_ptr() == own

    # A torch-backed reward: the same 8 images sharded over 4 devices and on one device.
    d = Path(sys.argv[1])
    write_tiny_clip(d, seed=0, tokenizer=False)
    torch.save(_mlp_state(16), d / "sac+logos+ava1-l14-linearMSE.pth")
    reward = make_reward("aesthetic", path=str(d))
    images = random_images(0, 8, 30)
    prompts = ["ignored"] * 8
    sharded = jax.device_put(jnp.asarray(images), NamedSharding(mesh, PartitionSpec("b")))
    out["images_split"] = len(sharded.sharding.device_set)
    out["sharded"] = reward(sharded, prompts).tolist()
    out["single"] = reward(jax.device_put(jnp.asarray(images), jax.devices()[0]), prompts).tolist()
    print(json.dumps(out))
    """
)


def test_sharded_images_on_four_devices_score_like_unsharded(tmp_path):
    out = run_on_four_devices(SHARDED_SCRIPT, tmp_path, os.path.dirname(__file__))
    assert out["split"] == [4, 2]  # 8 rows, 2 per device
    assert out["bridge_equal"] and out["replicated_zero_copy"]
    assert "never copies across devices" in out.get("mismatch", ""), out
    assert out["images_split"] == 4
    assert len(out["sharded"]) == 8 and np.ptp(out["single"]) > 1e-3  # the scores depend on the image
    # Same images, same torch computation after the gather: the scores agree exactly.
    np.testing.assert_array_equal(out["sharded"], out["single"])


def _pil_processor(img: np.ndarray, size: int, resample=Image.BICUBIC) -> np.ndarray:
    """The CLIP processor done by hand with PIL (8-bit): shortest edge, centre crop, normalise."""
    h, w = img.shape[:2]
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    out = np.asarray(Image.fromarray(img).resize((nw, nh), resample), dtype=np.float32) / 255.0
    top, left = (nh - size) // 2, (nw - size) // 2
    out = out[top : top + size, left : left + size]
    return ((out - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).transpose(2, 0, 1)


def _smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth uint8 test image (sums of low-frequency waves), like natural images rather than noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [
        0.5
        + 0.25 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy + rng.uniform()))
        + 0.2 * np.cos(2 * np.pi * rng.uniform(1, 3) * xx)
        for _ in range(3)
    ]
    return np.clip(np.round(np.stack(chans, -1) * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (90, 50)])
def test_preprocess_matches_the_pil_processor(shape):
    img = _smooth_image(*shape, seed=sum(shape))
    images = torch.from_numpy(img[None].astype(np.float32) / 255.0)
    got = preprocess_images(images, size=30, mean=CLIP_MEAN, std=CLIP_STD).numpy()[0]
    want = _pil_processor(img, 30)
    assert got.shape == (3, 30, 30)
    # PIL rounds to 8 bits between its two resize passes: allow ~1.5 grey levels (in normalised units).
    np.testing.assert_allclose(got, want, atol=1.5 / 255 / min(CLIP_STD))
    assert np.abs(got - want).mean() < 0.5 / 255 / min(CLIP_STD)  # PIL rounds its output to 8 bits


def test_preprocess_matches_pil_float_mode_closely():
    """Without PIL's 8-bit rounding the torch resize is PIL's bicubic to float precision."""
    img = np.random.default_rng(3).random((57, 57), dtype=np.float32)
    want = np.asarray(Image.fromarray(img, mode="F").resize((23, 23), Image.BICUBIC))
    x = torch.from_numpy(np.repeat(img[None, :, :, None], 3, axis=-1))
    got = preprocess_images(x, size=23, mean=(0, 0, 0), std=(1, 1, 1)).numpy()[0, 0]
    inside = (want >= 0) & (want <= 1)  # the torch path clips to [0, 1] like the 8-bit processor
    np.testing.assert_allclose(got[inside], want[inside], atol=2e-5)


def test_preprocess_at_model_size_is_only_normalisation():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.random((2, 30, 30, 3), dtype=np.float32))
    got = preprocess_images(images, size=30, mean=CLIP_MEAN, std=CLIP_STD)
    want = (images.permute(0, 3, 1, 2) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(got, want)


def test_preprocess_bilinear_and_crop_size():
    img = _smooth_image(40, 40, seed=5)
    images = torch.from_numpy(img[None].astype(np.float32) / 255.0)
    got = preprocess_images(images, size=20, crop_size=16, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bilinear")
    full = _pil_processor(img, 20, resample=Image.BILINEAR)
    assert tuple(got.shape) == (1, 3, 16, 16)
    np.testing.assert_allclose(got.numpy()[0], full[:, 2:18, 2:18], atol=1.5 / 255 / min(CLIP_STD))


def test_preprocess_output_dtype_and_device():
    images = torch.rand(1, 12, 12, 3)
    out = preprocess_images(images, size=8, mean=CLIP_MEAN, std=CLIP_STD, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.device == images.device and out.is_contiguous()


def test_preprocess_bad_input():
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        preprocess_images(torch.rand(1, 3, 8, 8), size=8, mean=CLIP_MEAN, std=CLIP_STD)
    with pytest.raises(ValueError, match="interpolation"):
        preprocess_images(torch.rand(1, 8, 8, 3), size=8, mean=CLIP_MEAN, std=CLIP_STD, interpolation="lanczos")
    with pytest.raises(ValueError, match="crop 10 is larger"):
        preprocess_images(torch.rand(1, 8, 8, 3), size=8, crop_size=10, mean=CLIP_MEAN, std=CLIP_STD)


def test_read_preprocess_config(tmp_path):
    from reward_fixtures import write_preprocessor_config

    write_preprocessor_config(tmp_path, 40, resample=2)
    cfg = read_preprocess_config(tmp_path, clip_preprocess(224))
    assert (cfg.size, cfg.crop_size, cfg.interpolation) == (40, 40, "bilinear")
    assert cfg.mean == pytest.approx(CLIP_MEAN)
    assert read_preprocess_config(tmp_path / "absent", clip_preprocess(224)) == clip_preprocess(224)
    out = preprocess_with(torch.rand(2, 50, 60, 3), cfg)
    assert tuple(out.shape) == (2, 3, 40, 40)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (90, 50)])
def test_default_preprocess_equals_the_pil_processor_exactly(shape, tmp_path):
    """``ImagePreprocess`` (as PickScore and aesthetic build it) rounds to 8 bits and resizes as PIL does."""
    from reward_fixtures import write_preprocessor_config

    img = _smooth_image(*shape, seed=sum(shape))
    write_preprocessor_config(tmp_path, 30)
    cfg = read_preprocess_config(tmp_path, clip_preprocess(224))
    assert cfg.pil_uint8 and clip_preprocess(224).pil_uint8
    got = preprocess_with(torch.from_numpy(img[None].astype(np.float32) / 255.0), cfg).numpy()[0]
    np.testing.assert_allclose(got, _pil_processor(img, 30), atol=1e-6, rtol=0)
