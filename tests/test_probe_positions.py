"""scripts/probe_positions.py runs on the shipped shapes model and reports what it claims to measure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from script_loader import load_script


def test_centroids_of_rendered_images():
    probe = load_script("probe_positions")
    images = np.zeros((2, 32, 32, 3), np.float32)
    images[0, 10:14, 2:6] = 1.0  # a block centred at x 3.5, y 11.5
    images[1, 20:24, 26:30] = 1.0  # centred at x 27.5, y 21.5
    cx, cy = probe.centroids(images)
    assert (cx, cy) == (15.5, 16.5)  # the batch mean of the two centres
    np.testing.assert_array_equal(probe.in_named_half(images, "a red circle on the left"), [True, False])
    np.testing.assert_array_equal(probe.in_named_half(images, "a red circle at the bottom"), [False, True])
    with pytest.raises(ValueError, match="names no position"):
        probe.in_named_half(images, "a red circle")


def test_probe_runs_on_the_shipped_model(tmp_path):
    probe = load_script("probe_positions")
    out = tmp_path / "probe.json"
    result = probe.main(["--samples", "2", "--at", "0,8", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert len(rows) == 2 * len(probe.PAIRS) and {r["step"] for r in rows} == {0, 8}
    for r in rows:
        for x, y in r["centroids"]:
            assert 0 <= x < 32 and 0 <= y < 32
        assert r["embedding_gap_on_word"] > 0.01  # the two captions differ at the position word
        assert r["shift_px"] >= 0 and np.isfinite(r["embedding_gap_after_word_max"])
    assert [f["captions"] for f in result["sampled"]] == [list(p) for p in probe.PAIRS]
    for f in result["sampled"]:
        for caption in f["captions"]:
            assert 0.0 <= f["images"][caption]["in_named_half"] <= 1.0
            assert all(0 <= v < 32 for v in f["images"][caption]["centroid"])
