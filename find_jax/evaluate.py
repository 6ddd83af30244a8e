"""Evaluation of FIND runs: base vs optimised images for the same seeds, scored, tabled, pictured.

For every prompt of a batch workdir (``prompts.json``, :mod:`find_jax.rundir`) or of a single run directory,
:func:`evaluate` draws ``num_images`` noises ``z_i ~ N(0, I)`` from ``PRNGKey(seed)`` and samples

* the base image from ``x_T = z_i`` (the frozen model as is), and
* the FIND image from ``x_T = mu + sigma * z_i`` (the learned N(mu, sigma^2), Eq. 6),

with the same DDIM eta noise for both, so each pair differs only by the learned distribution (the FIND images
are those of ``find-jax sample --workdir RUN --seed S --num-images N --batch-size B``). Each image is
scored by every requested reward (e.g. ``imagereward,aesthetic`` as the paper's Table 1).

Statistics: per prompt, the mean and a 95% Student-t interval over its images for base, FIND and the paired
difference FIND - base, and the fraction of pairs FIND wins. Per category (and ``all``), prompts are the
units: the mean of the prompt means with a 95% t-interval over prompts (none for a single prompt). The
optimisation time of a prompt is the sum of its ``time/iter_s`` in ``metrics.jsonl`` (in a batched run,
the group's wall time shared among its running prompts).

Outputs (``OUT`` defaults to ``WORKDIR/eval``): ``eval.json`` (settings, per-image scores, the tables),
``eval.md`` (the tables), ``grids/NNN-<slug>.png`` (top row base, bottom row FIND, one column per seed)
and ``reward_curves.png`` (every prompt's smoothed training reward and their mean).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from find_jax.metrics import read_metrics
from find_jax.prompts import slugify
from find_jax.report import save_figure, save_grid, smooth
from find_jax.stats import mean_ci

logger = logging.getLogger(__name__)

EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
GRID_DIR = "grids"
CURVES_PNG = "reward_curves.png"


@dataclasses.dataclass(frozen=True)
class RunEntry:
    """One optimised prompt to evaluate."""

    index: int  # position in the prompt set (0 for a single run)
    prompt: str  # the text prompt
    category: str  # its category ("" if none)
    run_dir: Path  # its run directory (config.json, checkpoints/, metrics.jsonl)
    name: str  # NNN-<slug>: the name of its grid file


def list_runs(workdir: str | Path) -> list[RunEntry]:
    """The runs of a batch workdir (``prompts.json``) or the one run of a single-run directory."""
    from find_jax.rundir import CONFIG_FILE, PROMPTS_FILE, RunDirError, read_batch, read_run

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"workdir {workdir} does not exist")
    if (workdir / PROMPTS_FILE).is_file():
        _, prompts, _ = read_batch(workdir)
        return [
            RunEntry(int(p["index"]), p["prompt"], p.get("category", ""), workdir / p["dir"], p["dir"]) for p in prompts
        ]
    if (workdir / CONFIG_FILE).is_file():
        config, _ = read_run(workdir)
        return [RunEntry(0, config.prompt, "", workdir, f"000-{slugify(config.prompt)}")]
    raise RunDirError(
        f"{workdir} is neither a batch workdir ({PROMPTS_FILE}) nor a FIND run directory ({CONFIG_FILE}); "
        "pass the --workdir given to `find-jax optimize`"
    )


def optimisation_time_s(run_dir: str | Path) -> tuple[float, int]:
    """``(seconds, iterations)`` logged in ``metrics.jsonl``: the sum of ``time/iter_s`` and the last step."""
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    total = float(sum(float(r.get("time/iter_s", 0.0)) for r in records))
    return total, int(records[-1]["step"]) if records else 0


class _Environments:
    """Loaded models and environments, shared by every run that uses the same model and sampler settings."""

    def __init__(self, model: Any = None, *, dtype: str | None = None, weights: str = "auto"):
        self.given = model
        self.dtype = dtype  # None: each run's config.dtype
        self.weights = weights
        self.models: dict[tuple, Any] = {}
        self.envs: dict[tuple, Any] = {}

    def model(self, config) -> Any:
        if self.given is not None:
            return self.given
        from find_jax import envs

        key = (config.model, self.dtype or config.dtype)
        if key not in self.models:
            self.models[key] = envs.load_model(config.model, dtype=key[1], weights=self.weights)
        return self.models[key]

    def environment(self, config):
        """The environment of ``config``'s model and sampler settings (built once per distinct pair)."""
        from find_jax import envs

        model = self.model(config)
        settings = envs.sampler_settings(config)
        key = (id(model), settings)
        if key not in self.envs:
            self.envs[key] = envs.make_environment(model, settings)
        return self.envs[key]


def sample_pairs(env_fn, state, *, num_images: int, seed: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(base [n, ...], find [n, ...])`` from ``x_T = z`` and ``x_T = mu + sigma z`` (same z, same eta noise per
    batch of ``batch_size``; the last batch padded so the sampler compiles once). ``env_fn(latents [B, ...], rng)
    -> media [B, ...]``: the run's environment bound to its prompt (:func:`find_jax.envs.base.bind_one`)."""
    from find_jax.trainer import sample_from_state

    rng = jax.random.PRNGKey(seed)
    _, rng_eta = jax.random.split(rng)
    shape = tuple(state.policy.mu.shape)
    find_x = np.asarray(sample_from_state(state, rng, num_images), np.float32)
    base_x = np.asarray(jax.random.normal(rng, (num_images, *shape), np.float32))
    bs = max(1, min(batch_size, num_images))
    out: dict[str, list[np.ndarray]] = {"base": [], "find": []}
    for i, start in enumerate(range(0, num_images, bs)):
        rng_i = jax.random.fold_in(rng_eta, i)
        for name, xs in (("base", base_x), ("find", find_x)):
            x = xs[start : start + bs]
            pad = bs - x.shape[0]
            if pad:
                x = np.concatenate([x, np.zeros((pad, *shape), np.float32)])
            out[name].append(np.asarray(jax.device_get(env_fn(x, rng_i)), np.float32)[: bs - pad])
    return np.concatenate(out["base"]), np.concatenate(out["find"])


def make_reward_fns(
    names: Sequence[str], configs: Sequence[Any] = (), options: dict[str, dict[str, Any]] | None = None
) -> dict[str, Callable]:
    """``{name: reward_fn}``. A reward that a run optimised gets that run's ``reward_options`` (e.g. its
    weights path); ``options[name]`` adds to / overrides them."""
    from reward_models import make_reward, spec

    options = options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"reward options given for {unknown}, which are not among the evaluated rewards {list(names)}")
    fns = {}
    for name in names:
        spec(name)  # unknown names: a clear error listing the valid ones, before any sampling
        kwargs: dict[str, Any] = {}
        for cfg in configs:
            if cfg.reward == name:
                kwargs = dict(cfg.reward_options)
                break
        kwargs.update(options.get(name, {}))
        fns[name] = make_reward(name, **kwargs)
    return fns


def parse_reward_names(text: str | Sequence[str]) -> list[str]:
    """``"imagereward,aesthetic"`` -> ``["imagereward", "aesthetic"]`` (no empty or repeated names)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    if not names or any(not n for n in names):
        raise ValueError(f"--reward takes NAME[,NAME...]; got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--reward names repeat: {names}")
    return names


def evaluate(
    workdir: str | Path,
    *,
    rewards: str | Sequence[str],
    num_images: int,
    seed: int = 0,
    batch_size: int = 8,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: Any = None,
    model: Any = None,
    reward_options: dict[str, dict[str, Any]] | None = None,
    reward_fns: dict[str, Callable] | None = None,
    dtype: str | None = None,
    weights: str = "auto",
) -> dict[str, Any]:
    """Evaluates every run of ``workdir`` (see the module doc); writes ``OUT`` and returns the report dict.

    rewards: reward names (``"a,b"`` or a list); reward_options: ``{name: {option: value}}`` for the reward
    factories; reward_fns: prebuilt ``{name: reward_fn}`` instead (tests);
    model: a loaded model to use instead of each run's ``config.model``; otherwise each run's model is loaded
    with ``dtype`` (default: the run's) from the ``weights`` files (see :func:`load_model`). Runs without a
    checkpoint are listed with status ``not optimised`` and left out of the statistics. An ``OUT`` that already holds an
    evaluation raises ``FileExistsError`` unless ``overwrite``. progress: a sink with ``start(total, desc)``,
    ``update(n, **fields)``, ``close()`` (:class:`find_jax.loop.ProgressSink`; the CLI draws it), one unit a run.
    """
    from find_jax.checkpoint import CheckpointError
    from find_jax.envs.base import bind_one
    from find_jax.rundir import STATUS_FILE, load_state, read_run

    if num_images < 1:
        raise ValueError(f"--num-images must be >= 1; got {num_images}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    names = parse_reward_names(rewards)
    workdir = Path(workdir)
    entries = list_runs(workdir)
    out = Path(out) if out is not None else workdir / "eval"
    if (out / EVAL_JSON).exists() and not overwrite:
        raise FileExistsError(
            f"{out} already holds an evaluation ({EVAL_JSON}); choose another --out or pass --overwrite"
        )
    runs = [read_run(e.run_dir) if (e.run_dir / "config.json").is_file() else (None, {}) for e in entries]
    configs = [config for config, _ in runs]
    fns = (
        dict(reward_fns)
        if reward_fns is not None
        else make_reward_fns(names, [c for c in configs if c], reward_options)
    )
    missing = [n for n in names if n not in fns]
    if missing:
        raise ValueError(f"no reward function for {missing}")
    (out / GRID_DIR).mkdir(parents=True, exist_ok=True)
    environments = _Environments(model, dtype=dtype, weights=weights)
    rows = []
    if progress is not None:
        progress.start(len(entries), "evaluate")
    for entry, (config, record) in zip(entries, runs, strict=True):
        row: dict[str, Any] = {
            "index": entry.index,
            "prompt": entry.prompt,
            "category": entry.category,
            "dir": str(entry.run_dir.relative_to(workdir)) if entry.run_dir != workdir else ".",
            "rewards": {},
        }
        status_path = entry.run_dir / STATUS_FILE
        row["status"] = json.loads(status_path.read_text()).get("status", "") if status_path.is_file() else ""
        row["opt_time_s"], row["iterations_logged"] = optimisation_time_s(entry.run_dir)
        try:
            if config is None:
                raise CheckpointError("no config.json")
            state = load_state(entry.run_dir)
        except CheckpointError as e:
            logger.warning("%s: not evaluated (%s)", entry.name, e)
            row.update(status="not optimised", step=0)
            rows.append(row)
            if progress is not None:
                progress.update(1, prompt=entry.name)
            continue
        row["step"] = int(state.step)
        row["iterations"] = config.iterations
        row["status"] = row["status"] or ("done" if int(state.step) == config.iterations else "partial")
        env = environments.environment(config)
        recorded = record.get("weights_hash")
        if recorded and recorded != env.fingerprint:
            logger.warning(
                "%s: the model's weights differ from the run's (%s): images may not match", entry.name, recorded
            )
        env_fn = bind_one(env, config.prompt)
        base, find = sample_pairs(env_fn, state, num_images=num_images, seed=seed, batch_size=batch_size)
        prompts = [entry.prompt] * num_images
        for name in names:
            b = np.asarray(fns[name](base, prompts), np.float64)
            f = np.asarray(fns[name](find, prompts), np.float64)
            row["rewards"][name] = {
                "base": mean_ci(b),
                "find": mean_ci(f),
                "delta": mean_ci(f - b),
                "win_rate": float(np.mean(f > b)),
                "base_scores": b.tolist(),
                "find_scores": f.tolist(),
            }
        h = base.shape[-3]  # image or frame height
        save_grid(
            np.concatenate([base, find]),
            out / GRID_DIR / f"{entry.name}.png",
            columns=num_images,
            scale=max(1, 64 // h),
        )
        rows.append(row)
        if progress is not None:
            progress.update(1, prompt=entry.name)
    if progress is not None:
        progress.close()
    report = {
        "workdir": str(workdir),
        "settings": {"rewards": names, "num_images": num_images, "seed": seed, "batch_size": batch_size},
        "prompts": rows,
        "categories": summarize(rows, names),
    }
    tmp = out / f".{EVAL_JSON}.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / EVAL_JSON)
    (out / EVAL_MD).write_text(render_markdown(report))
    plot_reward_curves([(e.name, e.run_dir) for e in entries], out / CURVES_PNG)
    return report


def summarize(rows: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-category rows (in order of first appearance) and a final ``all`` row; prompts are the units."""
    evaluated = [r for r in rows if r["rewards"]]
    order: list[str] = []
    for r in evaluated:
        if r["category"] not in order:
            order.append(r["category"])
    groups = [(c, [r for r in evaluated if r["category"] == c]) for c in order] + [("all", evaluated)]
    out = []
    for category, members in groups:
        entry: dict[str, Any] = {
            "category": category,
            "prompts": len(members),
            "opt_time_s": mean_ci([r["opt_time_s"] for r in members]),
            "rewards": {},
        }
        for name in names:
            entry["rewards"][name] = {
                key: mean_ci([r["rewards"][name][key]["mean"] for r in members]) for key in ("base", "find", "delta")
            }
            entry["rewards"][name]["win_rate"] = (
                float(np.mean([r["rewards"][name]["win_rate"] for r in members])) if members else None
            )
        out.append(entry)
    return out


def _fmt(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:.4f}"
    if stat.get("lo") is not None:
        text += f" [{stat['lo']:.4f}, {stat['hi']:.4f}]"
    return text


def _fmt_time(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.1f} s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables in Markdown: per reward, one per-category and one per-prompt table."""
    s = report["settings"]
    lines = [
        f"# FIND evaluation of `{report['workdir']}`",
        "",
        f"{s['num_images']} images per prompt, seed {s['seed']}: base `x_T = z`, FIND `x_T = mu + sigma z` with "
        "the same z and DDIM noise. Values: mean [95% t-interval]; Δ = FIND − base per image pair; win = fraction "
        "of pairs where FIND scores higher. Categories average the prompt means (interval over prompts). Opt. time: "
        "total optimisation time per prompt.",
    ]
    for name in s["rewards"]:
        lines += [
            "",
            f"## Reward `{name}`",
            "",
            "| category | prompts | base | FIND | Δ | win | opt. time / prompt |",
            "|---|---:|---|---|---|---:|---:|",
        ]
        for c in report["categories"]:
            r = c["rewards"][name]
            win = "–" if r["win_rate"] is None else f"{100 * r['win_rate']:.0f}%"
            lines.append(
                f"| {_cell(c['category'] or '(none)')} | {c['prompts']} | {_fmt(r['base'])} | {_fmt(r['find'])} | "
                f"{_fmt(r['delta'])} | {win} | {_fmt_time(c['opt_time_s']['mean'])} |"
            )
        lines += [
            "",
            "| # | prompt | category | step | base | FIND | Δ | win | opt. time |",
            "|---:|---|---|---:|---|---|---|---:|---:|",
        ]
        for row in report["prompts"]:
            r = row["rewards"].get(name)
            if r is None:
                cells = ["–"] * 4
            else:
                cells = [_fmt(r["base"]), _fmt(r["find"]), _fmt(r["delta"]), f"{100 * r['win_rate']:.0f}%"]
            step = f"{row.get('step', 0)}" + ("" if row["status"] in ("done", "") else f" ({row['status']})")
            lines.append(
                f"| {row['index']} | {_cell(row['prompt'])} | {_cell(row['category'])} | {step} | "
                + " | ".join(cells)
                + f" | {_fmt_time(row['opt_time_s'])} |"
            )
    return "\n".join(lines) + "\n"


def plot_reward_curves(runs: Sequence[tuple[str, Path]], out: str | Path) -> Path | None:
    """Every run's training reward (EMA-smoothed, thin) and the mean over runs (thick) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for _, run_dir in runs:
        rows = [m for m in read_metrics(Path(run_dir) / "metrics.jsonl") if "reward/mean" in m]
        if rows:
            curves.append(smooth(np.array([m["reward/mean"] for m in rows], np.float64)))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for c in curves:
        ax.plot(np.arange(1, len(c) + 1), c, color="tab:blue", alpha=0.25, lw=1)
    length = min(len(c) for c in curves)
    ax.plot(
        np.arange(1, length + 1),
        np.mean([c[:length] for c in curves], axis=0),
        color="tab:red",
        lw=2,
        label=f"mean of {len(curves)} prompts",
    )
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward (EMA 0.9)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


__all__ = [
    "RunEntry",
    "evaluate",
    "list_runs",
    "make_reward_fns",
    "optimisation_time_s",
    "parse_reward_names",
    "plot_reward_curves",
    "render_markdown",
    "sample_pairs",
    "summarize",
]
