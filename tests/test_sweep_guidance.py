"""scripts/sweep_guidance.py: the guidance study behind the shipped model's default CFG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from find_jax.shapes import evaluation as ev

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sweep_guidance.py"


def _load():
    spec = importlib.util.spec_from_file_location("sweep_guidance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tuning_prompts_are_held_out_of_the_evaluation():
    held_out = set(ev.TUNING_COMMON) | set(ev.TUNING)
    assert not held_out & (set(ev.RARE) | set(ev.COMMON))
    assert len(ev.TUNING_COMMON) == 6


def test_sweep_runs_on_the_shipped_model(tmp_path):
    out = tmp_path / "cfg.json"
    result = _load().main(["--guidance", "2", "--num-images", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    row = result["scales"]["2"]
    assert set(row["prompts"]) == set(ev.TUNING_COMMON) | set(ev.TUNING)
    assert all(v in (0.0, 0.5, 1.0) for v in row["prompts"].values())  # 2 images each
    assert row["common"] == pytest.approx(np.mean([row["prompts"][p] for p in ev.TUNING_COMMON]))
    assert row["rare"] == pytest.approx(np.mean([row["prompts"][p] for p in ev.TUNING]))
    assert row["common"] > 0.0  # the shipped model aligns some common captions even with 2 images each


def test_sweep_refuses_bad_scales():
    with pytest.raises(SystemExit):
        _load().main(["--guidance", "-1"])
    with pytest.raises(SystemExit):
        _load().main(["--num-images", "0"])
