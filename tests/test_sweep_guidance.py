"""scripts/sweep_guidance.py: the guidance study behind the shipped model's default CFG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from script_loader import load_script

from find_jax import evaluate_shapes as ev


def test_tuning_prompts_are_held_out_of_the_evaluation():
    held_out = set(ev.TUNING_COMMON) | set(ev.TUNING)
    assert not held_out & (set(ev.RARE) | set(ev.COMMON))
    assert len(ev.TUNING_COMMON) == 6


def test_sweep_runs_on_the_shipped_model(tmp_path):
    out = tmp_path / "cfg.json"
    result = load_script("sweep_guidance").main(["--guidance", "2", "--num-images", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    row = result["scales"]["2"]
    assert set(row["prompts"]) == set(ev.TUNING_COMMON) | set(ev.TUNING)
    assert all(v in (0.0, 0.5, 1.0) for v in row["prompts"].values())  # 2 images each
    assert row["common"] == pytest.approx(np.mean([row["prompts"][p] for p in ev.TUNING_COMMON]))
    assert row["rare"] == pytest.approx(np.mean([row["prompts"][p] for p in ev.TUNING]))
    assert row["common"] > 0.0  # the shipped model aligns some common captions even with 2 images each


def test_sweep_refuses_bad_scales():
    with pytest.raises(SystemExit):
        load_script("sweep_guidance").main(["--guidance", "-1"])
    with pytest.raises(SystemExit):
        load_script("sweep_guidance").main(["--num-images", "0"])
