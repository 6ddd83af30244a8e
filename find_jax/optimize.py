"""The main job: FIND on a frozen diffusion model (image or video), wired from a :class:`FindConfig`.

:func:`run` (one prompt, ``find-jax optimize --prompt``) and :func:`run_batch` (a prompt set, ``--prompts-file``)
load the frozen model and build its environment (:mod:`find_jax.envs`), the reward and, for a text-conditioned
DRCM, the prompt embeddings, then hand everything to the one loop, :func:`find_jax.loop.run_prompts`. A single
run is a prompt set of one whose run directory is the workdir itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from find_jax import envs, rundir
from find_jax.config import FindConfig, get_preset
from find_jax.loop import ProgressSink, PromptRun, optimize_one, run_prompts
from find_jax.prompts import PromptItem, prompts_to_json
from find_jax.rundir import BatchResult

log = logging.getLogger(__name__)

MODEL_DEFAULTS_FILE = "find_defaults.json"  # optional, in a model directory: FindConfig fields it prefers
PAPER_REWARD = "imagereward"  # the paper's reward for models that name no default


def model_defaults(model: str | None) -> dict[str, Any]:
    """Config fields a model directory recommends (``find_defaults.json``), e.g. the shipped shapes model's
    reward ``shapes`` and its 20 DDIM steps. Empty when the file is absent."""
    path = envs.resolve_model_dir(model) / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def make_config(preset: str = "paper", **overrides: Any) -> FindConfig:
    """``preset`` + the model's recommended fields + ``overrides`` (explicit flags win).

    The reward defaults to the model's recommendation, else the paper's ImageReward.
    """
    defaults = model_defaults(overrides.get("model"))
    defaults.setdefault("reward", PAPER_REWARD)
    return get_preset(preset, **{**defaults, **{k: v for k, v in overrides.items() if v is not None}})


def build_environment(config: FindConfig, model: Any = None, *, weights: str = "auto", mesh: Any = "auto"):
    """``(model, env)`` for ``config``: the frozen model (read from the ``weights`` files unless given) and its
    environment with ``config``'s sampler settings (:func:`find_jax.envs.make_environment`)."""
    model = model or envs.load_model(config.model, dtype=config.dtype, weights=weights)
    return model, envs.make_environment(model, envs.sampler_settings(config), mesh=mesh)


def check_prompts(reward_fn: Callable, prompts: Sequence[str]) -> None:
    """Refuses, before anything is written, prompts the reward cannot score (e.g. the shapes reward's grammar):
    rewards may carry ``check_prompts(prompts)``, which raises ``ValueError``."""
    check = getattr(reward_fn, "check_prompts", None)
    if check is not None:
        check(list(prompts))


def run(
    config: FindConfig,
    workdir: str | Path,
    *,
    progress: ProgressSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    model: Any = None,
    weights: str = "auto",
):
    """Runs (or resumes) FIND for ``config.prompt`` in ``workdir``; returns the final
    :class:`~find_jax.trainer.FindState`. ``model``: the loaded model to use; else ``config.model`` is loaded from
    its ``weights`` files. Too many bad rewards raise :class:`~find_jax.rundir.BadRewardError`, NaN parameters
    ``FloatingPointError``, an interrupt :class:`~find_jax.loop.Interrupted` (state checkpointed)."""
    from reward_models import make_reward

    if not config.prompt.strip():
        raise ValueError("config.prompt is empty: give the text prompt to optimise for")
    reward_fn = make_reward(config.reward, **dict(config.reward_options))
    check_prompts(reward_fn, [config.prompt])
    model, env = build_environment(config, model, weights=weights)
    embedding = env.prompt_embeddings([config.prompt])[0] if config.drcm_text_conditioned else None
    return optimize_one(
        config,
        workdir,
        env=env,
        reward_fn=reward_fn,
        prompt_embedding=embedding,
        progress=progress,
        should_stop=should_stop,
    )


def run_batch(
    config: FindConfig,
    prompts: Sequence[PromptItem],
    workdir: str | Path,
    *,
    batch_prompts: int = 1,
    progress: ProgressSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    model: Any = None,
    devices: Sequence[jax.Device] | None = None,
    weights: str = "auto",
) -> BatchResult:
    """FIND over ``prompts`` on ``config.model`` with ``config.reward`` (``find-jax optimize --prompts-file``).

    Loads the model and reward once, writes ``batch.json`` / ``prompts.json`` (a rerun must match them), runs
    groups of ``batch_prompts`` prompts with the prompt axis sharded over ``devices``, and writes each finished
    prompt's ``reward_curve.png`` and ``final_samples.png`` (:func:`find_jax.report.write_run_report`).
    """
    from find_jax.report import write_run_report
    from reward_models import make_reward

    if batch_prompts < 1:
        raise ValueError(f"--batch-prompts must be >= 1; got {batch_prompts}")
    items = list(prompts)
    if not items:
        raise ValueError("the prompt set is empty: give at least one prompt")
    reward_fn = make_reward(config.reward, **dict(config.reward_options))
    check_prompts(reward_fn, [it.text for it in items])
    model, env = build_environment(config, model, weights=weights)
    embeddings = None
    if config.drcm_text_conditioned:
        # One batched, jitted text-encoder pass for every prompt (chunked independently of batch_prompts, so a
        # resume with another group size gets the same embedding bits; config.json records their hash).
        embeddings = env.prompt_embeddings([it.text for it in items])
    workdir = Path(workdir)
    records = prompts_to_json(items)
    base = dataclasses.replace(config, prompt="")
    embed_dim = 0 if embeddings is None else int(embeddings.shape[1])
    record = rundir.batch_record(base, env.latent_shape, embed_dim, env.source, env.fingerprint)
    rundir.prepare_batch_dir(workdir, record, records, base)
    runs = [PromptRun(r["index"], r["prompt"], r["category"], workdir / r["dir"], r["dir"]) for r in records]
    result = run_prompts(
        config,
        runs,
        workdir,
        env=env,
        reward_fn=reward_fn,
        embeddings=embeddings,
        batch_prompts=batch_prompts,
        devices=devices,
        progress=progress,
        should_stop=should_stop,
    )
    for r in result.results:
        if r.status == "done":
            log.info("%s: %s", r.dir, write_run_report(workdir / r.dir))
    return result


def batch_summary(result: BatchResult) -> str:
    """One line: how many prompts finished, failed, belong to other processes."""
    counts: dict[str, int] = {}
    for r in result.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    total = sum(r.time_s for r in result.results)
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    if math.isfinite(total) and total > 0:
        text += f"; {total:.1f} s optimisation time"
    return text


__all__ = ["batch_summary", "build_environment", "check_prompts", "make_config", "model_defaults", "run", "run_batch"]
