"""Measures whether a shapes model is a testbed that can tell (issue 18, (a)-(d)) on the tuning prompts.

    python scripts/measure_shapes.py [--model DIR] [--n 64] [--json OUT.json] [--flips PAIRS.png] [--controls]

Prints label stability under ``x_T -> (x_T + 0.1 z) / sqrt(1.01)``, the share of found objects near a scorer
threshold, and exact alignment of the common and rare tuning captions, each with a 95% Wilson interval
(``find_jax.shapes_quality``). The default model is the shipped one. ``--controls`` adds the positive
controls: do Gaussians known to be better (the spread of the aligned draws among 150, a shift towards the named
colour) register as better on the rare tuning prompts?
"""

from __future__ import annotations

import argparse
import json

from find_jax import shapes_quality as quality


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=quality.DEFAULT_MODEL_DIR, help="saved shapes model directory")
    p.add_argument("--n", type=int, default=64, help="x_T per prompt")
    p.add_argument("--seed", type=int, default=123, help="seed of the x_T draws")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's find_defaults.json)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--json", default=None, help="also write the full result here")
    p.add_argument("--flips", default=None, metavar="PNG", help="also write each flipped draw and its perturbation")
    p.add_argument(
        "--controls",
        action="store_true",
        help="also run the positive controls (exact-fit and colour-shift Gaussians vs the prior, rare prompts)",
    )
    p.add_argument("--no-quality", action="store_true", help="skip (a)-(d) (with --controls: the controls only)")
    p.add_argument(
        "--find-control",
        default=None,
        metavar="WORKDIR",
        help="also run FIND on the left_share reward (optimum 1.0) in WORKDIR and score its learned Gaussian",
    )
    p.add_argument("--find-preset", default="paper", help="FIND preset of --find-control")
    p.add_argument("--find-lr", type=float, default=None, help="FIND learning rate of --find-control (preset's)")
    p.add_argument("--find-prompt", default="a red circle", help="prompt of --find-control")
    p.add_argument(
        "--find-target",
        default=None,
        metavar="CAPTION",
        help="--find-control's reward: the scorer's partial credit against CAPTION (default: left_share)",
    )
    p.add_argument(
        "--find-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a FindConfig field of --find-control (repeatable; VALUE read as JSON), e.g. mu_grid=1",
    )
    p.add_argument("--n-search", type=int, default=150, help="prior draws the exact-fit control is fitted on")
    p.add_argument(
        "--shift",
        type=float,
        action="append",
        dest="shifts",
        help="colour-shift size of a control candidate, per element (repeatable; default 0.5 and 1.0)",
    )
    p.add_argument(
        "--contrast",
        action="store_true",
        help="controls: add contrast shifts (only the channels where the colour differs from the shape's usual one)",
    )
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be >= 1; got {a.n}")
    res = {}
    if not a.no_quality:
        res = quality.measure_model(a.model, n=a.n, seed=a.seed, steps=a.steps, guidance=a.guidance, flips_png=a.flips)
        print(quality.format_report(res), flush=True)
    if a.controls:
        sampler = quality.Sampler(quality.load_shapes_model(a.model), steps=a.steps, guidance=a.guidance)
        shifts = tuple(a.shifts or (0.5, 1.0))
        res["controls"] = quality.positive_control(
            sampler, n_search=a.n_search, n_eval=a.n, shifts=shifts, contrast=a.contrast
        )
        print(quality.format_control(res["controls"]), flush=True)
    if a.find_control:
        extra = {} if a.find_lr is None else {"lr": a.find_lr}
        if a.find_set:  # FIELD=VALUE parsed as evaluate_shapes reads a method's fields (one parser)
            from find_jax.evaluate_shapes import parse_method

            try:
                extra.update(parse_method(f"control={a.find_preset}:" + ",".join(a.find_set)).overrides)
            except ValueError as e:
                p.error(f"--find-set: {e}")
        fc = quality.find_control(
            a.model,
            a.find_control,
            prompt=a.find_prompt,
            target=a.find_target,
            preset=a.find_preset,
            n_eval=a.n,
            **extra,
        )
        res["find_control"] = fc
        reward = a.find_target or "left_share"
        print(
            f"FIND on {reward!r} (optimum 1.0), {a.find_prompt!r}, {a.find_preset} {extra}: "
            f"mean |mu| {fc['mu_abs']:.4f}"
        )
        for k in ("base", "find"):
            v = fc[k]
            o = v["at_optimum"]
            print(f"  {k:5s} reward {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}], at optimum {o['value']:.3f}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
