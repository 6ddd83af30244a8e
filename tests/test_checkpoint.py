"""Orbax checkpoints of the full state: roundtrip, and refusal of incompatible or corrupt checkpoints."""

import json
import shutil

import jax
import numpy as np
import pytest

from find_jax import checkpoint as ckpt
from find_jax.config import get_preset
from find_jax.loop import optimize_one
from find_jax.rundir import RunDirError, load_state
from find_jax.testing import FunctionEnvironment
from find_jax.trainer import init_state

SHAPE = (1, 2, 2)


def cfg(**kw):
    base = dict(prompt="two blue squares", drcm_hidden=(8, 8, 8), iterations=4, checkpoint_every=2, num_final_samples=0)
    base.update(kw)
    return get_preset("tiny", **base)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("run")
    state = optimize_one(
        cfg(),
        wd,
        env=FunctionEnvironment(lambda x, rng: x, SHAPE),
        reward_fn=lambda x, p: -np.mean(np.asarray(x) ** 2, axis=(1, 2, 3)),
    )
    return wd, state


def copy_run(run_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run_dir[0], dst)
    return dst


def test_flatten_roundtrip_covers_every_leaf():
    state = init_state(cfg(), SHAPE)
    flat = ckpt.flatten_state(state)
    assert len(flat) == len(jax.tree.leaves(state))
    assert {"policy.mu", "policy.sigma_raw", "step", "rng", "bad_rewards", "replay.x"} <= set(flat)
    assert any(k.startswith("drcm_params.params.Dense_0") for k in flat)
    back = ckpt.unflatten_state(state, flat)
    assert jax.tree.structure(back) == jax.tree.structure(state)


def test_save_restore_roundtrip_is_exact(tmp_path):
    state = init_state(cfg(), SHAPE)
    state = state.replace(policy=state.policy.replace(mu=state.policy.mu + 0.125), step=state.step + 5)
    manager = ckpt.make_manager(tmp_path / "ck")
    ckpt.save_checkpoint(manager, 5, state, {"latent_shape": [1, 2, 2]})
    restored, meta = ckpt.restore_checkpoint(
        ckpt.make_manager(tmp_path / "ck"), init_state(cfg(), SHAPE), {"latent_shape": [1, 2, 2]}
    )
    assert meta["step"] == 5
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_load_state_returns_the_final_state(run_dir):
    wd, state = run_dir
    loaded = load_state(wd)
    assert int(loaded.step) == 4
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(load_state(wd, step=2).step) == 2


def test_checkpoint_of_another_latent_shape_is_refused(run_dir, tmp_path):
    wd = copy_run(run_dir, tmp_path)
    record = json.loads((wd / "config.json").read_text())
    record["latent_shape"] = [1, 4, 4]
    (wd / "config.json").write_text(json.dumps(record))
    with pytest.raises(ckpt.CheckpointError, match=r"latent_shape: checkpoint has \[1, 2, 2\]"):
        load_state(wd)


def test_checkpoint_of_another_config_is_refused(run_dir, tmp_path):
    wd = copy_run(run_dir, tmp_path)
    record = json.loads((wd / "config.json").read_text())
    record["config"]["clip_eps"] = 0.3
    (wd / "config.json").write_text(json.dumps(record))
    with pytest.raises(ckpt.CheckpointError, match="config_hash"):
        load_state(wd)


def test_array_shape_mismatch_is_refused_even_without_meta(tmp_path):
    manager = ckpt.make_manager(tmp_path / "ck")
    ckpt.save_checkpoint(manager, 1, init_state(cfg(), SHAPE), {})
    with pytest.raises(ckpt.CheckpointError, match=r"policy\.mu has shape \(1, 2, 2\).*\(2, 2, 2\)"):
        ckpt.restore_checkpoint(manager, init_state(cfg(), (2, 2, 2)), {})


def test_corrupt_checkpoint_is_refused_with_its_path(run_dir, tmp_path):
    wd = copy_run(run_dir, tmp_path)
    step_dir = wd / "checkpoints" / "4"
    for f in (step_dir / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoints/4\) is corrupt"):
        load_state(wd)
    shutil.rmtree(step_dir / "meta")
    with pytest.raises(ckpt.CheckpointError, match=r"step 4 .* is corrupt: file meta/.* is missing"):
        load_state(wd)
    assert step_dir.is_dir()  # load_state only reads: the damaged step stays where it is


def test_missing_checkpoints_and_rundir_are_explained(tmp_path):
    with pytest.raises(RunDirError, match="config.json is missing"):
        load_state(tmp_path)
