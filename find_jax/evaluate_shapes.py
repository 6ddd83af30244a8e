"""Does FIND improve prompt alignment? Measured exactly on the shipped shapes-world model, at equal reward calls.

Every method spends the same ``calls`` reward calls per prompt (150: the paper's iterations), with the same
sampler settings:

* ``base``: ``n_images`` draws ``x_T ~ N(0, I)`` (at each DDIM eta a method uses);
* ``best_of_n``: the best of ``calls`` random x_T: one image, not a distribution;
* FIND methods (``find_paper``, ``find_official``, the ablations ``find_no_drcm`` / ``find_no_rca`` on the ABLATION
  prompts, and :data:`VARIANTS` that spend the calls differently): a run of ``calls / samples_per_iter``
  iterations, then ``n_images`` *fresh* draws from the learned distribution with the same z as the base.

Each image is scored by the exact scorer (``reward_models.shapes``): exact alignment (0/1) and the partial
credit in [0, 1]; each sample's diversity is its mean pairwise pixel distance. Intervals are 95%: Wilson for
proportions, Student-t for means.
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

from find_jax.config import parse_assignment
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


# A method is a FIND preset plus field overrides, spending the evaluation's reward calls per prompt (``calls``:
# ``iterations = calls // samples_per_iter``). ``ablation`` methods run only on the ABLATION prompts; they remove
# one component from the paper's method (the paper's own ablation, section 5.4).
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
# The same calls spent differently (issue 18, item 3), each the best of its family on the TUNING prompts of the
# shipped model (README, "FIND at equal reward calls"; re-tuned 2026-12-04): lr in {1e-2, 3e-2, 1e-1}; N in {5, 10}
# samples per iteration at lr 3e-2 (replay of the last 2N samples); mu on a 1x1 or 4x4 grid per channel at lr in
# {1e-2, 3e-2, 1e-1} (one of each grid size). ``--method`` adds others.
VARIANTS = {
    "find_lr1e-2": Method("find_lr1e-2", "paper", (("lr", 0.01),)),
    "find_n10_lr3e-2": Method(
        "find_n10_lr3e-2", "paper", (("lr", 0.03), ("replay_size", 20), ("samples_per_iter", 10))
    ),
    "find_grid1_lr3e-2": Method("find_grid1_lr3e-2", "paper", (("lr", 0.03), ("mu_grid", 1))),
    "find_grid4_lr3e-2": Method("find_grid4_lr3e-2", "paper", (("lr", 0.03), ("mu_grid", 4))),
}
KNOWN_METHODS.update(VARIANTS)
EQUAL_CALLS = METHODS + tuple(VARIANTS)  # the full table of scripts/evaluate_shapes.py


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
        try:
            overrides.append(parse_assignment(item, "FIELD=VALUE"))
        except ValueError as e:
            raise ValueError(f"method {name!r}: {e}") from None
    return Method(name, preset, tuple(overrides))


def pairwise_distance(images: np.ndarray) -> float:
    """Diversity of a sample: the mean over pairs ``i < j`` of the mean absolute pixel difference of
    ``images [N, 32, 32, 3]`` in [0, 1] (0 = identical images; two independent base samples differ by ~0.19)."""
    x = np.asarray(images, np.float32).reshape(len(images), -1)
    n = len(x)
    if n < 2:
        return float("nan")
    d = [np.abs(x[i + 1 :] - x[i]).mean(axis=1) for i in range(n - 1)]
    return float(np.concatenate(d).mean())


@dataclasses.dataclass
class Scores:
    """Per-image scores of one (method, prompt): exact [n] bool, reward [n] float; diversity of the images."""

    exact: np.ndarray
    reward: np.ndarray
    diversity: float = float("nan")

    def summary(self) -> dict[str, Any]:
        n = len(self.exact)
        k = int(self.exact.sum())
        m, lo, hi = mean_ci_tuple(self.reward)
        return {
            "n": n,
            "exact": k / n,
            "exact_ci": wilson(k, n),
            "reward": m,
            "reward_ci": (lo, hi),
            "rewards": [round(float(r), 6) for r in self.reward],
            "diversity": self.diversity,
        }


def score_images(images: np.ndarray, prompt: str, *, graded: bool = False) -> Scores:
    """Exact-scorer results of ``images [N, 32, 32, 3]`` in [0, 1] against one caption (``graded``: the reward
    is the graded partial credit; ``exact`` is the same either way), and their :func:`pairwise_distance`."""
    from reward_models.shapes import score_batch

    s = score_batch(images, [prompt] * len(images), graded=graded)
    return Scores(
        np.array([t.exact for t in s]), np.array([t.reward for t in s], np.float32), pairwise_distance(images)
    )


def _base_name(eta: float) -> str:
    return "base" if eta == 0 else f"base_eta{eta:g}"


def method_config(method: Method, prompt: str, *, calls: int, **fields: Any):
    """The method's :class:`~find_jax.config.FindConfig` spending exactly ``calls`` reward calls on ``prompt``:
    ``iterations = calls / samples_per_iter`` unless the method sets ``iterations`` (then it must agree)."""
    from find_jax.optimize import make_config

    over = dict(method.overrides)
    spi = int(over.get("samples_per_iter", 1))
    iterations = int(over.pop("iterations", calls // max(spi, 1)))
    if spi < 1 or iterations * spi != calls:
        raise ValueError(
            f"method {method.name!r}: {iterations} iterations x {spi} samples = {iterations * spi} reward calls, "
            f"not the evaluation's {calls}; choose samples_per_iter dividing {calls}"
        )
    return make_config(method.preset, prompt=prompt, **fields, **over, iterations=iterations)


def evaluate(
    workdir: str | Path,
    *,
    model: str | None = None,
    rare: Sequence[str] = RARE,
    common: Sequence[str] = COMMON,
    ablation: Sequence[str] = ABLATION,
    tuning: Sequence[str] = (),
    n_images: int = 64,
    calls: int = 150,
    steps: int = 20,
    guidance: float | None = None,
    seed: int = 0,
    methods: Sequence[str | Method] = METHODS,
    search: bool = True,
    batch_prompts: int = 6,
    log=print,
    on_update=None,
) -> dict[str, Any]:
    """Runs every method on every prompt at ``calls`` reward calls each; returns the results dict.

    Per prompt: the base model at every DDIM eta a method uses (``base`` at eta 0, ``base_eta1`` at eta 1 for
    the ``official`` preset), so each FIND distribution is compared with N(0, I) under its own sampler, and the
    best of ``calls`` random x_T (``best_of_n``: one image, not a distribution). Per method: one prompt-set run
    (``find_jax.optimize.run_batch``, ``batch_prompts`` prompts at a time; resumable in ``workdir/<method>``),
    then ``n_images`` fresh draws of each learned distribution with the same z as the base. ``on_update(results)``
    is called with the results so far after the bases and after each method (the script writes them).
    ``model``: a saved shapes-model directory (default: the shipped one), e.g. a candidate before it is shipped;
    its ``find_defaults.json`` sets the sampler unless ``steps`` / ``guidance`` are given.
    """
    from find_jax import envs as environments
    from find_jax.envs.base import bind_one
    from find_jax.optimize import make_config, run_batch
    from find_jax.prompts import PromptItem
    from find_jax.rundir import load_state
    from find_jax.trainer import sample_from_state

    methods = [m if isinstance(m, Method) else parse_method(m) for m in methods]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names repeat: {names}")
    workdir = Path(workdir)
    sampler_kw = {"steps": steps} | ({"guidance": guidance} if guidance is not None else {})
    sampler_kw |= {"model": model} if model is not None else {}
    fields = {"seed": seed, **sampler_kw}
    model = environments.load_model(model)
    method_cfgs = {m.name: method_config(m, "x", calls=calls, **fields) for m in methods}  # refuses bad specs
    workdir.mkdir(parents=True, exist_ok=True)
    base_cfg = make_config("paper", prompt="x", **sampler_kw)
    etas = sorted({base_cfg.eta} | {c.eta for c in method_cfgs.values()})
    prompts = _interleave([(p, "rare") for p in rare], [(p, "common") for p in common])
    prompts += [(p, "tuning") for p in tuning]
    rng_eval = jax.random.PRNGKey(seed + 12345)
    env_by_eta = {
        eta: environments.make_environment(model, environments.sampler_settings(base_cfg, eta=eta)) for eta in etas
    }
    shape = env_by_eta[base_cfg.eta].latent_shape
    x0 = jax.random.normal(rng_eval, (n_images, *shape))  # the z of every fresh sample, base and FIND alike
    rows: dict[str, dict[str, Any]] = {}

    def results() -> dict[str, Any]:
        return _results(rows, n_images, calls, base_cfg, seed, model, methods)

    for prompt, group in prompts:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"group": group}
        for eta, env in env_by_eta.items():
            row[_base_name(eta)] = score_images(np.asarray(bind_one(env, prompt)(x0, rng_eval)), prompt).summary()
        if search:
            env = bind_one(env_by_eta[base_cfg.eta], prompt)
            xs = jax.random.normal(jax.random.fold_in(rng_eval, 1), (calls, *shape))
            found = np.concatenate([np.asarray(env(xs[i : i + 50], rng_eval)) for i in range(0, calls, 50)])
            sc = score_images(found, prompt)
            row["best_of_n"] = {"n": calls, "best_reward": float(sc.reward.max()), "found_exact": bool(sc.exact.any())}
        rows[prompt] = row
        log(f"{prompt:48s} base {row['base']['exact']:.2f}  ({time.perf_counter() - t0:.0f}s)")
    if on_update is not None:
        on_update(results())

    for method in methods:
        t0 = time.perf_counter()
        todo = [(p, g) for p, g in prompts if not method.ablation or p in ablation]
        if not todo:
            continue
        cfg = method_cfgs[method.name]
        items = [PromptItem(p, g) for p, g in todo]
        out = workdir / method.name
        result = run_batch(cfg, items, out, batch_prompts=min(batch_prompts, len(items)), model=model)
        env_m = env_by_eta[cfg.eta]
        for (prompt, _), res in zip(todo, result.results, strict=True):
            run_dir = out / res.dir
            if res.status != "done":
                log(f"{method.name} {prompt!r}: {res.status} {res.error}")
                continue
            state = load_state(run_dir)
            xm = sample_from_state(state, rng_eval, n_images)
            summary = score_images(np.asarray(bind_one(env_m, prompt)(xm, rng_eval)), prompt).summary()
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            best = max(m.get("reward/max", -1.0) for m in metrics)
            summary.update(
                best_reward_during_run=best,
                found_exact_during_run=best >= 1.0,
                seconds=res.time_s,
                reward_calls=cfg.iterations * cfg.samples_per_iter,
                mu_abs=float(np.abs(np.asarray(state.policy.mu)).mean()),
                sigma_mean=float(np.asarray(state.sigma).mean()),
                base=_base_name(cfg.eta),
            )
            rows[prompt][method.name] = summary
        if on_update is not None:
            on_update(results())
        log(f"{method.name}: {len(todo)} prompts in {time.perf_counter() - t0:.0f}s")
    return results()


def _interleave(rare: Sequence, common: Sequence) -> list:
    """Two rare prompts, then one common, and so on (the sets are 2:1)."""
    out, r, c = [], list(rare), list(common)
    while r or c:
        out += r[:2] + c[:1]
        r, c = r[2:], c[1:]
    return out


def _results(rows, n_images, calls, base_cfg, seed, model, methods) -> dict[str, Any]:
    settings = {
        "n_images": n_images,
        "calls": calls,
        "steps": base_cfg.steps,
        "guidance": base_cfg.guidance,
        "seed": seed,
        "model": base_cfg.model,  # None = the shipped model
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


def _paired_vs_base(rows, method: str) -> dict[str, Any]:
    """The method minus its base (``base`` / ``base_eta1``, as it was scored) prompt by prompt: mean difference of
    exact alignment and of diversity with t-intervals over prompts. Pairing removes the prompts' difficulty,
    which dominates the pooled intervals."""
    rows = list(rows)
    base = rows[0][method].get("base", "base")
    de = [r[method]["exact"] - r[base]["exact"] for r in rows]
    dd = [r[method].get("diversity", float("nan")) - r[base].get("diversity", float("nan")) for r in rows]
    em, elo, ehi = mean_ci_tuple(de)
    dm, dlo, dhi = mean_ci_tuple(dd)
    return {
        "vs": base,
        "exact_diff": em,
        "exact_diff_ci": (elo, ehi),
        "diversity_diff": dm,
        "diversity_diff_ci": (dlo, dhi),
    }


def aggregate(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per (group, method): pooled exact alignment (Wilson), mean reward pooled over images (t-interval),
    diversity as the mean of the prompts' pairwise distances (t-interval over prompts); ``best_of_n`` as the
    share of prompts where the best of the calls is exactly aligned (Wilson over prompts), and search success.

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
            rewards = [x for h in have for x in h.get("rewards", [h["reward"]])]
            rm, rlo, rhi = mean_ci_tuple(rewards)
            rlo, rhi = max(rlo, 0.0), min(rhi, 1.0)  # the shapes reward lies in [0, 1]
            dm, dlo, dhi = mean_ci_tuple([h.get("diversity", float("nan")) for h in have])
            g[method] = {
                "prompts": len(have),
                "exact": k / n,
                "exact_ci": wilson(k, n),
                "reward": rm,
                "reward_ci": (rlo, rhi),
                "diversity": dm,
                "diversity_ci": (dlo, dhi),
            }
            if not method.startswith("base"):
                g[method].update(_paired_vs_base(sel.values(), method))
        if all("best_of_n" in r for r in sel.values()):
            found = [r["best_of_n"]["found_exact"] for r in sel.values()]
            rm, rlo, rhi = mean_ci_tuple([r["best_of_n"]["best_reward"] for r in sel.values()])
            g["best_of_n"] = {
                "prompts": len(found),
                "exact": float(np.mean(found)),
                "exact_ci": wilson(sum(found), len(found)),
                "reward": rm,
                "reward_ci": (rlo, rhi),
                "one_image": True,
            }
        searches = {}
        if "best_of_n" in g:
            searches["best_of_n"] = g["best_of_n"]["exact"]
        for method, v in g.items():
            if not method.startswith("base") and not v.get("one_image"):
                searches[method] = float(np.mean([r[method]["found_exact_during_run"] for r in sel.values()]))
        g["search"] = searches
        out[group] = g
    return out


def _ci(v: float, ci, *, signed: bool = False) -> str:
    lo, hi = ci
    if v is None or not np.isfinite(v):
        return "–"
    f = "+.3f" if signed else ".3f"
    return f"{v:{f}} [{lo:{f}}, {hi:{f}}]" if np.isfinite(lo) else f"{v:{f}}"


def _method_rows(agg: dict[str, Any]):
    """``(group, method, figures)`` of every method row of :func:`aggregate`'s result (not the searches)."""
    for group, g in agg.items():
        for method, v in g.items():
            if method != "search":
                yield group, method, v


def to_markdown(results: dict[str, Any]) -> str:
    """The README tables: per group (exact alignment, mean reward, diversity), searches, and per prompt."""
    agg = results["aggregate"]
    st = results["settings"]
    calls = st.get("calls", st.get("iterations"))
    lines = [
        f"{st['n_images']} fresh images per prompt and learned distribution, {calls} reward calls per prompt and "
        f"method, {st['steps']} DDIM steps, CFG {st['guidance']}, seed {st['seed']}. `best_of_n` is one image per "
        "prompt (the best of the calls): its 'exact' is the share of prompts where that image is exactly aligned.",
        "",
        "| set | method | prompts | exact alignment [95% CI] | mean reward [95% CI] | diversity [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for group, method, v in _method_rows(agg):
        div = "one image" if v.get("one_image") else _ci(v["diversity"], v["diversity_ci"])
        lines.append(
            f"| {group} | {method} | {v['prompts']} | {_ci(v['exact'], v['exact_ci'])} | "
            f"{_ci(v['reward'], v['reward_ci'])} | {div} |"
        )
    lines += [
        "",
        "Paired against the base each method was scored with (per prompt: method minus base, mean over the "
        "prompts, t-interval over prompts; an interval above 0 is a gain beyond the prompts' spread):",
        "",
        "| set | method | against | exact alignment difference [95% CI] | diversity difference [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for group, method, v in _method_rows(agg):
        if "exact_diff" in v:
            lines.append(
                f"| {group} | {method} | {v['vs']} | {_ci(v['exact_diff'], v['exact_diff_ci'], signed=True)} | "
                f"{_ci(v['diversity_diff'], v['diversity_diff_ci'], signed=True)} |"
            )
    lines += [
        "",
        f"Searches: share of prompts where an exactly aligned image was found within {calls} reward calls "
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
