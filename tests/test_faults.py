"""Faults and bad input, as a user meets them: every case ends in one clear line (no traceback), a resumable
state, and nothing lost (DESIGN §8). Each test runs the CLI in a subprocess on the shipped shapes model.

* corrupt checkpoints (truncated or altered data files, random bytes in the manifest): the damaged step is moved
  aside with one warning line and the run resumes from the newest step that restores, ending where an untouched
  run ends; when no step restores, one error line;
* SIGKILL at random moments (inside checkpoint writes too: a checkpoint every iteration) and a torn last line of
  ``metrics.jsonl`` never leave a workdir that fails to resume or resumes to another result;
* the table of issue 19: refused prompts, over-long prompts, bad ``sample`` input checked before the model
  loads, a text file as ``--latents``, ``--guidance inf``, ``export`` onto an existing file, ``--help`` text.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

PROMPT = "a red circle"
TINY = ["--preset", "tiny", "--iterations", "8", "--checkpoint-every", "2"]


def _env(tmp_path: Path) -> dict[str, str]:
    # One compilation cache per test module run keeps the reruns short; nothing else is shared.
    cache = Path(os.environ.get("FIND_JAX_TEST_CACHE", tmp_path.parent / "fault-xla"))
    return {**os.environ, "FIND_JAX_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}


def _cli(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "find_jax", *args],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=timeout,
        cwd=tmp_path,
    )


def _optimize(tmp_path: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli(tmp_path, "optimize", "--prompt", PROMPT, *TINY, *extra, "--workdir", str(workdir), "--quiet")


def _result(workdir: Path) -> dict:
    """What a finished run holds: its learned mu/sigma, final draws and every metric but the timings."""
    from find_jax.metrics import read_metrics
    from find_jax.rundir import load_state

    state = load_state(workdir)
    metrics = [
        {k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(workdir / "metrics.jsonl")
    ]
    return {
        "step": int(state.step),
        "mu": np.asarray(state.policy.mu),
        "sigma": np.asarray(state.sigma),
        "final": np.load(workdir / "final_latents.npy"),
        "metrics": metrics,
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    np.testing.assert_array_equal(a["mu"], b["mu"])
    np.testing.assert_array_equal(a["sigma"], b["sigma"])
    np.testing.assert_array_equal(a["final"], b["final"])
    assert a["metrics"] == b["metrics"]


def _one_clean_line(stderr: str) -> list[str]:
    """The lines a user reads (log lines aside); there must be no traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip() and " INFO " not in line]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted tiny run (8 iterations, checkpoints at 2, 4, 6, 8)."""
    root = tmp_path_factory.mktemp("reference")
    workdir = root / "run"
    out = _optimize(root, workdir)
    assert out.returncode == 0, out.stderr
    return workdir, _result(workdir)


# ----------------------------------------------------------------------------------------------------------
# Corrupt checkpoints.


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 5):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _random_manifest(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(max(64, path.stat().st_size)))


def _data_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: [_truncate(f) for f in _data_files(d)], id="truncated-data"),
        pytest.param(lambda d: [_flip_bytes(f) for f in _data_files(d)], id="flipped-bytes"),
        pytest.param(lambda d: _random_manifest(d / "state" / "manifest.ocdbt"), id="random-manifest"),
    ],
)
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    reference, tmp_path, damage
):
    ref_dir, ref = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    # As if the run had stopped right after its checkpoint at 8, before its final samples, with step 8 damaged.
    for name in ("final_samples.npy", "final_latents.npy", "final_rewards.npy"):
        (workdir / name).unlink()
    damage(workdir / "checkpoints" / "8")
    out = _optimize(tmp_path, workdir)
    assert out.returncode == 0, out.stderr
    lines = _one_clean_line(out.stderr)
    (warning,) = [line for line in lines if "is corrupt" in line or "is unreadable" in line]
    assert "checkpoint step 8" in warning and "checkpoints.corrupt" in warning
    assert len(warning) < 400  # no library dump
    assert (workdir / "checkpoints.corrupt" / "8").is_dir()  # kept, not deleted
    _assert_same(_result(workdir), ref)


def test_when_no_checkpoint_restores_the_run_is_refused_in_one_line(reference, tmp_path):
    ref_dir, _ = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    (workdir / "final_samples.npy").unlink()
    for step in ("6", "8"):  # the manager keeps the last two
        for f in _data_files(workdir / "checkpoints" / step):
            _flip_bytes(f)
    out = _optimize(tmp_path, workdir)
    assert out.returncode == 2
    lines = _one_clean_line(out.stderr)
    assert lines[-1].startswith("find-jax optimize: error: no checkpoint in") and "restores" in lines[-1]
    assert sorted(p.name for p in (workdir / "checkpoints.corrupt").iterdir()) == ["6", "8"]


def test_a_torn_last_metrics_line_resumes_to_the_same_result(reference, tmp_path):
    ref_dir, ref = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    shutil.rmtree(workdir / "checkpoints" / "8")  # stopped after iteration 7's line was half written
    for name in ("final_samples.npy", "final_latents.npy", "final_rewards.npy"):
        (workdir / name).unlink()
    text = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (workdir / "metrics.jsonl").write_text("".join(text[:6]) + text[6][:25])
    out = _optimize(tmp_path, workdir)
    assert out.returncode == 0, out.stderr
    _one_clean_line(out.stderr)
    _assert_same(_result(workdir), ref)


# ----------------------------------------------------------------------------------------------------------
# SIGKILL at random moments.


def _kill_trials(reference, tmp_path: Path, trials: int, seed: int) -> list[float]:
    ref_dir, ref = reference
    rng = random.Random(seed)
    moments = []
    for trial in range(trials):
        workdir = tmp_path / f"kill-{trial}"
        cmd = [sys.executable, "-m", "find_jax", "optimize", "--prompt", PROMPT, *TINY, "--checkpoint-every", "1"]
        proc = subprocess.Popen(
            [*cmd, "--workdir", str(workdir), "--quiet"],
            env=_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        # Wait until the loop runs (metrics.jsonl exists), then kill after a random delay: most of the loop's time
        # is spent in the per-iteration checkpoint writes, so many kills land inside one.
        deadline = time.monotonic() + 200
        while not (workdir / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        delay = rng.uniform(0.0, 2.5)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        moments.append(delay)
        out = _cli(
            tmp_path,
            "optimize",
            "--prompt",
            PROMPT,
            *TINY,
            "--checkpoint-every",
            "1",
            "--workdir",
            str(workdir),
            "--quiet",
        )
        assert out.returncode == 0, (trial, delay, out.stderr)
        _one_clean_line(out.stderr)
        got = _result(workdir)
        # --checkpoint-every 1 is another config than the reference's 2: the learned state must still be equal
        np.testing.assert_array_equal(got["mu"], ref["mu"])
        np.testing.assert_array_equal(got["sigma"], ref["sigma"])
        np.testing.assert_array_equal(got["final"], ref["final"])
        assert got["metrics"] == ref["metrics"], (trial, delay)
    return moments


def test_sigkill_at_random_moments_resumes_to_the_same_result(reference, tmp_path):
    _kill_trials(reference, tmp_path, trials=3, seed=1)


@pytest.mark.slow
@pytest.mark.soak
def test_sigkill_many_trials(reference, tmp_path):
    """20 trials (issue 19): none leaves a workdir that fails to resume or resumes to another result."""
    _kill_trials(reference, tmp_path, trials=20, seed=2)


# ----------------------------------------------------------------------------------------------------------
# The table of bad input: one line on stderr, exit 2, nothing written.


def test_a_prompt_the_reward_refuses_leaves_nothing_and_the_corrected_command_runs(tmp_path):
    workdir = tmp_path / "run"
    out = _cli(tmp_path, "optimize", "--prompt", "a photo of a cat", *TINY, "--workdir", str(workdir), "--quiet")
    assert out.returncode == 2
    (line,) = _one_clean_line(out.stderr)
    assert "cannot score the prompt 'a photo of a cat'" in line
    assert not workdir.exists()
    long_prompt = " ".join(["cat"] * 200)
    out = _cli(tmp_path, "optimize", "--prompt", long_prompt, *TINY, "--workdir", str(workdir), "--quiet")
    assert out.returncode == 2 and not workdir.exists()
    fixed = _cli(
        tmp_path,
        "optimize",
        "--prompt",
        "a photo of a cat",
        "--reward",
        "brightness",
        *TINY,
        "--iterations",
        "2",
        "--workdir",
        str(workdir),
        "--quiet",
    )
    assert fixed.returncode == 0, fixed.stderr


def test_an_over_long_prompt_is_one_logged_warning_naming_the_models_limit(tmp_path):
    workdir = tmp_path / "run"
    prompt = " ".join(["red"] * 30)
    out = _cli(
        tmp_path, "optimize", "--prompt", prompt, "--reward", "brightness", *TINY, "--iterations", "1",
        "--workdir", str(workdir), "--quiet",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = _one_clean_line(out.stderr)
    assert "UserWarning" not in out.stderr
    warnings = [line for line in lines if "truncated" in line]
    assert warnings and all("WARNING" in w and "takes (16)" in w for w in warnings), lines  # the shipped model's


def test_a_single_prompt_run_in_a_log_file_prints_progress_lines(tmp_path):
    out = _cli(tmp_path, "optimize", "--prompt", PROMPT, *TINY, "--workdir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    bars = [line for line in out.stderr.splitlines() if line.startswith("FIND ")]
    assert "\r" not in out.stderr and len(bars) >= 2  # a line per 10% and the last, not \r updates
    assert "8/8" in bars[-1] and "ETA" in bars[-1]


def test_sample_bad_input_is_refused_before_the_model_loads(tmp_path):
    text = tmp_path / "latents.npy"
    text.write_text("not numbers\n")
    cases = [
        (["--steps", "0"], "steps must be"),
        (["--guidance", "inf"], "guidance must be a finite number >= 0; got inf"),
        (["--latents", str(text)], "is not a .npy file"),
        (["--num-images", "0"], "--num-images must be >= 1"),
    ]
    for extra, message in cases:
        t0 = time.monotonic()
        out = _cli(tmp_path, "sample", "--prompt", PROMPT, "--out", str(tmp_path / "o"), *extra, "--cache-dir", "off")
        assert out.returncode == 2, (extra, out.stderr)
        (line,) = _one_clean_line(out.stderr)
        assert message in line, (extra, line)
        assert "loaded" not in out.stderr and time.monotonic() - t0 < 60
    assert not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    np.save(tmp_path / "full" / "images.npy", np.zeros((1, 2, 2, 3), np.float32))
    out = _cli(tmp_path, "sample", "--prompt", PROMPT, "--out", str(tmp_path / "full"), "--cache-dir", "off")
    assert out.returncode == 2 and "--overwrite" in _one_clean_line(out.stderr)[0]


def test_export_refuses_to_overwrite_without_the_flag(reference, tmp_path):
    ref_dir, _ = reference
    target = tmp_path / "mu.npz"
    target.write_bytes(b"keep me")
    out = _cli(tmp_path, "export", "--workdir", str(ref_dir), "--out", str(target))
    assert out.returncode == 2
    (line,) = _one_clean_line(out.stderr)
    assert "exists" in line and "--overwrite" in line
    assert target.read_bytes() == b"keep me"
    out = _cli(tmp_path, "export", "--workdir", str(ref_dir), "--out", str(target), "--overwrite")
    assert out.returncode == 0, out.stderr
    assert set(np.load(target)) >= {"mu", "sigma"}


def test_help_and_rewards_listing_are_clean(tmp_path):
    out = _cli(tmp_path, "evaluate", "--help")
    assert out.returncode == 0 and "95%%" not in out.stdout and "95%" in out.stdout
    out = _cli(tmp_path, "rewards")
    rows = [line for line in out.stdout.splitlines() if line.strip()]
    starts = {len(row) - len(row[row.index(" ") :].lstrip()) for row in rows}  # where each description starts
    assert len(starts) == 1, rows
    assert any(r.startswith("jpeg_incompressibility") for r in rows)


def test_interrupt_message_and_exit_codes_are_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "interrupted at iteration" in readme and "130" in readme and "143" in readme
    assert "checkpoints.corrupt" in readme


def test_video_flags_and_latent_ranks_on_an_image_model_are_one_line_each(tmp_path):
    five = tmp_path / "video_latents.npy"
    np.save(five, np.zeros((1, 14, 4, 16, 16), np.float32))  # [N, C, F, h, w]: a video's latents
    cases = [
        (["optimize", "--prompt", PROMPT, "--num-frames", "4", *TINY, "--workdir", str(tmp_path / "w1")], "for video"),
        (["optimize", "--prompt", PROMPT, "--num-frames", "0", *TINY, "--workdir", str(tmp_path / "w2")], ">= 1"),
        (["sample", "--prompt", PROMPT, "--latents", str(five), "--out", str(tmp_path / "o")], "[N, 14, 16, 16]"),
    ]
    for args, message in cases:
        out = _cli(tmp_path, *args, "--cache-dir", "off")
        assert out.returncode == 2, (args, out.stderr)
        (line,) = _one_clean_line(out.stderr)
        assert message in line, (args, line)
    assert not any((tmp_path / d).exists() for d in ("w1", "w2", "o"))


def test_sigterm_checkpoints_says_one_line_exits_143_and_resumes_to_the_same_result(reference, tmp_path):
    _, ref = reference
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "find_jax", "optimize", "--prompt", PROMPT, *TINY, "--workdir", str(workdir)]
    proc = subprocess.Popen(
        [*cmd, "--quiet"], env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    deadline = time.monotonic() + 200
    while not (workdir / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=200)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")  # 8 tiny iterations can outrun the poll
    assert proc.returncode == 143, stderr
    lines = _one_clean_line(stderr)
    (said,) = [line for line in lines if "interrupted at iteration" in line]
    step = int(said.split("interrupted at iteration ")[1].split(";")[0])
    assert said.endswith("rerun the same command to resume") and 1 <= step < 8
    from find_jax.rundir import load_state

    assert int(load_state(workdir).step) == step  # checkpointed at the iteration it stopped after
    out = _optimize(tmp_path, workdir)
    assert out.returncode == 0, out.stderr
    _assert_same(_result(workdir), ref)
