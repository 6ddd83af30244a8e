"""The main job end to end: `find-jax optimize` with no --model runs on the shipped shapes-world model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from find_jax.cli import main
from find_jax.envs import load_model, shipped_model_dir
from find_jax.envs.image.shapes.model import FIND_DEFAULTS


def test_shipped_model_loads_with_its_defaults():
    d = shipped_model_dir()
    defaults = json.loads((d / "find_defaults.json").read_text())
    assert defaults["reward"] == "shapes"
    assert defaults == FIND_DEFAULTS  # what the package writes when it saves a model is what it ships
    m = load_model(None)
    assert m.latent_shape() == (14, 16, 16) and m.default_size == (32, 32)  # 12 image + 2 coordinate planes
    assert m.decoder.coord_channels == 2
    assert sum(x.size for x in __import__("jax").tree.leaves(m.params)) * 4 < 20e6  # ships under 20 MB


@pytest.mark.slow
def test_optimize_and_sample_on_the_shipped_model(tmp_path):
    workdir = tmp_path / "green-circle"
    assert (
        main(
            [
                "optimize",
                "--prompt",
                "a green circle",
                "--iterations",
                "12",
                "--checkpoint-every",
                "6",
                "--workdir",
                str(workdir),
                "--quiet",
                "--cache-dir",
                "off",
            ]
        )
        == 0
    )
    record = json.loads((workdir / "config.json").read_text())
    assert record["config"]["reward"] == "shapes" and record["config"]["steps"] == 20
    assert record["latent_shape"] == [14, 16, 16]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in rows)
    for name in ("reward_curve.png", "final_samples.png", "final_samples.npy"):
        assert (workdir / name).is_file()
    out = tmp_path / "samples"
    assert (
        main(["sample", "--workdir", str(workdir), "--num-images", "4", "--out", str(out), "--cache-dir", "off"]) == 0
    )
    images = np.load(out / "images.npy")
    assert images.shape == (4, 32, 32, 3)
    # the shipped model draws objects on a black background: a sizeable share of pixels is near black
    assert (images.max(axis=-1) < 0.2).mean() > 0.3
