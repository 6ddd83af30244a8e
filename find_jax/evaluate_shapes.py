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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from find_jax.prompts import slugify
from find_jax.stats import mean_ci_tuple, wilson

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
# Common captions held out from the evaluation, for choosing the model's sampler settings (its guidance scale).
TUNING_COMMON = (
    "a yellow triangle on the left",
    "two yellow triangles",
    "a blue square above a yellow triangle",
    "a red circle at the bottom",
    "a yellow triangle to the left of a red circle",
    "two blue squares",
)


# A method is a FIND preset plus field overrides. ``ablation`` methods run only on the ABLATION prompts; they
# remove one component from the paper's method (the paper's own ablation, section 5.4).
@dataclasses.dataclass(frozen=True)
class Method:
    """One FIND variant of the evaluation: ``get_preset(preset, **overrides)`` on every prompt."""

    name: str
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    ablation: bool = False  # run on the ablation prompts only


KNOWN_METHODS = {
    "find_paper": Method("find_paper", "paper"),
    "find_official": Method("find_official", "official"),
    "find_no_drcm": Method("find_no_drcm", "paper", (("use_drcm", False),), ablation=True),
    "find_no_rca": Method("find_no_rca", "paper", (("use_rca", False),), ablation=True),
}
METHODS = tuple(KNOWN_METHODS)


def parse_method(spec: str) -> Method:
    """A known method name, or ``NAME=PRESET[:FIELD=VALUE,...]`` (values read as JSON, else as text).

    ``lr3e-2=paper:lr=0.03,samples_per_iter=2`` is the ``paper`` preset with lr 0.03 and two samples per
    iteration. Unknown presets or fields are refused when the config is built.
    """
    from find_jax.config import PRESETS

    spec = spec.strip()
    if spec in KNOWN_METHODS:
        return KNOWN_METHODS[spec]
    name, sep, rest = spec.partition("=")
    preset, _, fields = rest.partition(":")
    if not sep or not name or not preset:
        raise ValueError(
            f"method {spec!r} is neither a known method ({', '.join(METHODS)}) nor NAME=PRESET[:FIELD=VALUE,...]"
        )
    if preset not in PRESETS:
        raise ValueError(f"method {name!r}: unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    overrides = []
    for item in filter(None, (f.strip() for f in fields.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"method {name!r}: {item!r} is not FIELD=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        overrides.append((key.strip(), parsed))
    return Method(name, preset, tuple(overrides))


@dataclasses.dataclass
class Scores:
    """Per-image scores of one (method, prompt): exact [n] bool, reward [n] float."""

    exact: np.ndarray
    reward: np.ndarray

    def summary(self) -> dict[str, Any]:
        n = len(self.exact)
        k = int(self.exact.sum())
        m, lo, hi = mean_ci_tuple(self.reward)
        return {"n": n, "exact": k / n, "exact_ci": wilson(k, n), "reward": m, "reward_ci": (lo, hi)}


def score_images(images: np.ndarray, prompt: str, *, graded: bool = False) -> Scores:
    """Exact-scorer results of ``images [N, 32, 32, 3]`` in [0, 1] against one caption (``graded``: the reward
    is the graded partial credit; ``exact`` is the same either way)."""
    from reward_models.shapes import score_batch

    s = score_batch(images, [prompt] * len(images), graded=graded)
    return Scores(np.array([t.exact for t in s]), np.array([t.reward for t in s], np.float32))


def _base_name(eta: float) -> str:
    return "base" if eta == 0 else f"base_eta{eta:g}"


def evaluate(
    workdir: str | Path,
    *,
    rare: Sequence[str] = RARE,
    common: Sequence[str] = COMMON,
    ablation: Sequence[str] = ABLATION,
    tuning: Sequence[str] = (),
    n_images: int = 64,
    iterations: int = 150,
    steps: int = 20,
    guidance: float | None = None,
    seed: int = 0,
    methods: Sequence[str | Method] = METHODS,
    search: bool = True,
    log=print,
    on_prompt=None,
) -> dict[str, Any]:
    """Runs every method on every prompt (FIND runs are resumable in ``workdir``); returns the results dict.

    The base model is measured at every DDIM eta a method uses (``base`` at eta 0, ``base_eta1`` at eta 1 for
    the ``official`` preset), so each FIND distribution is compared with N(0, I) under its own sampler.
    Prompts alternate between the rare and the common set so that a partial evaluation covers both;
    ``on_prompt(results)`` is called with the results so far after each prompt (the script writes them).
    """
    from find_jax import envs as environments
    from find_jax.envs.base import bind_one
    from find_jax.optimize import make_config, run
    from find_jax.rundir import read_run
    from find_jax.trainer import sample_from_state

    methods = [m if isinstance(m, Method) else parse_method(m) for m in methods]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names repeat: {names}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = environments.load_model(None)
    sampler_kw = {"steps": steps} | ({"guidance": guidance} if guidance is not None else {})

    def config(method: Method, prompt: str):
        fields = {"iterations": iterations, "seed": seed, **sampler_kw, **dict(method.overrides)}
        return make_config(method.preset, prompt=prompt, **fields)

    base_cfg = make_config("paper", prompt="x", **sampler_kw)
    method_cfgs = [config(m, "x") for m in methods]
    etas = sorted({base_cfg.eta} | {c.eta for c in method_cfgs})
    rows: dict[str, dict[str, Any]] = {}
    prompts = _interleave([(p, "rare") for p in rare], [(p, "common") for p in common])
    prompts += [(p, "tuning") for p in tuning]
    rng_eval = jax.random.PRNGKey(seed + 12345)
    environments_by_eta = {
        eta: environments.make_environment(model, environments.sampler_settings(base_cfg, eta=eta)) for eta in etas
    }
    for prompt, group in prompts:
        t0 = time.perf_counter()
        envs = {eta: bind_one(e, prompt) for eta, e in environments_by_eta.items()}
        env = envs[base_cfg.eta]
        shape = environments_by_eta[base_cfg.eta].latent_shape
        x0 = jax.random.normal(rng_eval, (n_images, *shape))
        row: dict[str, Any] = {"group": group}
        for eta, env_e in envs.items():
            row[_base_name(eta)] = score_images(np.asarray(env_e(x0, rng_eval)), prompt).summary()
        if search:  # best-of-N random search at FIND's number of reward calls (the most any method makes)
            n_calls = max((c.iterations * c.samples_per_iter for c in method_cfgs), default=iterations)
            xs = jax.random.normal(jax.random.fold_in(rng_eval, 1), (n_calls, *shape))
            found = np.concatenate([np.asarray(env(xs[i : i + 50], rng_eval)) for i in range(0, n_calls, 50)])
            s = score_images(found, prompt)
            row["best_of_n"] = {"n": n_calls, "best_reward": float(s.reward.max()), "found_exact": bool(s.exact.any())}
        for method in methods:
            if method.ablation and prompt not in ablation:
                continue
            cfg = config(method, prompt)
            run_dir = workdir / method.name / slugify(prompt, max_len=200)
            tm = time.perf_counter()
            state = run(cfg, run_dir, model=model)
            seconds = time.perf_counter() - tm
            xm = sample_from_state(state, rng_eval, n_images)
            summary = score_images(np.asarray(envs[cfg.eta](xm, rng_eval)), prompt).summary()
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            best = max(m.get("reward/max", -1.0) for m in metrics)
            summary.update(
                best_reward_during_run=best,
                found_exact_during_run=best >= 1.0,
                seconds=seconds,
                reward_calls=cfg.iterations * cfg.samples_per_iter,
                base=_base_name(cfg.eta),
            )
            read_run(run_dir)  # the run directory is complete and readable
            row[method.name] = summary
        rows[prompt] = row
        if on_prompt is not None:
            on_prompt(_results(rows, n_images, iterations, base_cfg, seed, model, methods))
        log(
            f"{prompt:48s} "
            + "  ".join(f"{k} {v['exact']:.2f}" for k, v in row.items() if isinstance(v, dict) and "exact" in v)
            + f"  ({time.perf_counter() - t0:.0f}s)"
        )
    return _results(rows, n_images, iterations, base_cfg, seed, model, methods)


def _interleave(rare: Sequence, common: Sequence) -> list:
    """Two rare prompts, then one common, and so on (the sets are 2:1)."""
    out, r, c = [], list(rare), list(common)
    while r or c:
        out += r[:2] + c[:1]
        r, c = r[2:], c[1:]
    return out


def _results(rows, n_images, iterations, base_cfg, seed, model, methods) -> dict[str, Any]:
    settings = {
        "n_images": n_images,
        "iterations": iterations,
        "steps": base_cfg.steps,
        "guidance": base_cfg.guidance,
        "seed": seed,
        "model_fingerprint": model.fingerprint,
        "methods": {m.name: {"preset": m.preset, "overrides": dict(m.overrides)} for m in methods},
    }
    return {"settings": settings, "prompts": dict(rows), "aggregate": aggregate(rows)}


def _columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Bases first, then the methods, in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows.values():
        for k, v in r.items():
            if isinstance(v, dict) and "exact" in v:
                seen.setdefault(k)
    return sorted(seen, key=lambda k: not k.startswith("base"))


def aggregate(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pooled exact alignment (Wilson) and mean reward per (group, method), plus search success rates.

    The ``ablation`` group is the prompts that hold an ablation method; a method enters a group's table only
    when it ran on every prompt of the group.
    """
    out: dict[str, Any] = {}
    ablated = {k for r in rows.values() for k, v in r.items() if isinstance(v, dict) and "exact" in v} & {
        m.name for m in KNOWN_METHODS.values() if m.ablation
    }
    for group in ("rare", "common", "tuning", "ablation"):
        if group == "ablation":
            sel = {p: r for p, r in rows.items() if ablated & set(r)}
        else:
            sel = {p: r for p, r in rows.items() if r["group"] == group}
        if not sel:
            continue
        g: dict[str, Any] = {}
        for method in _columns(sel):
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
        searches = {}
        if all("best_of_n" in r for r in sel.values()):
            searches["best_of_n"] = float(np.mean([r["best_of_n"]["found_exact"] for r in sel.values()]))
        for method in g:
            if not method.startswith("base"):
                searches[method] = float(np.mean([r[method]["found_exact_during_run"] for r in sel.values()]))
        g["search"] = searches
        out[group] = g
    return out


def to_markdown(results: dict[str, Any]) -> str:
    """The README tables: per group, searches, and per prompt."""
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
        f"Searches: share of prompts where an exactly aligned image was found within {st['iterations']} reward calls "
        "(best-of-N random x_T vs the samples FIND drew while optimising):",
        "",
        "| set | method | found exact |",
        "|---|---|---|",
    ]
    for group, g in agg.items():
        for method, v in g["search"].items():
            lines.append(f"| {group} | {method} | {v:.2f} |")
    cols = _columns(results["prompts"])
    lines += ["", "| prompt | set | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for prompt, r in results["prompts"].items():
        cells = [f"{r[m]['exact']:.2f}" if m in r else "" for m in cols]
        lines.append(f"| {prompt} | {r['group']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
