"""The shapes-world evaluation's bookkeeping: method specs, intervals, pooling, tables (no model runs)."""

import math

import numpy as np
import pytest

from find_jax import evaluate_shapes as ev


def test_known_methods_and_ablations():
    assert ev.parse_method("find_paper") == ev.Method("find_paper", "paper")
    no_rca = ev.parse_method("find_no_rca")
    assert no_rca.ablation and no_rca.preset == "paper" and dict(no_rca.overrides) == {"use_rca": False}
    assert set(ev.ABLATION) <= set(ev.RARE) and len(ev.ABLATION) == 6
    assert not set(ev.TUNING) & (set(ev.RARE) | set(ev.COMMON))  # tuning prompts never enter the evaluation


def test_parse_method_spec_reads_json_values():
    m = ev.parse_method("fast=paper:lr=0.03,samples_per_iter=2,use_drcm=false,sigma_param=softplus")
    assert m.name == "fast" and m.preset == "paper" and not m.ablation
    assert dict(m.overrides) == {"lr": 0.03, "samples_per_iter": 2, "use_drcm": False, "sigma_param": "softplus"}
    assert ev.parse_method("plain=official") == ev.Method("plain", "official")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nonsense", "neither a known method"),
        ("x=", "neither a known method"),
        ("x=nopreset:lr=1", "unknown preset 'nopreset'"),
        ("x=paper:lr", "is not FIELD=VALUE"),
    ],
)
def test_parse_method_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        ev.parse_method(spec)


def test_wilson_interval():
    lo, hi = ev.wilson(0, 64)
    assert lo == 0.0 and 0.04 < hi < 0.07  # the upper bound of 0/64 is ~5.7%
    lo, hi = ev.wilson(32, 64)
    assert lo < 0.5 < hi and math.isclose(0.5 - lo, hi - 0.5, rel_tol=1e-9)
    assert all(math.isnan(v) for v in ev.wilson(0, 0))


def _cell(exact, n=64, found=False):
    return {
        "n": n,
        "exact": exact,
        "exact_ci": ev.wilson(exact * n, n),
        "reward": exact,
        "found_exact_during_run": found,
    }


def test_aggregate_pools_groups_and_skips_incomplete_methods():
    rows = {
        "a green circle": {
            "group": "rare",
            "base": _cell(0.25),
            "find_paper": _cell(0.75, found=True),
            "find_no_rca": _cell(0.5),
            "best_of_n": {"found_exact": True},
        },
        "a blue circle": {
            "group": "rare",
            "base": _cell(0.0),
            "find_paper": _cell(0.25),
            "best_of_n": {"found_exact": False},
        },
        "a red circle": {"group": "common", "base": _cell(1.0), "best_of_n": {"found_exact": True}},
    }
    agg = ev.aggregate(rows)
    rare = agg["rare"]
    assert rare["base"]["exact"] == pytest.approx(0.125) and rare["base"]["prompts"] == 2
    assert rare["find_paper"]["exact"] == pytest.approx(0.5)
    assert "find_no_rca" not in rare  # ran on one of the two rare prompts only
    assert rare["search"] == {"best_of_n": 0.5, "find_paper": 0.5}
    assert agg["ablation"]["find_no_rca"]["prompts"] == 1  # the ablation group is the ablated prompts
    assert set(agg["common"]) == {"base", "search"}
    md = ev.to_markdown(
        {
            "settings": {"n_images": 64, "iterations": 150, "steps": 20, "guidance": 5.0, "seed": 0},
            "prompts": rows,
            "aggregate": agg,
        }
    )
    assert "| rare | find_paper | 2 | 0.500 [" in md
    assert "| a blue circle | rare | 0.00 | 0.25 |  |" in md  # columns: base, find_paper, find_no_rca


def test_interleave_keeps_both_sets_early():
    out = ev._interleave(["r1", "r2", "r3"], ["c1", "c2"])
    assert out == ["r1", "r2", "c1", "r3", "c2"]


def test_score_images_on_rendered_scenes():
    """Ground-truth renders are exactly aligned with their own captions and not with a wrong colour."""
    from find_jax.envs.image.shapes import world

    rng = np.random.default_rng(0)
    objects, caption = world.sample_scene(rng)
    images = np.stack([world.render(objects)] * 3)
    s = ev.score_images(images, caption.text())
    assert s.summary()["exact"] == 1.0 and s.exact.shape == (3,)
    wrong = next(c for c in world.COLOURS if c != caption.colour)
    other = world.Caption("plain", wrong, caption.shape).text()
    assert not ev.score_images(images[:1], other).exact.any()
