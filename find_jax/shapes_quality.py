"""Is the shapes model a testbed that can tell? Label stability, threshold margins and alignment (issue 18).

For a model directory (default: the shipped one) and the tuning prompts (never the evaluation sets,
DESIGN.md §11), with the model's own sampler settings (DDIM, ``find_defaults.json``: 20 steps, CFG 2, eta 0):

(a) **label stability**: the share of draws whose exact label (aligned or not) is unchanged when
    ``x_T -> (x_T + s z) / sqrt(1 + s^2)`` with ``s = 0.1`` (a nearby x_T of the same prior), with each flip's
    cause (:func:`flip_cause`: the object count, the colours, the shapes or only the layout changed), and its
    ceiling: a prompt aligned on a share p of x_T is at most ``stats.halfspace_stability(p, s)`` stable under
    any model (Borell: half-spaces of x_T are the most noise-stable sets; 0.972 at p = 0.3, 0.968 at p = 0.5);
(b) **threshold margins**: the share of found objects whose scorer features lie within 10% of a threshold
    (pixel colour: the nearest palette colour's distance within 10% of the second nearest, over the object's
    pixels; shape: vertical skewness within ``0.1 * |TRIANGLE_SKEW|`` of it, kurtosis gap within
    ``0.1 * SQUARE_KURTOSIS_GAP`` of it; size: pixels within 10% of ``MIN_PIXELS``);
(c) exact alignment on the common tuning captions (``TUNING_COMMON``);
(d) exact alignment on the rare tuning captions (``TUNING``);

each with a 95% Wilson interval. The model is loaded and sampled by :mod:`find_jax.shapes_sampler` (re-exported
here: ``load_shapes_model``, ``Sampler``, ``DEFAULT_MODEL_DIR``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from find_jax.envs.image.shapes import world
from find_jax.evaluate_shapes import TUNING, TUNING_COMMON  # the tuning prompts, defined once
from find_jax.shapes_sampler import DEFAULT_MODEL_DIR, Sampler, load_shapes_model  # noqa: F401 (re-exported)
from find_jax.stats import halfspace_stability, wilson
from reward_models import shapes as scorer

NEAR = 0.1  # "near a threshold": within 10% of it


def proportion(flags: Sequence[bool]) -> dict[str, float]:
    """``{"value", "lo", "hi", "n"}`` of a list of flags (Wilson 95%)."""
    n = len(flags)
    k = float(np.sum(flags))
    lo, hi = wilson(k, n)
    return {"value": k / n if n else float("nan"), "lo": lo, "hi": hi, "n": n}


def near_threshold(image: np.ndarray, obj: scorer.FoundObject, near: float = NEAR) -> dict[str, bool]:
    """Which scorer decisions about ``obj`` lie within ``near`` (relative) of their threshold.

    ``colour``: over the object's pixels, the mean ratio (nearest palette distance / second nearest) is above
    ``1 - near``, i.e. the typical pixel is almost as close to another colour; ``triangle``: skewness within
    ``near * |TRIANGLE_SKEW|`` of TRIANGLE_SKEW; ``square``: (non-triangles only) kurtosis gap within
    ``near * SQUARE_KURTOSIS_GAP`` of it; ``size``: pixels within ``near * MIN_PIXELS`` of MIN_PIXELS.
    """
    r0, c0, h, w = obj.bbox
    patch = np.asarray(image, np.float32)[r0 : r0 + h, c0 : c0 + w]
    labels = scorer.classify_pixels(patch)
    k = scorer.PALETTE_NAMES.index(obj.colour)
    px = patch[labels == k]
    d = np.sqrt(((px[:, None, :] - scorer.PALETTE[None]) ** 2).sum(-1))  # [P, 7]
    d.sort(axis=1)
    ratio = float(np.mean(d[:, 0] / np.maximum(d[:, 1], 1e-9))) if len(px) else 0.0
    tri = abs(obj.skew - scorer.TRIANGLE_SKEW) <= near * abs(scorer.TRIANGLE_SKEW)
    sq = obj.skew >= scorer.TRIANGLE_SKEW and abs(obj.gap - scorer.SQUARE_KURTOSIS_GAP) <= near * abs(
        scorer.SQUARE_KURTOSIS_GAP
    )
    return {
        "colour": ratio > 1.0 - near,
        "triangle": bool(tri),
        "square": bool(sq),
        "size": abs(obj.pixels - scorer.MIN_PIXELS) <= near * scorer.MIN_PIXELS,
    }


def perturb(x_t: np.ndarray, z: np.ndarray, s: float) -> np.ndarray:
    """``(x_T + s z) / sqrt(1 + s^2)``: a nearby draw of the same N(0, I) prior."""
    return (x_t + s * z) / np.sqrt(1.0 + s * s)


FLIP_CAUSES = ("count", "colour", "shape", "layout")  # what changed when a label flipped (flip_cause)


def flip_cause(a: Sequence[scorer.FoundObject], b: Sequence[scorer.FoundObject]) -> str:
    """Why two scorings of nearby images differ, the first that holds of: ``count`` (objects found), ``colour``
    (the multiset of colours), ``shape`` (of shapes), else ``layout`` (the same objects, placed differently)."""
    if len(a) != len(b):
        return "count"
    if sorted(o.colour for o in a) != sorted(o.colour for o in b):
        return "colour"
    if sorted(o.shape for o in a) != sorted(o.shape for o in b):
        return "shape"
    return "layout"


def measure_prompts(sampler: Sampler, prompts: Sequence[str], *, n: int, seed: int, s: float = 0.1) -> dict[str, Any]:
    """Samples ``n`` x_T per prompt and their perturbations; per-prompt flags for (a)-(d)."""
    shape = sampler.model.latent_shape
    per_prompt = {}
    for i, p in enumerate(prompts):
        rng = np.random.default_rng([seed, i])
        x_t = rng.standard_normal((n, *shape)).astype(np.float32)
        z = rng.standard_normal((n, *shape)).astype(np.float32)
        imgs = sampler(x_t, p)
        imgs2 = sampler(perturb(x_t, z, s), p)
        sc = scorer.score_batch(imgs, [p] * n)
        sc2 = scorer.score_batch(imgs2, [p] * n)
        near = [near_threshold(im, o) for im, r in zip(imgs, sc, strict=True) for o in r.details["objects"]]
        flipped = [bool(a.exact != b.exact) for a, b in zip(sc, sc2, strict=True)]
        per_prompt[p] = {
            "exact": [bool(r.exact) for r in sc],
            "stable": [not f for f in flipped],
            "flips": [
                flip_cause(a.details["objects"], b.details["objects"])
                for a, b, f in zip(sc, sc2, flipped, strict=True)
                if f
            ],
            "near": near,
            "pixel_diff": float(np.mean(np.abs(imgs - imgs2))),
            "s": s,
            # [F, 2, 32, 32, 3]: each flipped draw's image and its perturbed image (for a look, not for JSON)
            "flip_images": np.stack([imgs, imgs2], 1)[np.asarray(flipped, bool)],
        }
    return per_prompt


def write_flip_pairs(results: Sequence[dict[str, Any]], path: str) -> int:
    """Writes the ``flip_images`` of :func:`measure_prompts` results as one PNG (pairs side by side, four a row,
    4x nearest-neighbour); returns how many pairs (nothing is written when none flipped)."""
    from find_jax.report import save_grid

    pairs = np.concatenate([r["flip_images"] for r in results])
    if len(pairs):
        save_grid(pairs.reshape(-1, *pairs.shape[2:]), path, columns=8, scale=4)
    return len(pairs)


def summarise(rare: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """Pools :func:`measure_prompts` results into the four figures (each a Wilson proportion)."""
    both = {**rare, **common}
    near = [d for v in both.values() for d in v["near"]]
    # Borell's ceiling of each prompt's stability at its own exact share (stats.halfspace_stability)
    ceiling = {p: halfspace_stability(float(np.mean(v["exact"])), v["s"]) for p, v in both.items()}
    weights = [len(v["stable"]) for v in both.values()]
    out = {
        "stability": proportion([f for v in both.values() for f in v["stable"]]),
        "stability_ceiling": float(np.average(list(ceiling.values()), weights=weights)),
        "near": {k: proportion([d[k] for d in near]) for k in ("colour", "triangle", "square", "size")},
        "near_any": proportion([any(d.values()) for d in near]),
        "common_exact": proportion([f for v in common.values() for f in v["exact"]]),
        "rare_exact": proportion([f for v in rare.values() for f in v["exact"]]),
        "pixel_diff": float(np.mean([v["pixel_diff"] for v in both.values()])),
        "flip_causes": {c: sum(v["flips"].count(c) for v in both.values()) for c in FLIP_CAUSES},
        "per_prompt": {
            p: {"exact": float(np.mean(v["exact"])), "stable": float(np.mean(v["stable"])), "ceiling": ceiling[p]}
            for p, v in both.items()
        },
    }
    return out


def measure_model(
    model_dir: str = DEFAULT_MODEL_DIR,
    *,
    n: int = 64,
    seed: int = 123,
    steps=None,
    guidance=None,
    rare: Sequence[str] = TUNING,
    common: Sequence[str] = TUNING_COMMON,
    chunk: int = 32,
    flips_png: str | None = None,
) -> dict[str, Any]:
    """(a)-(d) of the module docstring for the model in ``model_dir``; ``flips_png``: also write every flipped
    draw there as a pair (its image, then the perturbed one), four pairs a row, prompt by prompt."""
    sampler = Sampler(load_shapes_model(model_dir), steps=steps, guidance=guidance, chunk=min(chunk, n))
    rare_res = measure_prompts(sampler, rare, n=n, seed=seed)
    common_res = measure_prompts(sampler, common, n=n, seed=seed + 1)
    res = summarise(rare_res, common_res)
    if flips_png:
        res["flips_written"] = write_flip_pairs([*rare_res.values(), *common_res.values()], flips_png)
    res.update({"model_dir": model_dir, "n": n, "seed": seed, "steps": sampler.steps, "guidance": sampler.guidance})
    return res


def format_report(res: dict[str, Any]) -> str:
    """The four figures as text lines (value [95% interval])."""

    def f(p):
        return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] (n={p['n']})"

    lines = [
        f"model {res['model_dir']}: {res['steps']} DDIM steps, CFG {res['guidance']}, {res['n']} x_T per prompt",
        f"(a) label stability, s=0.1:   {f(res['stability'])}   (target >= 0.97)",
        f"    ceiling at these exact shares (half-spaces, Borell): {res['stability_ceiling']:.3f}",
        f"    mean |pixel difference| under the perturbation: {res['pixel_diff']:.4f}",
        "    flips by cause: " + ", ".join(f"{k} {v}" for k, v in res["flip_causes"].items()),
        f"(b) objects near a threshold: {f(res['near_any'])}",
    ]
    lines += [f"      {k:9s} {f(v)}" for k, v in res["near"].items()]
    lines += [
        f"(c) common exact:             {f(res['common_exact'])}   (target >= 0.90)",
        f"(d) rare exact:               {f(res['rare_exact'])}   (target <= 0.30)",
    ]
    lines += [
        f"    {p}: exact {v['exact']:.2f}, stable {v['stable']:.2f} (ceiling {v['ceiling']:.3f})"
        for p, v in res["per_prompt"].items()
    ]
    return "\n".join(lines)


# --- Positive controls (issue 18, item 2): a testbed must register a known improvement as one ----------------


def colour_shift(
    latent_shape: tuple[int, int, int], colour: str, s: float, *, factor: int = 2, against: str | None = None
) -> np.ndarray:
    """``mu [C, h, w]``: ``s * (2 rgb - 1)`` of the named world colour on every folded image channel, 0 on the
    coordinate planes (channel ``(dy * f + dx) * 3 + c`` holds colour ``c``; ``decoders.space_to_depth``).

    With ``against`` (a *contrast* shift), ``s * ((2 rgb - 1) - (2 rgb' - 1)) / 2`` instead: the same shift on
    the colour channels where the named colour differs from ``against`` (e.g. the shape's dominant colour in
    training) and 0 on those they share, so the noise moves only along what tells the two colours apart.
    """
    rgb = 2.0 * np.asarray(world.COLOURS[colour], np.float32) - 1.0
    if against is not None:
        rgb = (rgb - (2.0 * np.asarray(world.COLOURS[against], np.float32) - 1.0)) / 2.0
    mu = np.zeros(latent_shape, np.float32)
    n_img = 3 * factor * factor
    for k in range(n_img):
        mu[k] = s * rgb[k % 3]
    return mu


def fit_exact(x_t: np.ndarray, exact: Sequence[bool]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mu, sigma)`` per element of the exactly aligned draws among ``x_t [N, C, h, w]`` (None under two)."""
    good = np.asarray(x_t)[np.asarray(exact, bool)]
    if len(good) < 2:
        return None
    return good.mean(axis=0), good.std(axis=0, ddof=1)


def positive_control(
    sampler: Sampler,
    prompts: Sequence[str] = TUNING,
    *,
    n_search: int = 150,
    n_eval: int = 64,
    seed: int = 7,
    shifts: Sequence[float] = (0.5, 1.0),
    contrast: bool = False,
) -> dict[str, Any]:
    """Exact alignment of ``n_eval`` fresh draws from known-better Gaussians against the prior, per prompt.

    Candidates (all drawn with the same ``z``):

    * ``base``: ``z ~ N(0, I)``;
    * ``exact_fit``: ``mu + sigma * z`` with the per-element mean and spread of the exactly aligned draws among
      ``n_search`` prior draws (as many as FIND's reward calls; a prompt with under two keeps the prior);
    * ``shift_S``: ``z + colour_shift(colour of the caption's first object, S)`` for each ``S`` in ``shifts``
      (README: a coherent shift towards the named colour);
    * ``contrast_S`` (with ``contrast``): ``z + colour_shift(colour, S, against=the shape's dominant colour)``,
      the shift on only the channels that tell the named colour from the one training drew that shape in; a
      caption in its shape's dominant colour gets the prior (the contrast is 0);
    * ``selected``: per prompt, the candidate with the most exact images on a separate *selection* sample of
      ``n_eval`` draws (ties go to the earlier candidate, ``base`` first), scored on the evaluation draws. This is
      the known-good distribution of the control: chosen on data the evaluation never sees.

    Pooled proportions carry Wilson 95% intervals; ``separated`` says the interval of a control lies wholly above
    the base's.
    """
    shape = sampler.model.latent_shape
    names = ["base", "exact_fit", *(f"shift_{s:g}" for s in shifts)]
    names += [f"contrast_{s:g}" for s in shifts] if contrast else []
    flags: dict[str, dict[str, list[bool]]] = {k: {} for k in (*names, "selected")}
    searched, chosen = {}, {}
    for i, p in enumerate(prompts):
        rng = np.random.default_rng([seed, i])
        x_s = rng.standard_normal((n_search, *shape)).astype(np.float32)
        z = rng.standard_normal((n_eval, *shape)).astype(np.float32)
        z_sel = rng.standard_normal((n_eval, *shape)).astype(np.float32)
        ex_s = [r.exact for r in scorer.score_batch(sampler(x_s, p), [p] * n_search)]
        searched[p] = float(np.mean(ex_s))
        fit = fit_exact(x_s, ex_s)
        cap = world.parse_caption(p)
        colour, factor = cap.colour, sampler.model.factor
        mu_fit, sd_fit = (np.zeros(shape, np.float32), np.ones(shape, np.float32)) if fit is None else fit
        moves = {"base": (0.0, 1.0), "exact_fit": (mu_fit, sd_fit)}  # name -> (mu, sigma) of mu + sigma z
        for s in shifts:
            moves[f"shift_{s:g}"] = (colour_shift(shape, colour, s, factor=factor), 1.0)
        for s in shifts if contrast else ():
            against = world.DOMINANT_COLOUR[cap.shape]
            moves[f"contrast_{s:g}"] = (colour_shift(shape, colour, s, factor=factor, against=against), 1.0)

        def exact(x, p=p):
            return [bool(r.exact) for r in scorer.score_batch(sampler(x, p), [p] * len(x))]

        # a move equal to the prior (a zero contrast) is the prior: its draws are the base's, not sampled again
        same = {
            k: k != "base" and np.all(np.asarray(m) == 0) and np.all(np.asarray(sd) == 1)
            for k, (m, sd) in moves.items()
        }
        on_sel, out = {}, {}
        for k, (m, sd) in moves.items():
            on_sel[k] = on_sel["base"] if same[k] else float(np.mean(exact(m + sd * z_sel)))
            out[k] = out["base"] if same[k] else exact(m + sd * z)
        chosen[p] = max(names, key=lambda k: (on_sel[k], -names.index(k)))
        for k in moves:
            flags[k][p] = out[k]
        flags["selected"][p] = flags[chosen[p]][p]
    pooled = {k: proportion([f for v in d.values() for f in v]) for k, d in flags.items()}
    return {
        "pooled": pooled,
        "separated": {k: pooled[k]["lo"] > pooled["base"]["hi"] for k in pooled if k != "base"},
        "per_prompt": {
            p: {k: float(np.mean(flags[k][p])) for k in flags} | {"search": searched[p], "chosen": chosen[p]}
            for p in prompts
        },
        "n_search": n_search,
        "n_eval": n_eval,
        "shifts": list(shifts),
        "contrast": contrast,
    }


def format_control(res: dict[str, Any]) -> str:
    """The positive-control table as text."""
    lines = [f"positive controls ({res['n_eval']} fresh draws per prompt; fit on {res['n_search']} prior draws)"]
    for k, p in res["pooled"].items():
        sep = "" if k == "base" else ("  above base: yes" if res["separated"][k] else "  above base: no")
        lines.append(f"  {k:12s} {p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] (n={p['n']}){sep}")
    for p, v in res["per_prompt"].items():
        lines.append(
            f"    {p}: " + ", ".join(f"{k} {x:.2f}" if isinstance(x, float) else f"{k} {x}" for k, x in v.items())
        )
    return "\n".join(lines)


def left_share(images: Any, prompts: Sequence[str] | None = None) -> np.ndarray:
    """Reward with a known optimum: the share of the image's luma mass in its left half, ``[B]`` in [0, 1].

    1.0 exactly when everything drawn lies left of the midline (reachable: the model places objects "on the
    left"); an empty image scores 0.5. ``prompts`` are ignored (the reward contract's second argument).
    """
    del prompts
    x = np.asarray(images, np.float32)
    luma = x @ np.array([0.299, 0.587, 0.114], np.float32)  # [B, H, W]
    total = luma.sum(axis=(1, 2))
    left = luma[:, :, : x.shape[2] // 2].sum(axis=(1, 2))
    return np.where(total > 1e-6, left / np.maximum(total, 1e-6), 0.5).astype(np.float32)


def caption_reward(target: str):
    """Reward with a known, reachable optimum: the shapes scorer's partial credit of the images against the fixed
    caption ``target`` (whatever the prompt), ``[B]`` in [0, 1]; 1.0 exactly when an image is aligned with
    ``target``. With prompt ``a red circle`` and target ``a red circle on the left`` the optimum is a layout the
    model draws on its own for about half of the prior's x_T, so a Gaussian over x_T that reaches it exists."""
    world.parse_caption(target)  # refuses a caption outside the grammar now, not at the first reward call

    def reward_fn(images: Any, prompts: Sequence[str] | None = None) -> np.ndarray:
        del prompts
        x = np.asarray(images, np.float32)
        return np.array([s.reward for s in scorer.score_batch(x, [target] * len(x))], np.float32)

    return reward_fn


def find_control(
    model_dir: str,
    workdir: str,
    *,
    prompt: str = "a red circle",
    target: str | None = None,
    preset: str = "paper",
    n_eval: int = 64,
    seed: int = 11,
    **overrides: Any,
) -> dict[str, Any]:
    """Positive control (ii): FIND for ``prompt`` on a reward whose optimum (1.0) is known: :func:`left_share`, or
    with ``target`` the :func:`caption_reward` of that caption; then ``n_eval`` fresh draws of the learned
    ``N(mu, sigma^2)`` against the prior with the same ``z``: mean reward with a 95% normal interval, and the share
    of draws at the optimum (reward > 0.99, Wilson). ``overrides``: FindConfig fields."""
    from find_jax import loop
    from find_jax.envs import load_model, make_environment, sampler_settings
    from find_jax.optimize import make_config
    from find_jax.policy import sigma_fn

    # the model's find_defaults.json (steps, CFG) under the preset, as `find-jax optimize` would run it
    config = make_config(preset, prompt=prompt, model=model_dir, seed=seed, **overrides)
    env = make_environment(load_model(model_dir), sampler_settings(config), mesh=None)
    reward_fn = left_share if target is None else caption_reward(target)
    state = loop.optimize_one(config, workdir, env=env, reward_fn=reward_fn)
    mu = np.asarray(state.policy.mu, np.float32)
    sigma = np.asarray(sigma_fn(state.policy.sigma_raw, sigma_param=state.sigma_param, sigma_min=state.sigma_min))
    sampler = Sampler(
        load_shapes_model(model_dir), steps=config.steps, guidance=config.guidance, eta=config.eta, chunk=32
    )
    z = np.random.default_rng([seed, 1]).standard_normal((n_eval, *mu.shape)).astype(np.float32)
    out = {}
    for name, x in {"base": z, "find": mu + sigma * z}.items():
        r = reward_fn(sampler(x, prompt))
        half = 1.96 * float(r.std(ddof=1)) / math.sqrt(len(r))
        out[name] = {
            "mean": float(r.mean()),
            "lo": float(r.mean()) - half,
            "hi": float(r.mean()) + half,
            "at_optimum": proportion(list(r > 0.99)),
        }
    out["mu_abs"] = float(np.abs(mu).mean())
    out["sigma_mean"] = float(sigma.mean())
    out["config"] = {"preset": preset, "prompt": prompt, "target": target or "left_share", **overrides}
    return out
