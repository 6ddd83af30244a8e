"""LAION aesthetic score vs a direct torch computation on the same tiny random weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reward_fixtures import random_images, write_tiny_clip

from reward_models import make_reward
from reward_models.aesthetic import build_aesthetic_mlp

torch.set_num_threads(1)

LINEAR = (0, 2, 4, 6, 7)


def _mlp_state(dim: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random weights in the improved-aesthetic-predictor layout: D -> 1024 -> 128 -> 64 -> 16 -> 1."""
    g = torch.Generator().manual_seed(seed)
    sizes = [dim, 1024, 128, 64, 16, 1]
    state = {}
    for j, i in enumerate(LINEAR):
        state[f"layers.{i}.weight"] = torch.randn(sizes[j + 1], sizes[j], generator=g) / sizes[j] ** 0.5
        state[f"layers.{i}.bias"] = torch.randn(sizes[j + 1], generator=g)
    return state


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A CLIP (projection 16) and an MLP file in one directory, as ``--reward-path DIR`` would give."""
    d = tmp_path_factory.mktemp("aesthetic")
    write_tiny_clip(d, seed=0, tokenizer=False)
    torch.save(_mlp_state(16), d / "sac+logos+ava1-l14-linearMSE.pth")
    return d


@pytest.fixture(scope="module")
def aesthetic(weights_dir):
    return make_reward("aesthetic", path=str(weights_dir))


def _by_hand(weights_dir, images: np.ndarray) -> np.ndarray:
    """CLIPModel.get_image_features on PIL-processed pixels, L2-normalised, then the linear stack."""
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(weights_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(weights_dir)(
        images=list(np.round(images * 255).astype(np.uint8)), return_tensors="pt"
    ).pixel_values
    state = torch.load(weights_dir / "sac+logos+ava1-l14-linearMSE.pth")
    with torch.no_grad():
        x = model.get_image_features(pixel_values=pixels)
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        for i in LINEAR:  # dropouts are inactive at inference; the predictor has no nonlinearity
            x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x[:, 0].numpy()


def test_matches_hand_computation(weights_dir, aesthetic):
    images = random_images(0, 4, 30)
    got = aesthetic(jnp.asarray(images), ["ignored"] * 4)
    want = _by_hand(weights_dir, images)
    assert got.shape == (4,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(got) > 1e-3  # depends on the image


def test_prompts_are_ignored_and_numpy_input_works(aesthetic):
    images = random_images(1, 2, 30)
    a = aesthetic(jnp.asarray(images), ["a", "b"])
    b = aesthetic(images, ["completely", "different"])
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_larger_images_are_resized_on_device(aesthetic):
    images = random_images(2, 2, 64)
    out = aesthetic(jnp.asarray(images), ["a", "b"])
    assert out.shape == (2,) and np.all(np.isfinite(out))


def test_mlp_file_and_separate_clip_dir(weights_dir, tmp_path):
    torch.save(_mlp_state(16), tmp_path / "aesthetic-model.pth")  # TRL's name for the same MLP
    images = random_images(3, 2, 30)
    by_dir = make_reward("aesthetic", path=str(tmp_path), clip_path=str(weights_dir))(images, ["a", "b"])
    by_file = make_reward("aesthetic", path=str(tmp_path / "aesthetic-model.pth"), clip_path=str(weights_dir))(
        images, ["a", "b"]
    )
    np.testing.assert_allclose(by_dir, _by_hand(weights_dir, images), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_file, by_dir, rtol=1e-6)


def test_mlp_layout_is_checked():
    state = _mlp_state(16)
    state["layers.1.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="not an improved-aesthetic-predictor MLP"):
        build_aesthetic_mlp(state)
    mlp = build_aesthetic_mlp({"module." + k: v for k, v in _mlp_state(8).items()})  # DataParallel prefix
    assert mlp(torch.zeros(2, 8)).shape == (2, 1)
    assert [m.p for m in mlp.layers if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.1]


def test_device_mismatch_is_a_clear_error(weights_dir):
    from reward_models.bridge import DeviceMismatchError

    images = jnp.asarray(random_images(4, 1, 30))  # CPU JAX array
    with pytest.raises(DeviceMismatchError, match="has no CUDA|never copies"):
        make_reward("aesthetic", path=str(weights_dir), device="cuda:0")(images, ["a"])
    on_meta = make_reward("aesthetic", path=str(weights_dir), device="meta")  # a model elsewhere than the images
    with pytest.raises(DeviceMismatchError, match="images live on cpu but the reward model expects meta"):
        on_meta(images, ["a"])
