"""`find-jax optimize / export / sample --workdir` end to end on the tiny random SD model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from find_jax.cli import main
from find_jax.metrics import read_metrics
from find_jax.rundir import load_state


@pytest.fixture(scope="module")
def run_dir(tiny_sd_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "red-cat"
    args = [
        "optimize",
        "--model",
        str(tiny_sd_dir),
        "--prompt",
        "a red cat",
        "--reward",
        "brightness",
        "--preset",
        "tiny",
        "--iterations",
        "6",
        "--checkpoint-every",
        "3",
        "--workdir",
        str(workdir),
        "--cache-dir",
        "off",
        "--quiet",
    ]
    assert main(args) == 0
    return workdir, args


def test_optimize_writes_every_file(run_dir):
    workdir, _ = run_dir
    for name in (
        "config.json",
        "metrics.jsonl",
        "final_samples.npy",
        "final_latents.npy",
        "final_rewards.npy",
        "reward_curve.png",
        "final_samples.png",
    ):
        assert (workdir / name).is_file(), name
    assert any((workdir / "checkpoints").iterdir())
    assert not (workdir / "status.json").exists()  # a single run writes no prompt-set status
    record = json.loads((workdir / "config.json").read_text())
    assert record["config"]["prompt"] == "a red cat" and record["config"]["reward"] == "brightness"
    assert record["model_id"] and record["weights_hash"]
    assert record["latent_shape"] == [4, 8, 8]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6
    m = json.loads(lines[-1])
    for key in ("reward/mean", "reward/max", "drcm/loss", "rca/clip_frac", "time/iter_s"):
        assert key in m, key
    samples = np.load(workdir / "final_samples.npy")
    assert samples.shape[1:] == (16, 16, 3) and 0 <= samples.min() and samples.max() <= 1


def test_rerun_resumes_and_other_setup_is_refused(run_dir, capsys):
    workdir, args = run_dir
    before = (workdir / "metrics.jsonl").read_text()
    assert main(args) == 0  # finished run: resumes at the end, nothing redone
    assert (workdir / "metrics.jsonl").read_text() == before
    other = [a if a != "a red cat" else "a blue dog" for a in args]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "prompt" in err
    assert (workdir / "metrics.jsonl").read_text() == before  # nothing lost


def test_export_npz_and_pt(run_dir, tmp_path):
    import torch

    workdir, _ = run_dir
    assert main(["export", "--workdir", str(workdir), "--format", "npz", "--out", str(tmp_path / "d.npz")]) == 0
    d = np.load(tmp_path / "d.npz")
    assert d["mu"].shape == d["sigma"].shape == (4, 8, 8) and (d["sigma"] > 0).all()
    assert main(["export", "--workdir", str(workdir), "--format", "pt", "--out", str(tmp_path / "d.pt")]) == 0
    t = torch.load(tmp_path / "d.pt")
    assert tuple(t["mean"].shape) == tuple(t["std"].shape) == (1, 4, 8, 8)
    np.testing.assert_allclose(t["mean"][0].numpy(), d["mu"])
    np.testing.assert_allclose(t["std"][0].numpy(), d["sigma"])


def test_export_refuses_an_existing_out_unless_overwrite(run_dir, tmp_path, capsys):
    workdir, _ = run_dir
    out = tmp_path / "d.npz"
    out.write_bytes(b"precious")
    cmd = ["export", "--workdir", str(workdir), "--format", "npz", "--out", str(out)]
    assert main(cmd) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main([*cmd, "--overwrite"]) == 0
    assert np.load(out)["mu"].shape == (4, 8, 8)


def test_sample_from_learned_distribution(run_dir, tmp_path):
    workdir, _ = run_dir
    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                "--workdir",
                str(workdir),
                "--num-images",
                "3",
                "--seed",
                "1",
                "--out",
                str(out),
                "--cache-dir",
                "off",
            ]
        )
        == 0
    )
    images = np.load(out / "images.npy")
    latents = np.load(out / "latents.npy")
    assert images.shape == (3, 16, 16, 3) and latents.shape == (3, 4, 8, 8)
    d = np.load(workdir / "final_latents.npy")
    assert d.shape[1:] == latents.shape[1:]


def test_bad_optimize_inputs(tiny_sd_dir, tmp_path, capsys):
    base = ["optimize", "--model", str(tiny_sd_dir), "--preset", "tiny", "--cache-dir", "off", "--quiet"]
    assert main([*base, "--prompt", "x", "--reward", "nope", "--workdir", str(tmp_path / "a")]) == 2
    assert "available rewards" in capsys.readouterr().err
    assert main([*base, "--prompt", "", "--reward", "brightness", "--workdir", str(tmp_path / "b")]) == 2
    assert "empty" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "precious.txt").write_text("keep me")
    assert main([*base, "--prompt", "x", "--reward", "brightness", "--workdir", str(tmp_path / "c")]) == 2
    assert (tmp_path / "c" / "precious.txt").read_text() == "keep me"
    assert main(["export", "--workdir", str(tmp_path / "c"), "--out", str(tmp_path / "x.npz")]) == 2


def test_optimize_reads_the_weights_asked_for(tiny_sd_bin_dir, tmp_path, capsys):
    """--weights reaches the loader (it used to be parsed and ignored): Flax weights asked of a model that ships
    only PyTorch .bin files are refused before anything is written, for one prompt and for a prompt set."""
    base = ["optimize", "--model", str(tiny_sd_bin_dir), "--weights", "flax", "--reward", "brightness"]
    base += ["--preset", "tiny", "--iterations", "1", "--cache-dir", "off", "--quiet"]
    assert main([*base, "--prompt", "x", "--workdir", str(tmp_path / "one")]) == 2
    assert "diffusion_flax_model.msgpack" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a red cat\n")
    assert main([*base, "--prompts-file", str(tmp_path / "p.txt"), "--workdir", str(tmp_path / "set")]) == 2
    assert "diffusion_flax_model.msgpack" in capsys.readouterr().err
    assert not (tmp_path / "one").exists() and not (tmp_path / "set").exists()


def test_sample_from_run_honours_model_dtype_and_weights(run_dir, tiny_sd_bin_dir, tmp_path, capsys):
    workdir, _ = run_dir
    base = ["sample", "--workdir", str(workdir), "--num-images", "2", "--seed", "1", "--cache-dir", "off"]
    assert main([*base, "--out", str(tmp_path / "f32")]) == 0
    # The run's model at another path (the same weights as PyTorch .bin), sampled in bf16.
    assert main([*base, "--model", str(tiny_sd_bin_dir), "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    f32, bf16 = (json.loads((tmp_path / d / "sample.json").read_text()) for d in ("f32", "bf16"))
    assert f32["dtype"] == "float32" and bf16["dtype"] == "bfloat16"
    assert bf16["model"] == str(tiny_sd_bin_dir) and f32["model"] != bf16["model"]
    np.testing.assert_array_equal(np.load(tmp_path / "bf16" / "latents.npy"), np.load(tmp_path / "f32" / "latents.npy"))
    a, b = np.load(tmp_path / "f32" / "images.npy"), np.load(tmp_path / "bf16" / "images.npy")
    assert not np.array_equal(a, b)  # bf16 really ran
    assert np.abs(a - b).max() < 0.1  # ... on the same model and latents
    # Flax weights asked of the .bin-only copy: refused, nothing written.
    assert main([*base, "--model", str(tiny_sd_bin_dir), "--weights", "flax", "--out", str(tmp_path / "x")]) == 2
    assert "diffusion_flax_model.msgpack" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # Given latents contradict a learned distribution: refused with the reason.
    np.save(tmp_path / "l.npy", np.zeros((2, 4, 8, 8), np.float32))
    assert main([*base, "--latents", str(tmp_path / "l.npy"), "--out", str(tmp_path / "y")]) == 2
    assert "--latents cannot be combined with --workdir" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_sigint_checkpoints_exits_130_and_the_rerun_resumes_to_the_uninterrupted_run(run_dir, tmp_path):
    """Ctrl-C during `optimize`: the iteration finishes and is checkpointed, one line says so, exit 130 without a
    traceback; the same command again ends exactly where the uninterrupted run (the fixture's) ended."""
    full, args = run_dir
    workdir = tmp_path / "cut"
    cmd = [a if a != str(full) else str(workdir) for a in args]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "find_jax", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            deadline = time.monotonic() + 300
            # config.json is written inside the run, after the handlers are installed and before iteration 1 ends.
            while not (workdir / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert rc == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if "interrupted at iteration" in ln]
    assert len(lines) == 1, stderr[-3000:]
    step = int(lines[0].split("interrupted at iteration ")[1].split(";")[0])
    assert lines[0] == f"find-jax optimize: interrupted at iteration {step}; rerun the same command to resume"
    assert 1 <= step < 6
    assert int(load_state(workdir).step) == step
    assert [m["step"] for m in read_metrics(workdir / "metrics.jsonl")] == list(range(1, step + 1))
    assert not (workdir / "final_samples.npy").exists()
    # The same command resumes; its end is the uninterrupted run's, bit for bit.
    assert main(cmd) == 0
    for a, b in zip(jax.tree.leaves(load_state(full)), jax.tree.leaves(load_state(workdir)), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in ("final_latents", "final_samples", "final_rewards"):
        np.testing.assert_array_equal(np.load(full / f"{name}.npy"), np.load(workdir / f"{name}.npy"))
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in ms]  # noqa: E731
    assert strip(read_metrics(workdir / "metrics.jsonl")) == strip(read_metrics(full / "metrics.jsonl"))
