"""Does FIND improve prompt alignment? Measured exactly on the shipped shapes-world model.

For every prompt, with the same sampler settings:

* ``base``: ``n_images`` draws ``x_T ~ N(0, I)``;
* ``find_paper``, ``find_official``, ``find_no_drcm``, ``find_no_rca``: a FIND run (``iterations`` reward calls),
  then ``n_images`` *fresh* draws from the learned distribution (same seeds for every method);
* searches, compared with searches: ``best_of_n`` draws as many ``x_T ~ N(0, I)`` as FIND makes reward calls and
  keeps the best, against the best sample FIND's own ``paper`` run found during optimisation.

Each image is scored by the exact scorer (``reward_models.shapes``): exact alignment (0/1) and the partial
credit in [0, 1]. Intervals are 95%: Wilson for proportions, normal for means.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

# Prompt sets. RARE = the training bias works against them (non-dominant colour, counts >= 3, positions and
# relations of rare-coloured objects); COMMON = captions the data is full of. TUNING is kept apart: any setting
# changed while developing was judged on it, never on the evaluation sets.
RARE = (
    "a green circle",
    "a blue circle",
    "a magenta square",
    "a red square",
    "a white triangle",
    "a green triangle",
    "three red circles",
    "four blue squares",
    "a green circle on the left",
    "a magenta square at the top",
    "a green circle to the left of a white square",
    "a blue triangle above a magenta circle",
)
COMMON = (
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "two red circles",
    "a blue square on the right",
    "a red circle to the left of a blue square",
)
ABLATION = RARE[:2] + RARE[6:7] + RARE[8:9] + RARE[10:12]  # 6 rare prompts: colour, count, position, relation
TUNING = ("a white circle", "a yellow square", "three yellow triangles", "a red triangle at the bottom")

METHODS = ("find_paper", "find_official", "find_no_drcm", "find_no_rca")
_OVERRIDES = {
    "find_paper": ("paper", {}),
    "find_official": ("official", {}),
    "find_no_drcm": ("paper", {"use_drcm": False}),
    "find_no_rca": ("paper", {"use_rca": False}),
}


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def mean_ci(x: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` with a normal 95% interval."""
    x = np.asarray(x, np.float64)
    m = float(x.mean())
    h = z * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return m, m - h, m + h


@dataclasses.dataclass
class Scores:
    """Per-image scores of one (method, prompt): exact [n] bool, reward [n] float."""

    exact: np.ndarray
    reward: np.ndarray

    def summary(self) -> dict[str, Any]:
        n = len(self.exact)
        k = int(self.exact.sum())
        m, lo, hi = mean_ci(self.reward)
        return {"n": n, "exact": k / n, "exact_ci": wilson(k, n), "reward": m, "reward_ci": (lo, hi)}


def _score(images: np.ndarray, prompt: str) -> Scores:
    from reward_models.shapes import score_batch

    s = score_batch(images, [prompt] * len(images))
    return Scores(np.array([t.exact for t in s]), np.array([t.reward for t in s], np.float32))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def evaluate(
    workdir: str | Path,
    *,
    rare: Sequence[str] = RARE,
    common: Sequence[str] = COMMON,
    ablation: Sequence[str] = ABLATION,
    n_images: int = 64,
    iterations: int = 150,
    steps: int = 20,
    guidance: float | None = None,
    seed: int = 0,
    methods: Sequence[str] = METHODS,
    log=print,
    on_prompt=None,
) -> dict[str, Any]:
    """Runs every method on every prompt (FIND runs are resumable in ``workdir``); returns the results dict.

    Prompts alternate between the rare and the common set so that a partial evaluation covers both;
    ``on_prompt(results)`` is called with the results so far after each prompt (the script writes them).
    """
    from find_jax.models import load_model
    from find_jax.optimize import make_config, run
    from find_jax.sampler import make_environment
    from find_jax.trainer import read_run, sample_from_state

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = load_model(None)
    sampler_kw = {"steps": steps} | ({"guidance": guidance} if guidance is not None else {})
    base_cfg = make_config("paper", prompt="x", **sampler_kw)
    rows: dict[str, dict[str, Any]] = {}
    prompts = _interleave([(p, "rare") for p in rare], [(p, "common") for p in common])
    rng_eval = jax.random.PRNGKey(seed + 12345)
    for prompt, group in prompts:
        t0 = time.perf_counter()
        env = make_environment(model, prompt, steps=base_cfg.steps, guidance=base_cfg.guidance, eta=base_cfg.eta)
        shape = env.latent_shape
        x0 = jax.random.normal(rng_eval, (n_images, *shape))
        row: dict[str, Any] = {"group": group}
        row["base"] = _score(np.asarray(env(x0, rng_eval)), prompt).summary()
        # Best-of-N random search at FIND's number of reward calls.
        n_calls = iterations * base_cfg.samples_per_iter
        xs = jax.random.normal(jax.random.fold_in(rng_eval, 1), (n_calls, *shape))
        search = np.concatenate([np.asarray(env(xs[i : i + 50], rng_eval)) for i in range(0, n_calls, 50)])
        s = _score(search, prompt)
        row["best_of_n"] = {"n": n_calls, "best_reward": float(s.reward.max()), "found_exact": bool(s.exact.any())}
        for method in methods:
            if method in ("find_no_drcm", "find_no_rca") and prompt not in ablation:
                continue
            preset, extra = _OVERRIDES[method]
            cfg = make_config(preset, prompt=prompt, iterations=iterations, seed=seed, **sampler_kw, **extra)
            run_dir = workdir / method / _slug(prompt)
            tm = time.perf_counter()
            state = run(cfg, run_dir, model=model)
            seconds = time.perf_counter() - tm
            env_m = make_environment(model, prompt, steps=cfg.steps, guidance=cfg.guidance, eta=cfg.eta)
            xm = sample_from_state(state, rng_eval, n_images)
            summary = _score(np.asarray(env_m(xm, rng_eval)), prompt).summary()
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            best = max(m.get("reward/max", -1.0) for m in metrics)
            summary.update(best_reward_during_run=best, found_exact_during_run=best >= 1.0, seconds=seconds)
            read_run(run_dir)  # the run directory is complete and readable
            row[method] = summary
        rows[prompt] = row
        if on_prompt is not None:
            on_prompt(_results(rows, n_images, iterations, base_cfg, seed, model))
        log(
            f"{prompt:48s} base {row['base']['exact']:.2f}  "
            + "  ".join(f"{m} {row[m]['exact']:.2f}" for m in methods if m in row)
            + f"  ({time.perf_counter() - t0:.0f}s)"
        )
    return _results(rows, n_images, iterations, base_cfg, seed, model)


def _interleave(rare: Sequence, common: Sequence) -> list:
    """Two rare prompts, then one common, and so on (the sets are 2:1)."""
    out, r, c = [], list(rare), list(common)
    while r or c:
        out += r[:2] + c[:1]
        r, c = r[2:], c[1:]
    return out


def _results(rows, n_images, iterations, base_cfg, seed, model) -> dict[str, Any]:
    settings = {
        "n_images": n_images,
        "iterations": iterations,
        "steps": base_cfg.steps,
        "guidance": base_cfg.guidance,
        "seed": seed,
        "model_fingerprint": model.fingerprint,
    }
    return {"settings": settings, "prompts": dict(rows), "aggregate": aggregate(rows)}


def aggregate(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pooled exact alignment (Wilson) and mean reward per (group, method), plus search success rates."""
    out: dict[str, Any] = {}
    for group in ("rare", "common", "ablation"):
        sel = {p: r for p, r in rows.items() if (r["group"] == group if group != "ablation" else "find_no_rca" in r)}
        if not sel:
            continue
        g: dict[str, Any] = {}
        for method in ("base", *METHODS):
            have = [r[method] for r in sel.values() if method in r]
            if len(have) != len(sel):
                continue
            k = sum(h["exact"] * h["n"] for h in have)
            n = sum(h["n"] for h in have)
            g[method] = {
                "prompts": len(have),
                "exact": k / n,
                "exact_ci": wilson(k, n),
                "reward": float(np.mean([h["reward"] for h in have])),
            }
        g["search"] = {
            "best_of_n_found_exact": float(np.mean([r["best_of_n"]["found_exact"] for r in sel.values()])),
            "find_paper_found_exact": float(
                np.mean(
                    [r["find_paper"]["found_exact_during_run"] for r in sel.values() if "find_paper" in r] or [np.nan]
                )
            ),
        }
        out[group] = g
    return out


def to_markdown(results: dict[str, Any]) -> str:
    """The README tables: per group and per prompt."""
    agg = results["aggregate"]
    st = results["settings"]
    lines = [
        f"{st['n_images']} images per prompt and method, {st['iterations']} FIND iterations, "
        f"{st['steps']} DDIM steps, CFG {st['guidance']}, seed {st['seed']}.",
        "",
        "| set | method | prompts | exact alignment [95% CI] | mean reward |",
        "|---|---|---|---|---|",
    ]
    for group, g in agg.items():
        for method, v in g.items():
            if method == "search":
                continue
            lo, hi = v["exact_ci"]
            lines.append(
                f"| {group} | {method} | {v['prompts']} | {v['exact']:.3f} [{lo:.3f}, {hi:.3f}] | {v['reward']:.3f} |"
            )
    lines += [
        "",
        f"Searches (share of prompts where an exactly aligned image was found within {st['iterations']} reward calls):",
        "",
        "| set | best-of-N random | FIND paper run |",
        "|---|---|---|",
    ]
    for group, g in agg.items():
        s = g["search"]
        lines.append(f"| {group} | {s['best_of_n_found_exact']:.2f} | {s['find_paper_found_exact']:.2f} |")
    lines += ["", "| prompt | set | base | " + " | ".join(METHODS) + " |", "|---|---|---|" + "---|" * len(METHODS)]
    for prompt, r in results["prompts"].items():
        cells = [f"{r[m]['exact']:.2f}" if m in r else "" for m in METHODS]
        lines.append(f"| {prompt} | {r['group']} | {r['base']['exact']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
