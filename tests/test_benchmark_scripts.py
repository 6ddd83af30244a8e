"""The sampler benchmark script runs end to end on the tiny model and prints its table (figures are not
asserted: speed is measured by the script, never by tests)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_sampler.py"


def test_benchmark_sampler_prints_a_row_per_setting(tmp_path):
    rows_file = tmp_path / "rows.json"
    model = tmp_path / "model"  # built by the script and kept (the GPU run builds its SD1.5-sized model once)
    cmd = [sys.executable, str(SCRIPT), "--model-out", str(model), "--batches", "2", "--steps", "2"]
    cmd += ["--repeats", "1", "--jax-cpu-devices", "1,2", "--torch-threads", "1", "--json", str(rows_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    assert [(r["framework"], r["devices"], r["threads"], r["round"]) for r in rows] == [
        ("jax", 1, None, 0),
        ("jax", 2, None, 0),
        ("torch", 1, 1, 0),
    ]
    assert all(r["batch"] == 2 and r["steady_s_per_image"] > 0 for r in rows)
    out = proc.stdout
    assert "| jax | 2 CPU devices | 2 |" in out and "| torch | 1 thread | 2 |" in out
    assert "batch 2: JAX (2 CPU devices) is" in out and "faster per image than PyTorch (1 thread)" in out
    assert (model / "model_index.json").is_file() and not (tmp_path / "model.partial").exists()
    assert f"built the tiny model in {model}" in proc.stderr

    assert all(r["fast_norm"] == ("on" if r["framework"] == "jax" else None) for r in rows)

    # a second run reuses the kept model instead of building another (here with Flax's own GroupNorm)
    cmd = [sys.executable, str(SCRIPT), "--model-out", str(model), "--frameworks", "jax", "--jax-cpu-devices", "1"]
    cmd += ["--batches", "1", "--steps", "1", "--repeats", "1", "--fast-norm", "off", "--json", str(rows_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reusing the model in {model}" in proc.stderr and "| jax | 1 CPU device | 1 |" in proc.stdout
    assert "JAX with Flax's own GroupNorm" in proc.stdout
    assert [r["fast_norm"] for r in json.loads(rows_file.read_text())] == ["off"]
    # ... but never for another --config
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model-out", str(model), "--config", "sd15"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "holds the 'tiny' model, not 'sd15'" in proc.stderr


def _row(fw, batch, s_per_image, rnd, devices=1, threads=None, **extra):
    row = dict(
        framework=fw,
        devices=devices,
        platform="cpu",
        threads=threads,
        batch=batch,
        first_call_s=1.0 + rnd,
        steady_s_per_call=s_per_image * batch,
        steady_s_per_image=s_per_image,
        peak_rss_mb=100.0 * (rnd + 1),
        rss_after_load_mb=50.0,
        round=rnd,
    )
    return {**row, **extra}


def test_benchmark_report_takes_speedups_round_by_round(capsys):
    """Three rounds: each speed-up is against PyTorch's fastest setting *of that round*; the table shows
    medians over rounds and the largest peak memory."""
    bench = load_script("benchmark_sampler")
    rows = []
    # (jax s/image, torch 1 thread, torch 2 threads) per round; the fastest torch setting changes by round
    for rnd, (j, t1, t2) in enumerate([(0.05, 0.20, 0.15), (0.06, 0.12, 0.18), (0.04, 0.16, 0.10)]):
        rows += [_row("jax", 8, j, rnd, devices=2), _row("torch", 8, t1, rnd, threads=1)]
        rows += [_row("torch", 8, t2, rnd, threads=2)]
    args = argparse.Namespace(config="tiny", steps=50, guidance=7.5, dtype="float32", repeats=8)
    bench._print_report(rows, args)
    out = capsys.readouterr().out
    assert "| jax | 2 CPU devices | 8 | 2.00 | 0.0500 | 300 |" in out  # medians of first call and s/image
    assert "| torch | 1 thread | 8 | 2.00 | 0.1600 | 300 |" in out
    # per round: 0.15/0.05 = 3.00, 0.12/0.06 = 2.00, 0.10/0.04 = 2.50 -> median 2.50
    line = next(ln for ln in out.splitlines() if ln.startswith("batch 8: JAX (2 CPU devices)"))
    assert "is 2.50x faster per image than PyTorch (its fastest setting in each round)" in line
    assert "per round: 3.00x, 2.00x, 2.50x" in line


def test_benchmark_report_on_a_gpu_names_it_and_adds_gpu_memory(capsys):
    bench = load_script("benchmark_sampler")
    gpu = dict(platform="gpu", device_name="NVIDIA H100 80GB HBM3")
    rows = [
        _row("jax", 1, 1.0, 0, peak_gpu_mb=3000.0, **gpu),
        _row("torch", 1, 1.5, 0, threads=1, peak_gpu_mb=2500.0, **gpu),
    ]
    args = argparse.Namespace(config="sd15", steps=50, guidance=7.5, dtype="bfloat16", repeats=2)
    bench._print_report(rows, args)
    out = capsys.readouterr().out
    assert "NVIDIA H100 80GB HBM3; config sd15" in out and "peak GPU memory (MB) |" in out
    assert "| jax | 1 GPU device | 1 | 1.00 | 1.0000 | 100 | 3000 |" in out
    assert "| torch | CUDA | 1 | 1.00 | 1.5000 | 100 | 2500 |" in out  # threads mean nothing on a GPU
    assert "batch 1: JAX (1 GPU device) is 1.50x faster per image than PyTorch (CUDA)" in out


def test_benchmark_sampler_rejects_zero_rounds():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--rounds and --repeats must be >= 1" in proc.stderr


def test_benchmark_sampler_model_folder_errors(tmp_path):
    """--model-out never writes into a folder that holds something else, and excludes --model-dir."""
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model-out", str(other)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "holds no model built by this script" in proc.stderr
    assert [f.name for f in other.iterdir()] == ["notes.txt"] and (other / "notes.txt").read_text() == "keep me"
    (other / "model_index.json").write_text("{}")  # a user's own model is timed with --model-dir, never reused
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model-out", str(other)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "--model-dir to time an existing model" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model-out", str(tmp_path / "a"), "--model-dir", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_worker_peak_memory_is_its_own_not_the_parents():
    """A worker spawned by a parent that holds 300 MB reports its own peak (ru_maxrss would report >= 300 MB)."""
    child = (
        "import sys; sys.path.insert(0, sys.argv[1]); from script_loader import load_script; "
        "print(load_script('benchmark_sampler')._peak_mb())"
    )
    parent = (
        "import subprocess, sys; ballast = bytearray(300 * 2**20); ballast[::4096] = b'x' * len(ballast[::4096]); "
        f"print(subprocess.run([sys.executable, '-c', {child!r}, sys.argv[1]], capture_output=True, text=True, "
        "check=True).stdout)"
    )
    tests_dir = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", parent, tests_dir], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 0 < float(out.stdout.strip()) < 150


def test_benchmark_sampler_video_kind_runs_both_frameworks(tmp_path):
    """--kind video: the video environment vs TextToVideoSDPipeline on the same tiny ModelScope-layout model."""
    rows_file, model = tmp_path / "rows.json", tmp_path / "video_model"
    cmd = [sys.executable, str(SCRIPT), "--kind", "video", "--model-out", str(model), "--frames", "2"]
    cmd += ["--batches", "1", "--steps", "1", "--repeats", "1", "--jax-cpu-devices", "1", "--torch-threads", "1"]
    cmd += ["--query-chunk", "16", "--json", str(rows_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    assert [(r["framework"], r["kind"], r["frames"], r["query_chunk"]) for r in rows] == [
        ("jax", "video", 2, 16),
        ("torch", "video", 2, None),
    ]
    assert all(r["steady_s_per_video"] > 0 and "steady_s_per_image" not in r for r in rows)
    out = proc.stdout
    assert "config tiny video, 2 frames, 1 DDIM steps, CFG 9.0" in out and "chunks of 16 queries" in out
    assert "| jax | 1 CPU device | 1 |" in out and "steady s/video" in out
    assert "batch 1: JAX (1 CPU device) is" in out and "faster per video than PyTorch (1 thread)" in out
    assert (model / "model_index.json").is_file() and "TextToVideoSDPipeline" in (
        model / "model_index.json"
    ).read_text()
    # the kept video model is never taken for the tiny image model, nor an image config for a video model
    for extra, message in [
        ([], "holds the 'tiny video' model, not 'tiny'"),
        (["--kind", "video", "--config", "sd15"], "--config sd15 is no video model"),
    ]:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--model-out", str(model), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_benchmark_report_for_videos_says_per_video(capsys):
    bench = load_script("benchmark_sampler")
    rows = [_row("jax", 4, 0.0, 0, kind="video", steady_s_per_video=0.5)]
    rows += [_row("torch", 4, 0.0, 0, threads=2, kind="video", steady_s_per_video=2.0)]
    args = argparse.Namespace(
        config="tiny", kind="video", frames=16, query_chunk=0, steps=50, guidance=9.0, dtype="float32", repeats=3
    )
    bench._print_report(rows, args)
    out = capsys.readouterr().out
    assert "config tiny video, 16 frames, 50 DDIM steps, CFG 9.0" in out and "chunks of" not in out
    assert "| jax | 1 CPU device | 4 | 1.00 | 0.5000 | 100 |" in out and "steady s/video" in out
    assert "batch 4: JAX (1 CPU device) is 4.00x faster per video than PyTorch (2 threads)" in out
