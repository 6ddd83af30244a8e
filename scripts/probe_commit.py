"""When does a shapes model decide a sample's exact label? The trace behind README "Is it a testbed that can tell?".

For each tuning prompt, ``--n`` x_T ~ N(0, I) and their perturbations ``(x_T + 0.1 z) / sqrt(1.01)`` (the
stability test of ``scripts/measure_shapes.py``) are sampled with the model's own settings, and at every DDIM
step the x0 prediction (Eq. 3's x0_hat, decoded) is scored as if it were the final image. Per step it prints

* ``settled``: the share of draws whose x0 prediction already has the final image's exact label;
* ``split``: among the draws whose label flips under the perturbation, the share whose two x0 predictions
  already disagree at that step (where the two trajectories part).

A label decided at high noise depends on coarse features of x_T (few directions, so few x_T near a boundary); one
decided in the last steps depends on fine ones, which is what makes labels flip under a small perturbation. The
moment features of the flipped objects (``skew``, ``gap``; ``reward_models.shapes``) show how near a scorer
threshold the final objects are.

    python scripts/probe_commit.py [--model DIR] [--n 64] [--prompt P ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from find_jax import shapes_quality as quality
from find_jax.envs.ddim import ddim_schedule
from find_jax.evaluate_shapes import TUNING, TUNING_COMMON
from reward_models import shapes as scorer


def exact(images: np.ndarray, prompt: str) -> np.ndarray:
    """``[N, 32, 32, 3]`` in ``[0, 1]`` -> ``[N]`` bool exact labels."""
    return np.array([r.exact for r in scorer.score_batch(images, [prompt] * len(images))])


def probe_prompt(sampler: quality.Sampler, prompt: str, *, n: int, seed: int, index: int) -> dict:
    """The per-step ``settled`` / ``split`` shares of one prompt (module docstring) and its flipped objects."""
    rng = np.random.default_rng([seed, index])
    shape = sampler.model.latent_shape
    x_t = rng.standard_normal((n, *shape)).astype(np.float32)
    z = rng.standard_normal((n, *shape)).astype(np.float32)
    img_a, tr_a = sampler(x_t, prompt)
    img_b, tr_b = sampler(quality.perturb(x_t, z, 0.1), prompt)
    fa, fb = exact(img_a, prompt), exact(img_b, prompt)
    flipped = fa != fb
    settled, split = [], []
    for k in range(tr_a.shape[0]):
        ka, kb = exact(tr_a[k], prompt), exact(tr_b[k], prompt)
        settled.append(float(np.mean(ka == fa)))
        split.append(float(np.mean((ka != kb)[flipped])) if flipped.any() else float("nan"))

    def objects(image):
        return [(o.colour, o.shape, o.pixels, round(o.skew, 2), round(o.gap, 2)) for o in scorer.find_objects(image)]

    pairs = [(objects(img_a[i]), objects(img_b[i])) for i in np.flatnonzero(flipped)]
    return {"exact": float(fa.mean()), "flips": int(flipped.sum()), "settled": settled, "split": split, "pairs": pairs}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=quality.DEFAULT_MODEL_DIR, help="saved shapes model directory")
    p.add_argument("--n", type=int, default=64, help="x_T per prompt")
    p.add_argument("--seed", type=int, default=123, help="seed of the x_T draws")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; default: tuning ones)")
    p.add_argument("--pairs", type=int, default=4, help="flipped pairs to print per prompt")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be >= 1; got {a.n}")
    prompts = a.prompt or [*TUNING, *TUNING_COMMON]
    try:
        scorer.check_prompts(prompts)
    except ValueError as e:
        p.error(str(e))
    sampler = quality.Sampler(quality.load_shapes_model(a.model), trace=True)
    ts = [int(t) for t in ddim_schedule(sampler.model.scheduler, sampler.steps).timesteps]
    out = {"timesteps": ts, "prompts": {}}
    for i, q in enumerate(prompts):
        r = probe_prompt(sampler, q, n=a.n, seed=a.seed, index=i)
        out["prompts"][q] = r
        print(f"{q!r}: exact {r['exact']:.2f}, {r['flips']} of {a.n} flip")
        print("  step      t  settled  split")
        for k, t in enumerate(ts):
            print(f"  {k:4d} {t:6d}  {r['settled'][k]:7.2f}  {r['split'][k]:5.2f}")
        for pa, pb in r["pairs"][: a.pairs]:
            print(f"    {pa}  ->  {pb}")
    rs = list(out["prompts"].values())
    flips = np.array([r["flips"] for r in rs], float)
    out["all"] = {
        "settled": np.mean([r["settled"] for r in rs], 0).tolist(),  # mean over prompts
        "split": (np.nan_to_num([r["split"] for r in rs]).T @ flips / max(flips.sum(), 1)).tolist(),  # over flips
    }
    print(f"all {len(rs)} prompts ({int(flips.sum())} flips):  step t settled split")
    for k, t in enumerate(ts):
        print(f"  {k:4d} {t:6d}  {out['all']['settled'][k]:7.2f}  {out['all']['split'][k]:5.2f}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
