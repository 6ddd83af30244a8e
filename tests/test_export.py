"""Export of the learned distribution: npz, and the PyTorch reference's ``mean``/``std`` tensors."""

import numpy as np
import pytest

from find_jax.config import get_preset
from find_jax.export import export
from find_jax.loop import optimize_one
from find_jax.testing import FunctionEnvironment

SHAPE = (2, 2, 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("run")
    cfg = get_preset(
        "tiny", prompt="a yellow star", drcm_hidden=(8, 8, 8), iterations=3, checkpoint_every=2, num_final_samples=0
    )
    state = optimize_one(
        cfg,
        wd,
        env=FunctionEnvironment(lambda x, rng: x, SHAPE),
        reward_fn=lambda x, p: -np.mean(np.asarray(x) ** 2, axis=(1, 2, 3)),
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


def test_export_refuses_an_existing_file_unless_overwrite(run, tmp_path):
    wd, state = run
    out = tmp_path / "dist.npz"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(wd, "npz", out)
    assert out.read_bytes() == b"precious"
    # npz appends the suffix: the file it would write is the one refused.
    with pytest.raises(FileExistsError, match="dist.npz exists"):
        export(wd, "npz", tmp_path / "dist")
    assert export(wd, "npz", out, overwrite=True) == out
    np.testing.assert_array_equal(np.load(out)["mu"], np.asarray(state.policy.mu))
    # An earlier step on request, over the previous export.
    assert int(np.load(export(wd, "npz", out, step=2, overwrite=True))["step"]) == 2
    (tmp_path / "adir.npz").mkdir()
    with pytest.raises(FileExistsError, match="is a directory"):
        export(wd, "npz", tmp_path / "adir.npz", overwrite=True)
