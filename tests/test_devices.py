"""Several devices: the sampler's batch split over a mesh equals the one-device sampler; CPU cores exposed as
host devices by ``--cpu-devices`` / ``$FIND_JAX_CPU_DEVICES``; bad counts refused clearly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from multidevice import run_on_four_devices

from find_jax.cli import main
from find_jax.envs.devices import CPU_DEVICES_ENV, batch_mesh, configure_cpu_devices

SHARDED_SAMPLER_SCRIPT = r"""
import json, logging, sys
import jax, numpy as np
from find_jax.envs import load_model
from find_jax.envs import SamplerSettings, make_environment
from find_jax.envs.devices import batch_mesh

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("find_jax").addHandler(Keep())
logging.getLogger("find_jax").setLevel(logging.INFO)

model = load_model(sys.argv[1])
out = {"devices": len(jax.devices()), "mesh": batch_mesh().size}
for b, eta in ((1, 0.0), (2, 0.0), (4, 0.0), (4, 1.0)):
    prompts = ["a red cat", "a blue dog"][:1] * b if b == 1 else ["a red cat", "a blue dog"] * (b // 2)
    one = make_environment(model, SamplerSettings(steps=4, eta=eta), mesh=None)
    many = make_environment(model, SamplerSettings(steps=4, eta=eta))
    x = jax.random.normal(jax.random.PRNGKey(b), (b, 1, *one.latent_shape))  # P = b prompts, N = 1
    rng = jax.numpy.stack([jax.random.fold_in(jax.random.PRNGKey(7), p) for p in range(b)])
    a, m = np.asarray(one.bind(prompts)(x, rng)), np.asarray(many.bind(prompts)(x, rng))
    cond, uncond = many.encode(prompts)
    flat = x.reshape(b, *one.latent_shape)
    hlo = many.sample_fn.lower(many.params, flat, cond, uncond, rng).compile().as_text()
    collectives = sum(hlo.count(op) for op in ("all-gather(", "all-reduce(", "all-to-all(", "collective-permute("))
    out[f"b{b}_eta{eta}"] = {
        "max_diff": float(np.abs(a - m).max()),
        "spread": float(np.ptp(a)),
        "collectives": collectives,
        "out_devices": len(many.bind(prompts)(x, rng).devices()),
    }
out["warnings"] = [r for r in records if "not a multiple" in r]
print(json.dumps(out))
"""


def test_sampler_split_over_four_devices_equals_one_device(tiny_sd_dir, tmp_path):
    out = run_on_four_devices(SHARDED_SAMPLER_SCRIPT, tiny_sd_dir)
    assert out["devices"] == 4 and out["mesh"] == 4
    for key in ("b1_eta0.0", "b2_eta0.0", "b4_eta0.0", "b4_eta1.0"):
        r = out[key]
        assert r["spread"] > 0.05, key  # real images, not constants
        assert r["max_diff"] <= 1e-5, (key, r)
        assert r["out_devices"] == 4, key
    # B = 1: the CFG batch of 2 does not split over 4 devices; it runs replicated and says so.
    assert any("UNet batch 2 is not a multiple of 4 devices" in w for w in out["warnings"]), out["warnings"]
    # B = 2: the uncond and cond halves sit on different devices, so guidance needs an exchange per step.
    assert out["b2_eta0.0"]["collectives"] > 0
    # B = 4: whole CFG pairs per device (rows interleaved): the loop needs no communication at all.
    assert out["b4_eta0.0"]["collectives"] == 0 and out["b4_eta1.0"]["collectives"] == 0


def _cli(devices: int, *args: str) -> str:
    """Runs ``find-jax --cpu-devices DEVICES ARGS...`` in a fresh interpreter (the device count must be set
    before JAX starts); fails the test with its stderr on a non-zero exit, else returns the stderr (the log)."""
    cmd = [sys.executable, "-m", "find_jax.cli", "--cpu-devices", str(devices), *args, "--cache-dir", "off"]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", CPU_DEVICES_ENV)}
    proc = subprocess.run(cmd, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_cpu_devices_flag_splits_cli_sampling_over_two_cores(tiny_sd_dir, tmp_path):
    def sample(devices: int):
        out = tmp_path / f"out{devices}"
        args = ["sample", "--model", str(tiny_sd_dir), "--prompt", "a red cat", "--num-images", "2", "--steps", "4"]
        log = _cli(devices, *args, "--out", str(out))
        return np.load(out / "images.npy"), log

    one, log_one = sample(1)
    two, log_two = sample(2)
    assert "split over 2 devices" in log_two and "split over" not in log_one
    assert np.ptp(one) > 0.05
    np.testing.assert_allclose(two, one, atol=1e-5)


def test_cli_resumes_a_run_on_two_cores(tmp_path):
    """A run restored from its checkpoint (state on one device) samples on the two-device mesh: re-running a
    finished `make run`, and continuing an interrupted one, both worked only on one device before."""
    workdir = tmp_path / "run"

    def optimize(iterations: int):
        args = ["optimize", "--prompt", "a green circle", "--iterations", str(iterations), "--checkpoint-every", "2"]
        log = _cli(2, *args, "--steps", "2", "--quiet", "--workdir", str(workdir))
        return np.load(workdir / "final_samples.npy"), log

    first, log = optimize(4)
    assert "split over 2 devices" in log
    again, log = optimize(4)  # the finished run: restored, then its final samples drawn again
    assert "resuming" in log
    np.testing.assert_array_equal(again, first)
    shutil.rmtree(workdir / "checkpoints" / "4")  # as if stopped after iteration 2: the loop itself resumes
    resumed, log = optimize(4)
    assert "from iteration 2" in log
    np.testing.assert_array_equal(resumed, first)  # a resumed run draws what the uninterrupted one drew


def test_configure_cpu_devices_refuses_bad_counts(monkeypatch):
    have = len(jax.devices("cpu"))  # JAX has started in this process
    assert configure_cpu_devices(have) == have  # the running count is fine
    with pytest.raises(ValueError, match="already runs with"):
        configure_cpu_devices(have + 1)
    for bad in (0, -2, "two", "1.5"):
        with pytest.raises(ValueError, match="--cpu-devices must be a whole number >= 1"):
            configure_cpu_devices(bad)
    monkeypatch.delenv(CPU_DEVICES_ENV, raising=False)
    assert configure_cpu_devices() is None  # unset: JAX's default is left alone
    monkeypatch.setenv(CPU_DEVICES_ENV, "many")
    with pytest.raises(ValueError, match=r"\$FIND_JAX_CPU_DEVICES must be a whole number"):
        configure_cpu_devices()
    assert len(jax.devices("cpu")) == have


def test_cli_reports_a_bad_cpu_device_count(capsys):
    assert main(["--cpu-devices", "0", "rewards"]) == 2
    assert "--cpu-devices must be a whole number >= 1; got '0'" in capsys.readouterr().err


def test_batch_mesh_is_none_on_one_device():
    assert batch_mesh(jax.devices()[:1]) is None
    assert batch_mesh([]) is None
