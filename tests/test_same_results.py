"""The envs/ redesign changed no result: the main job equals a run recorded with the code before it.

``tests/fixtures/main_job`` holds what ``find-jax --cpu-devices 2 optimize --prompt "a green circle"`` (``make
run``) produced at commit d190898, before the single-prompt path became a prompt set of one through the one loop
(``scripts/record_main_job.py`` writes it). The rerun must give the same mu and sigma, final draws and rewards,
and the same value of every metric of every iteration (timings aside), bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "main_job"


@pytest.mark.slow
def test_main_job_equals_the_recording_made_before_the_redesign(tmp_path):
    from find_jax.envs import load_model
    from find_jax.metrics import read_metrics
    from find_jax.rundir import load_state

    record = json.loads((FIXTURE / "record.json").read_text())
    assert load_model(None).fingerprint == record["weights_hash"], (
        "the shipped model changed since the fixture was recorded: rerun scripts/record_main_job.py with the "
        "code of the commit that changes the model, and say so in that commit"
    )
    wd = tmp_path / "run"
    env = {**os.environ, "FIND_JAX_CACHE_DIR": str(tmp_path / "xla")}
    cmd = [sys.executable, "-m", "find_jax", "--cpu-devices", "2", "optimize", "--prompt", "a green circle"]
    subprocess.run([*cmd, "--quiet", "--workdir", str(wd)], check=True, env=env, capture_output=True)
    want = np.load(FIXTURE / "state.npz")
    state = load_state(wd)
    assert int(state.step) == 150
    np.testing.assert_array_equal(np.asarray(state.policy.mu), want["mu"])
    np.testing.assert_array_equal(np.asarray(state.sigma), want["sigma"])
    np.testing.assert_array_equal(np.load(wd / "final_latents.npy"), want["final_latents"])
    np.testing.assert_array_equal(np.load(wd / "final_rewards.npy"), want["final_rewards"])
    got = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(wd / "metrics.jsonl")]
    assert got == record["metrics"]
    assert json.loads((wd / "config.json").read_text())["config"] == record["config"]
