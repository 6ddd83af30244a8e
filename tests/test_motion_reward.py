"""The weight-free video reward ``motion``: the bright centroid's displacement in a named direction."""

from __future__ import annotations

import numpy as np
import pytest

from reward_models import make_reward, spec


def _moving_square(dx: int, dy: int, frames: int = 5, size: int = 16) -> np.ndarray:
    """[T, H, W, 3]: a white 4x4 square on black moving by (dx, dy) pixels a frame, from (4, 4)."""
    v = np.zeros((frames, size, size, 3), np.float32)
    for t in range(frames):
        x, y = 4 + dx * t, 4 + dy * t
        v[t, y : y + 4, x : x + 4] = 1.0
    return v


def test_motion_measures_the_named_direction():
    assert spec("motion").video
    videos = np.stack([_moving_square(1, 0), _moving_square(-1, 0), _moving_square(0, 2), np.zeros((5, 16, 16, 3))])
    prompts = ["x"] * 4
    right = np.asarray(make_reward("motion", direction="right")(videos, prompts))
    down = np.asarray(make_reward("motion", direction="down")(videos, prompts))
    np.testing.assert_allclose(right[:3], [4 / 16, -4 / 16, 0.0], atol=1e-6)  # 4 px right, 4 px left, none
    np.testing.assert_allclose(down[:3], [0.0, 0.0, 8 / 16], atol=1e-6)
    assert right[3] == 0.0  # a black video does not move
    left = np.asarray(make_reward("motion", direction="left")(videos, prompts))
    np.testing.assert_allclose(left, -right, atol=1e-6)


def test_motion_refuses_bad_input():
    with pytest.raises(ValueError, match="left, right, up, down"):
        make_reward("motion", direction="sideways")
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        make_reward("motion")(np.zeros((1, 8, 8, 3), np.float32), ["x"])
