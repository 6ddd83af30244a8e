"""The testbed-quality measurements (issue 18 (a)-(d)) on a tiny random shapes model."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from script_loader import load_script

from find_jax import shapes_quality as quality
from find_jax.envs.image.decoders import depth_to_space
from find_jax.envs.image.shapes import model as shapes_model
from find_jax.envs.image.shapes import tokenizer as shapes_tokenizer
from find_jax.envs.image.shapes import world
from reward_models import shapes as scorer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_quality")
    model = shapes_model.build_model(shapes_model.tiny_config(), str(root / "tok"))
    params = shapes_model.init_params(model, jax.random.PRNGKey(0))
    out = root / "model"
    shapes_model.save_model(model, params, str(out), {"steps": 0})
    return str(out)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return quality.load_shapes_model(tiny_dir)


def test_wilson_matches_hand_values():
    lo, hi = quality.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = quality.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    p = quality.proportion([True, False, False, True])
    assert p["value"] == 0.5 and p["n"] == 4 and p["lo"] < 0.5 < p["hi"]


def test_perturb_keeps_the_prior():
    rng = np.random.default_rng(0)
    x, z = rng.standard_normal((2, 200_000))
    y = quality.perturb(x, z, 0.1)
    assert np.std(y) == pytest.approx(1.0, abs=0.01)
    assert np.corrcoef(x, y)[0, 1] == pytest.approx(1 / np.sqrt(1.01), abs=1e-3)
    np.testing.assert_array_equal(quality.perturb(x, z, 0.0), x)


def test_halfspace_stability_is_the_closed_form_and_a_half_space_by_monte_carlo():
    from find_jax.stats import halfspace_stability

    rho = 1 / np.sqrt(1.01)
    assert halfspace_stability(0.5, 0.1) == pytest.approx(1 - np.arccos(rho) / np.pi, abs=1e-9)  # Sheppard
    assert halfspace_stability(0.3, 0.1) == pytest.approx(halfspace_stability(0.7, 0.1), abs=1e-9)  # symmetric
    assert halfspace_stability(0.0, 0.1) == halfspace_stability(1.0, 0.1) == halfspace_stability(0.3, 0.0) == 1.0
    assert halfspace_stability(0.3, 0.1) > halfspace_stability(0.3, 0.2)  # larger moves flip more
    assert halfspace_stability(0.05, 0.1) > halfspace_stability(0.3, 0.1) > halfspace_stability(0.5, 0.1)
    rng = np.random.default_rng(0)
    x, z = rng.standard_normal((2, 400_000, 8))
    y = quality.perturb(x, z, 0.1)
    t = -0.5244  # Phi(t) = 0.3: the half-space {x_0 < t}, in 8 dimensions
    mc = np.mean((x[:, 0] < t) == (y[:, 0] < t))
    assert mc == pytest.approx(halfspace_stability(0.3, 0.1), abs=1.5e-3)
    # a set of about the same measure that is not a half-space is less stable (Borell): a diamond in 2 directions
    diamond, diamond_y = (np.abs(v[:, 0]) + np.abs(v[:, 1]) < 0.6 for v in (x, y))
    assert np.mean(diamond == diamond_y) < halfspace_stability(float(diamond.mean()), 0.1) - 0.01
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        halfspace_stability(1.5, 0.1)


def test_one_step_sample_is_cfg_ddim_by_hand(loaded):
    """Steps=1: x0 from the guided v-prediction at t=1, stepped to abar_0 (unconditional first in the batch)."""
    sampler = quality.Sampler(loaded, steps=1, guidance=3.0, chunk=2)
    x = np.random.default_rng(1).standard_normal((2, *loaded.latent_shape)).astype(np.float32)
    got = sampler(x, "a red circle")
    assert got.shape == (2, 32, 32, 3) and got.min() >= 0.0 and got.max() <= 1.0

    ids = shapes_tokenizer.encode(loaded.tokenizer, ["", "a red circle"])
    ctx = loaded.text_encoder(jnp.asarray(ids), params=loaded.params["text_encoder"], train=False)[0]
    ctx = jnp.repeat(ctx, 2, axis=0)  # [u, u, c, c]
    xx = jnp.concatenate([x, x])
    v = loaded.unet.apply({"params": loaded.params["unet"]}, xx, jnp.ones((4,), jnp.int32), ctx).sample
    v = v[:2] + 3.0 * (v[2:] - v[:2])
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    a, ap = abar[1], abar[0]
    x0 = np.sqrt(a) * x - np.sqrt(1 - a) * v
    eps = np.sqrt(a) * v + np.sqrt(1 - a) * x
    prev = np.sqrt(ap) * x0 + np.sqrt(1 - ap) * eps
    want = np.clip(np.asarray(depth_to_space(jnp.asarray(prev[:, :12]), 2)) / 2 + 0.5, 0, 1)
    np.testing.assert_allclose(got, want, atol=2e-4)

    traced = quality.Sampler(loaded, steps=1, guidance=3.0, chunk=2, trace=True)
    got2, x0s = traced(x, "a red circle")
    np.testing.assert_allclose(got2, got, atol=1e-5)  # tracing does not change the sample
    want_x0 = np.clip(np.asarray(depth_to_space(jnp.asarray(x0[:, :12]), 2)) / 2 + 0.5, 0, 1)
    assert x0s.shape == (1, 2, 32, 32, 3)
    np.testing.assert_allclose(x0s[0], want_x0, atol=2e-4)  # the step's x0 prediction, decoded


def test_probe_commit_traces_every_step(tiny_dir, tmp_path, capsys):
    probe = load_script("probe_commit")
    out = tmp_path / "commit.json"
    probe.main(
        [
            "--model",
            tiny_dir,
            "--n",
            "3",
            "--prompt",
            "a red circle",
            "--prompt",
            "two blue squares",
            "--json",
            str(out),
        ]
    )
    res = json.loads(out.read_text())
    steps = len(res["timesteps"])
    assert res["timesteps"] == sorted(res["timesteps"], reverse=True) and steps > 1
    r = res["prompts"]["a red circle"]
    assert len(r["settled"]) == len(r["split"]) == steps and 0.0 <= r["exact"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in r["settled"]) and r["flips"] == len(r["pairs"])
    assert "two blue squares" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        probe.main(["--model", tiny_dir, "--prompt", "a purple circle"])
    with pytest.raises(SystemExit):
        probe.main(["--model", tiny_dir, "--n", "0"])


def test_sampler_is_deterministic_and_chunked(loaded):
    sampler = quality.Sampler(loaded, steps=2, chunk=2)
    x = np.random.default_rng(2).standard_normal((3, *loaded.latent_shape)).astype(np.float32)
    a = sampler(x, "a white circle")
    b = sampler(x[::-1].copy(), "a white circle")
    np.testing.assert_allclose(a, b[::-1], atol=1e-5)  # rows independent of chunk position
    c = sampler(x, "two blue squares")
    assert np.abs(a - c).max() > 0  # the caption conditions the sample


def _square(colour_rgb, size=8, r0=4, c0=6):
    img = np.zeros((32, 32, 3), np.float32)
    img[r0 : r0 + size, c0 : c0 + size] = colour_rgb
    return img


def test_near_threshold_flags_ambiguous_colours_and_shapes():
    clean = _square(world.COLOURS["white"])
    (obj,) = scorer.find_objects(clean)
    assert obj.shape == "square" and not any(quality.near_threshold(clean, obj).values())
    muddy = _square((0.52, 0.52, 0.0))  # almost as close to red, green and black as to yellow
    (obj,) = scorer.find_objects(muddy)
    assert quality.near_threshold(muddy, obj)["colour"]
    at_skew = dataclasses.replace(obj, skew=scorer.TRIANGLE_SKEW * 1.05, gap=0.0)
    flags = quality.near_threshold(muddy, at_skew)
    assert flags["triangle"] and not flags["square"]
    at_gap = dataclasses.replace(obj, skew=0.0, gap=scorer.SQUARE_KURTOSIS_GAP * 0.95)
    assert quality.near_threshold(muddy, at_gap)["square"]
    assert quality.near_threshold(muddy, dataclasses.replace(obj, pixels=scorer.MIN_PIXELS))["size"]


def test_measure_prompts_counts_and_zero_perturbation_is_stable(loaded):
    sampler = quality.Sampler(loaded, steps=2, chunk=2)
    res = quality.measure_prompts(sampler, ["a white circle", "two blue squares"], n=2, seed=0, s=0.0)
    assert all(all(v["stable"]) for v in res.values()) and all(v["pixel_diff"] == 0.0 for v in res.values())
    summary = quality.summarise(
        {"a white circle": res["a white circle"]}, {"two blue squares": res["two blue squares"]}
    )
    assert summary["stability"]["n"] == 4 and summary["stability"]["value"] == 1.0
    assert summary["stability_ceiling"] == 1.0  # s = 0: nothing can flip
    assert summary["rare_exact"]["n"] == 2 and summary["common_exact"]["n"] == 2
    assert summary["flip_causes"] == dict.fromkeys(quality.FLIP_CAUSES, 0)  # nothing flipped
    assert all(v["flip_images"].shape == (0, 2, 32, 32, 3) for v in res.values())
    moved = quality.measure_prompts(sampler, ["a white circle"], n=4, seed=0, s=3.0)["a white circle"]
    assert len(moved["flip_images"]) == len(moved["flips"]) == moved["stable"].count(False)
    flipped = {"a white circle": {**res["a white circle"], "flips": ["count", "shape", "count"]}}
    assert quality.summarise(flipped, {})["flip_causes"] == {"count": 2, "colour": 0, "shape": 1, "layout": 0}


def test_summary_reports_each_prompts_stability_ceiling():
    def result(exact, stable):
        return {"exact": exact, "stable": stable, "flips": [], "near": [], "pixel_diff": 0.0, "s": 0.1}

    rare = {"a white circle": result([True, False] * 4, [True] * 7 + [False])}  # exact 0.5
    common = {"two blue squares": result([True] * 8, [True] * 8)}  # exact 1.0: nothing to flip
    summary = quality.summarise(rare, common)
    half = 1 - np.arccos(1 / np.sqrt(1.01)) / np.pi
    assert summary["per_prompt"]["a white circle"]["ceiling"] == pytest.approx(half)
    assert summary["per_prompt"]["two blue squares"]["ceiling"] == 1.0
    assert summary["stability_ceiling"] == pytest.approx((half + 1) / 2)
    assert summary["stability"]["value"] == 15 / 16
    assert "(ceiling 0.968)" in quality.format_report({**summary, "model_dir": "m", "steps": 2, "guidance": 2, "n": 8})


def test_flipped_pairs_are_written_side_by_side(tmp_path):
    from PIL import Image

    red, white = np.zeros((32, 32, 3), np.float32), np.ones((32, 32, 3), np.float32)
    red[..., 0] = 1.0
    results = [{"flip_images": np.stack([[red, white]] * 3)}, {"flip_images": np.zeros((0, 2, 32, 32, 3))}]
    assert quality.write_flip_pairs(results, str(tmp_path / "f.png")) == 3
    grid = np.asarray(Image.open(tmp_path / "f.png"))
    assert grid.shape == (34 * 4, 6 * 34 * 4, 3)  # one row of 3 pairs, 2 px borders, 4x
    assert (grid[70, 70] == (255, 0, 0)).all() and (grid[70, 34 * 4 + 70] == 255).all()  # image, then perturbed
    assert quality.write_flip_pairs(results[1:], str(tmp_path / "none.png")) == 0
    assert not (tmp_path / "none.png").exists()


def test_flip_cause_names_the_first_difference():
    def obj(colour, shape, x=8.0):
        return scorer.FoundObject(colour, shape, (x, 8.0), (4, 4, 8, 8), 40, 0.6)

    red_circle = obj("red", "circle")
    assert quality.flip_cause([red_circle], [red_circle, obj("red", "circle", 20.0)]) == "count"
    assert quality.flip_cause([red_circle], [obj("white", "circle")]) == "colour"
    assert quality.flip_cause([red_circle], [obj("white", "square")]) == "colour"  # the first that holds
    assert quality.flip_cause([red_circle], [obj("red", "square")]) == "shape"
    assert quality.flip_cause([red_circle], [obj("red", "circle", 20.0)]) == "layout"


def test_script_prints_the_four_figures(tiny_dir, capsys, tmp_path):
    script = load_script("measure_shapes")
    out = tmp_path / "m.json"
    script.main(
        ["--model", tiny_dir, "--n", "1", "--steps", "2", "--json", str(out), "--flips", str(tmp_path / "f.png")]
    )
    text = capsys.readouterr().out
    tags = ("(a) label stability", "ceiling at these exact shares", "flips by cause", "(b) objects near")
    for tag in (*tags, "(c) common exact", "(d) rare exact"):
        assert tag in text
    assert out.exists()
    script.main(["--model", tiny_dir, "--n", "1", "--steps", "2", "--no-quality", "--controls", "--n-search", "2"])
    text = capsys.readouterr().out
    assert "positive controls" in text and "(a) label stability" not in text
    with pytest.raises(SystemExit):
        script.main(["--model", tiny_dir, "--n", "0"])


def test_colour_shift_moves_each_folded_channel_towards_the_colour():
    mu = quality.colour_shift((14, 16, 16), "yellow", 0.5)
    np.testing.assert_allclose(mu[:12, 0, 0], [0.5, 0.5, -0.5] * 4)
    assert np.all(mu[12:] == 0.0)  # coordinate planes untouched
    img = np.asarray(depth_to_space(jnp.asarray(mu[None, :12]), 2))[0]
    np.testing.assert_allclose(img[3, 5], [0.5, 0.5, -0.5])  # every pixel shifted towards yellow


def test_contrast_shift_moves_only_the_channels_that_tell_the_colours_apart():
    mu = quality.colour_shift((14, 16, 16), "red", 0.5, against="yellow")  # red and yellow differ in green only
    np.testing.assert_allclose(mu[:12, 0, 0], [0.0, -0.5, 0.0] * 4)
    np.testing.assert_allclose(quality.colour_shift((14, 4, 4), "white", 1.0, against="red")[:3, 1, 2], [0, 1, 1])
    np.testing.assert_allclose(  # yellow is blue's opposite: the contrast is the whole colour shift
        quality.colour_shift((14, 4, 4), "yellow", 1.0, against="blue"), quality.colour_shift((14, 4, 4), "yellow", 1.0)
    )
    assert not quality.colour_shift((14, 4, 4), "red", 1.0, against="red").any()


def test_fit_exact_uses_only_aligned_draws():
    x = np.arange(12, dtype=np.float32).reshape(4, 3, 1, 1)
    mu, sigma = quality.fit_exact(x, [True, False, True, False])
    np.testing.assert_allclose(mu[:, 0, 0], [3.0, 4.0, 5.0])
    np.testing.assert_allclose(sigma[:, 0, 0], np.std([[0, 1, 2], [6, 7, 8]], axis=0, ddof=1))
    assert quality.fit_exact(x, [True, False, False, False]) is None


class _BrightSampler:
    """Draws a white circle when the mean of x_T's image channels is above 0.5, else a black image."""

    def __init__(self):
        self.model = dataclasses.make_dataclass("M", ["latent_shape", "factor"])((14, 16, 16), 2)

    def __call__(self, x, prompt):
        img = np.zeros((len(x), 32, 32, 3), np.float32)
        circle = world.render([world.ShapeObject("circle", "white", 10, 10, 10)])
        img[x[:, :12].mean(axis=(1, 2, 3)) > 0.5] = circle
        return img


def test_positive_control_registers_a_known_improvement():
    res = quality.positive_control(_BrightSampler(), ["a white circle"], n_search=8, n_eval=16, shifts=(0.25, 1.0))
    assert res["pooled"]["base"]["value"] == 0.0 and res["pooled"]["shift_1"]["value"] == 1.0
    assert res["pooled"]["shift_0.25"]["value"] == 0.0  # too small a shift: mean of x_T stays under 0.5
    # no aligned search draw: the prior is kept; the selection sample picks the shift that works
    assert res["separated"] == {"exact_fit": False, "shift_0.25": False, "shift_1": True, "selected": True}
    assert res["per_prompt"]["a white circle"]["chosen"] == "shift_1"
    assert res["per_prompt"]["a white circle"]["search"] == 0.0
    assert "shift_1" in quality.format_control(res)


def test_positive_control_contrast_candidates_and_the_prior_they_reuse():
    calls = []

    class Counting(_BrightSampler):
        def __call__(self, x, prompt):
            calls.append(prompt)
            return super().__call__(x, prompt)

    prompts = ["a white circle", "a red circle"]
    res = quality.positive_control(Counting(), prompts, n_search=8, n_eval=16, shifts=(0.25, 1.0), contrast=True)
    white = res["per_prompt"]["a white circle"]
    # white vs red differs in green and blue: the contrast's channel mean is 2/3 s, over 0.5 at s = 1 only
    assert white["contrast_1"] == 1.0 and white["contrast_0.25"] == 0.0 and white["chosen"] == "shift_1"
    red = res["per_prompt"]["a red circle"]
    assert red["contrast_1"] == red["base"] == 0.0  # red is the circle's usual colour: the contrast is the prior
    # per prompt: the search sample, then selection + evaluation for base and two shifts (no search draw is
    # exact, so exact_fit is the prior); the white circle's two contrasts add two pairs, the red circle's are
    # the prior's draws (not sampled again)
    assert calls.count("a white circle") == 1 + 2 * 5 and calls.count("a red circle") == 1 + 2 * 3
    assert res["contrast"] is True and "contrast_1" in quality.format_control(res)


def test_positive_control_selection_keeps_the_prior_when_nothing_beats_it():
    class Never(_BrightSampler):
        def __call__(self, x, prompt):
            return np.zeros((len(x), 32, 32, 3), np.float32)

    res = quality.positive_control(Never(), ["a white circle"], n_search=4, n_eval=8, shifts=(1.0,))
    assert res["per_prompt"]["a white circle"]["chosen"] == "base"  # ties go to the prior
    assert res["separated"]["selected"] is False


def test_left_share_has_its_optimum_when_everything_is_left():
    left = world.render([world.ShapeObject("square", "white", 4, 2, 8)])
    right = world.render([world.ShapeObject("square", "white", 4, 20, 8)])
    both = left + right
    r = quality.left_share(np.stack([left, right, both, np.zeros_like(left)]))
    np.testing.assert_allclose(r, [1.0, 0.0, 0.5, 0.5], atol=1e-6)


def test_find_control_runs_find_and_scores_the_learned_distribution(tiny_dir, tmp_path):
    res = quality.find_control(tiny_dir, str(tmp_path / "run"), preset="tiny", n_eval=4, iterations=2, steps=2)
    for k in ("base", "find"):
        assert 0.0 <= res[k]["mean"] <= 1.0 and res[k]["lo"] <= res[k]["mean"] <= res[k]["hi"]
        assert res[k]["at_optimum"]["n"] == 4
    assert (tmp_path / "run" / "config.json").exists() and res["sigma_mean"] > 0


def test_default_model_dir_is_the_shipped_model():
    from find_jax.envs import shipped_model_dir

    assert os.path.samefile(quality.DEFAULT_MODEL_DIR, shipped_model_dir())


def test_caption_reward_scores_against_the_target_not_the_prompt():
    left = world.render([world.ShapeObject("circle", "red", 10, 2, 9)])
    right = world.render([world.ShapeObject("circle", "red", 10, 20, 9)])
    r = quality.caption_reward("a red circle on the left")(np.stack([left, right]), ["a red circle"] * 2)
    assert r[0] == 1.0 and r[1] < 1.0
    with pytest.raises(ValueError, match="not in the shapes-world grammar"):
        quality.caption_reward("a red dog")


def test_find_control_with_a_target_caption_and_config_fields(tiny_dir, tmp_path):
    res = quality.find_control(
        tiny_dir, str(tmp_path / "t"), target="a red circle on the left", preset="tiny", n_eval=4, iterations=2,
        steps=2, mu_grid=1, lr=0.03,
    )  # fmt: skip
    assert res["config"]["target"] == "a red circle on the left" and res["config"]["mu_grid"] == 1
    from find_jax.rundir import load_state

    mu = np.asarray(load_state(tmp_path / "t").policy.mu)
    assert np.allclose(mu, mu[:, :1, :1])  # mu_grid=1: one mean per channel
    assert 0.0 <= res["find"]["mean"] <= 1.0 and res["find"]["at_optimum"]["n"] == 4
