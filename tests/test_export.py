"""Export of the learned distribution: npz, and the PyTorch reference's ``mean``/``std`` tensors."""

import numpy as np
import pytest

from find_jax.config import get_preset
from find_jax.export import export
from find_jax.trainer import optimize

SHAPE = (2, 2, 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("run")
    cfg = get_preset("tiny", prompt="a yellow star", drcm_hidden=(8, 8, 8), iterations=3, num_final_samples=0)
    state = optimize(
        cfg,
        wd,
        env_fn=lambda x, rng: x,
        reward_fn=lambda x, p: -np.mean(np.asarray(x) ** 2, axis=(1, 2, 3)),
        latent_shape=SHAPE,
    )
    return wd, state


def test_export_npz(run, tmp_path):
    wd, state = run
    out = export(wd, "npz", tmp_path / "sub" / "dist.npz")
    data = np.load(out)
    np.testing.assert_array_equal(data["mu"], np.asarray(state.policy.mu))
    np.testing.assert_array_equal(data["sigma"], np.asarray(state.sigma))
    assert data["mu"].shape == SHAPE and data["sigma"].dtype == np.float32
    assert int(data["step"]) == 3 and str(data["prompt"]) == "a yellow star"
    assert not np.allclose(data["mu"], 0.0)  # the run moved it


def test_export_pt_as_pytorch_reference_layout(run, tmp_path):
    torch = pytest.importorskip("torch")
    wd, state = run
    out = export(wd, "pt", tmp_path / "dist.pt")
    data = torch.load(out)
    assert set(data) == {"mean", "std"}
    assert tuple(data["mean"].shape) == (1, *SHAPE) and data["std"].dtype == torch.float32
    np.testing.assert_array_equal(data["mean"].numpy()[0], np.asarray(state.policy.mu))
    np.testing.assert_array_equal(data["std"].numpy()[0], np.asarray(state.sigma))


def test_export_errors(run, tmp_path):
    wd, _ = run
    with pytest.raises(ValueError, match="unknown export format 'onnx'.*npz, pt"):
        export(wd, "onnx", tmp_path / "x")
    with pytest.raises(RuntimeError, match="not a find-jax run directory"):
        export(tmp_path, "npz", tmp_path / "x.npz")
