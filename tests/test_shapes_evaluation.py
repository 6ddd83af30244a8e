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


def _cell(exact, n=64, found=False, diversity=0.1):
    return {
        "n": n,
        "exact": exact,
        "exact_ci": ev.wilson(exact * n, n),
        "reward": exact,
        "rewards": [1.0] * round(exact * n) + [0.0] * (n - round(exact * n)),
        "diversity": diversity,
        "found_exact_during_run": found,
    }


def _search(found, best):
    return {"n": 150, "found_exact": found, "best_reward": best}


def test_aggregate_pools_groups_and_skips_incomplete_methods():
    rows = {
        "a green circle": {
            "group": "rare",
            "base": _cell(0.25),
            "find_paper": _cell(0.75, found=True),
            "find_no_rca": _cell(0.5),
            "best_of_n": _search(True, 1.0),
        },
        "a blue circle": {
            "group": "rare",
            "base": _cell(0.0, diversity=0.3),
            "find_paper": _cell(0.25),
            "best_of_n": _search(False, 0.6),
        },
        "a red circle": {"group": "common", "base": _cell(1.0), "best_of_n": _search(True, 1.0)},
    }
    agg = ev.aggregate(rows)
    rare = agg["rare"]
    assert rare["base"]["exact"] == pytest.approx(0.125) and rare["base"]["prompts"] == 2
    assert rare["find_paper"]["exact"] == pytest.approx(0.5)
    assert "find_no_rca" not in rare  # ran on one of the two rare prompts only
    assert rare["search"] == {"best_of_n": 0.5, "find_paper": 0.5}
    # the reward is pooled over the 128 images (the t-interval lies inside [0, 1]); diversity over the 2 prompts
    assert rare["base"]["reward"] == pytest.approx(0.125) and 0.0 < rare["base"]["reward_ci"][0] < 0.125
    assert rare["base"]["diversity"] == pytest.approx(0.2) and rare["base"]["diversity_ci"][0] < 0.2
    # best-of-N is one image per prompt: its exact alignment is over prompts, and it has no diversity
    bon = rare["best_of_n"]
    assert bon["prompts"] == 2 and bon["exact"] == 0.5 and bon["one_image"] and "diversity" not in bon
    assert bon["exact_ci"] == ev.wilson(1, 2) and bon["reward"] == pytest.approx(0.8)
    assert agg["ablation"]["find_no_rca"]["prompts"] == 1  # the ablation group is the ablated prompts
    assert set(agg["common"]) == {"base", "best_of_n", "search"}
    md = ev.to_markdown(
        {
            "settings": {"n_images": 64, "calls": 150, "steps": 20, "guidance": 5.0, "seed": 0},
            "prompts": rows,
            "aggregate": agg,
        }
    )
    assert "| rare | find_paper | 2 | 0.500 [" in md
    assert "| rare | best_of_n | 2 | 0.500 [" in md and "| one image |" in md
    assert "| a blue circle | rare | 0.00 | 0.25 |  |" in md  # columns: base, find_paper, find_no_rca
    # paired against the base, prompt by prompt: +0.5 and +0.25 -> +0.375, diversity 0.0 and -0.2 -> -0.1
    fp = rare["find_paper"]
    assert fp["vs"] == "base" and fp["exact_diff"] == pytest.approx(0.375)
    assert fp["exact_diff_ci"][0] < 0.375 < fp["exact_diff_ci"][1]
    assert fp["diversity_diff"] == pytest.approx(-0.1)
    assert "exact_diff" not in rare["base"] and "exact_diff" not in rare["best_of_n"]
    assert "| rare | find_paper | base | +0.375 [" in md and "| -0.100 [" in md


def test_the_paired_difference_is_against_the_methods_own_base():
    rows = {
        p: {
            "group": "rare",
            "base": _cell(0.0),
            "base_eta1": _cell(e),
            "find_official": {**_cell(e + 0.25), "base": "base_eta1"},
        }
        for p, e in (("a green circle", 0.25), ("a blue circle", 0.5), ("a white square", 0.0))
    }
    off = ev.aggregate(rows)["rare"]["find_official"]
    assert off["vs"] == "base_eta1" and off["exact_diff"] == pytest.approx(0.25)
    assert off["exact_diff_ci"] == pytest.approx((0.25, 0.25))  # the same gain on every prompt: no spread


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


def test_pairwise_distance_is_zero_for_copies_and_grows_with_difference():
    a = np.zeros((4, 32, 32, 3), np.float32)
    assert ev.pairwise_distance(a) == 0.0
    a[1] = 1.0  # one white image among three black: 3 of the 6 pairs differ by 1 everywhere
    assert ev.pairwise_distance(a) == pytest.approx(0.5)
    assert math.isnan(ev.pairwise_distance(a[:1]))


def test_every_method_spends_the_same_reward_calls():
    for name in ev.EQUAL_CALLS:
        cfg = ev.method_config(ev.KNOWN_METHODS[name], "a green circle", calls=150)
        assert cfg.iterations * cfg.samples_per_iter == 150, name
    n10 = ev.method_config(ev.KNOWN_METHODS["find_n10_lr3e-2"], "a green circle", calls=150)
    assert (n10.iterations, n10.samples_per_iter, n10.replay_size, n10.lr) == (15, 10, 20, 0.03)
    with pytest.raises(ValueError, match="not the evaluation's 150"):
        ev.method_config(ev.parse_method("n7=paper:samples_per_iter=7,replay_size=8"), "a green circle", calls=150)
    with pytest.raises(ValueError, match="not the evaluation's 150"):
        ev.method_config(ev.parse_method("long=paper:iterations=300"), "a green circle", calls=150)


@pytest.mark.slow
def test_evaluate_script_quick_writes_the_equal_calls_table(tmp_path, capsys):
    """`scripts/evaluate_shapes.py --quick` end to end on the shipped model, named by `--model` as a candidate
    would be: every method spends the same calls, the learned distributions are scored on fresh draws, and a
    rerun resumes the finished runs."""
    import json

    from find_jax.shapes_sampler import DEFAULT_MODEL_DIR
    from tests.script_loader import load_script

    script = load_script("evaluate_shapes")
    argv = [
        "--workdir",
        str(tmp_path / "ev"),
        "--quick",
        "--method",
        "find_paper",
        "--method",
        "find_n10=paper:samples_per_iter=10,replay_size=20",
    ]
    argv += ["--method", "find_grid1_lr3e-2", "--batch-prompts", "2", "--model", DEFAULT_MODEL_DIR]
    script.main(argv)
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["settings"]["calls"] == 20 and res["settings"]["model"] == DEFAULT_MODEL_DIR
    rows = res["prompts"]
    assert set(rows) == {ev.RARE[0], ev.COMMON[0]}
    for row in rows.values():
        assert row["best_of_n"]["n"] == 20
        for m in ("find_paper", "find_n10", "find_grid1_lr3e-2"):
            assert row[m]["reward_calls"] == 20 and row[m]["n"] == 4 and len(row[m]["rewards"]) == 4
            assert 0.0 <= row[m]["diversity"] <= 1.0
    metrics = (tmp_path / "ev" / "find_n10" / "000-a-green-circle" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # 2 iterations x 10 samples
    grid = json.loads((tmp_path / "ev" / "find_grid1_lr3e-2" / "000-a-green-circle" / "config.json").read_text())
    assert grid["config"]["mu_grid"] == 1 and grid["config"]["model"] == DEFAULT_MODEL_DIR
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "| rare | best_of_n | 1 |" in md and "| common | find_n10 | 1 |" in md
    script.main(argv)  # resumes: the runs are done, the table is rewritten with the same numbers
    again = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert again["prompts"][ev.RARE[0]]["find_n10"]["exact"] == rows[ev.RARE[0]]["find_n10"]["exact"]
