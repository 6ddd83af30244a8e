"""Bad-input paths of the developers' shell scripts (the GPU benchmark and the newer-stack check).

Their real work needs a GPU or several GB of downloads, so only what they refuse is tested here: each refusal
exits 2 with a message and leaves the user's files alone (DESIGN.md section 8). The shapes-model rebuild is
checked for which stages it runs, with a stand-in for Python."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _bash(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_gpu_benchmark_without_a_verb_prints_usage():
    proc = _bash("gpu_benchmark.sh")
    assert proc.returncode == 2
    assert "usage: bash scripts/gpu_benchmark.sh fetch | run" in proc.stderr


def test_gpu_benchmark_refuses_an_unknown_dtype(tmp_path):
    proc = _bash("gpu_benchmark.sh", "run", "float16", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "DTYPE must be bfloat16 or float32, got float16" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_benchmark_without_wheels_says_to_fetch_them(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    proc = _bash("gpu_benchmark.sh", "run", "float32", str(tmp_path / "out"), FIND_JAX_GPU_WHEELS=str(wheels))
    assert proc.returncode == 2
    assert "run 'bash scripts/gpu_benchmark.sh fetch'" in proc.stderr


def test_gpu_benchmark_never_deletes_a_foreign_site_folder(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("diffusers-0.39.0-py3-none-any.whl", "transformers-4.57.6-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    site = tmp_path / "site"
    site.mkdir()
    (site / "precious.txt").write_text("keep me")
    proc = _bash(
        "gpu_benchmark.sh",
        "run",
        "float32",
        str(tmp_path / "out"),
        FIND_JAX_GPU_WHEELS=str(wheels),
        FIND_JAX_GPU_SITE=str(site),
    )
    assert proc.returncode == 2
    assert "holds files this script did not write" in proc.stderr
    assert (site / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in site.iterdir()) == ["precious.txt"]


def test_newer_stack_check_never_deletes_a_foreign_folder(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.md").write_text("keep me")
    proc = _bash("newer_stack_check.sh", str(target))
    assert proc.returncode == 2
    assert f"{target} holds files this script did not write" in proc.stderr
    assert sorted(p.name for p in target.iterdir()) == ["notes.md"]
    assert (target / "notes.md").read_text() == "keep me"


def test_model_rebuild_goes_on_from_the_last_stage_kept(tmp_path):
    """With stage `warm` kept (its model directory under KEPT), only `anneal` trains, warm-started from the kept
    model, and the result is measured; with nothing kept all three stages train in order."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    kept = tmp_path / "kept" / "warm"
    kept.mkdir(parents=True)
    (kept / "training.json").write_text("{}")
    work = tmp_path / "work"
    proc = _bash("rebuild_shapes_model.sh", str(work), PYTHON=str(fake), KEPT=str(tmp_path / "kept"))
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and "--workdir " + str(work / "anneal") in lines[0], lines
    assert f"--init-from {work}/warm/model" in lines[0] and (work / "warm" / "model" / "training.json").is_file()
    assert lines[1].startswith("scripts/measure_shapes.py --model " + str(work / "anneal" / "model"))
    calls.unlink()
    proc = _bash("rebuild_shapes_model.sh", str(tmp_path / "fresh"), PYTHON=str(fake), KEPT=str(tmp_path))
    stages = [line.split("--workdir ")[1].split()[0] for line in calls.read_text().splitlines()[:-1]]
    assert proc.returncode == 0 and stages == [str(tmp_path / "fresh" / s) for s in ("scratch", "warm", "anneal")]
