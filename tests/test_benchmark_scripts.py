"""The sampler benchmark script runs end to end on the tiny model and prints its table (figures are not
asserted: speed is measured by the script, never by tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_sampler.py"


def test_benchmark_sampler_prints_a_row_per_setting(tiny_sd_dir, tmp_path):
    rows_file = tmp_path / "rows.json"
    cmd = [sys.executable, str(SCRIPT), "--model-dir", str(tiny_sd_dir), "--batches", "2", "--steps", "2"]
    cmd += ["--repeats", "1", "--jax-cpu-devices", "1,2", "--torch-threads", "1", "--json", str(rows_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    assert [(r["framework"], r["devices"], r["threads"]) for r in rows] == [
        ("jax", 1, None),
        ("jax", 2, None),
        ("torch", 1, 1),
    ]
    assert all(r["batch"] == 2 and r["steady_s_per_image"] > 0 for r in rows)
    out = proc.stdout
    assert "| jax | 2 CPU devices | 2 |" in out and "| torch | 1 thread | 2 |" in out
    assert "batch 2: JAX (2 CPU devices) is" in out and "faster per image than PyTorch (1 thread)" in out
