"""Run directories: what a FIND run writes, how a rerun is recognised, and how its state is read back.

A single-prompt run directory (``find-jax optimize --prompt``)::

    config.json     every config field, the frozen model's id and weights hash, latent shape, embedding hash
    metrics.jsonl   one line per iteration (flat keys, see README)
    checkpoints/    Orbax: the whole FindState (policy, DRCM, optimiser states, replay, step, rng)
    final_*.npy     final latents / samples / rewards (+ PNGs from :mod:`find_jax.report`)

A prompt-set workdir (``--prompts-file``) holds ``batch.json`` (the shared config, model and latent shape; a
rerun must match it), ``prompts.json`` (``[{"index", "prompt", "category", "dir"}, ...]``) and one such run
directory ``NNN-<slug>/`` per prompt, each with a ``status.json`` as well. A rerun of the same command resumes;
a directory of another setup, or one holding unrelated files, raises :class:`RunDirError` and is left untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from find_jax import checkpoint as ckpt
from find_jax import trainer
from find_jax.checkpoint import CheckpointError
from find_jax.config import FindConfig, config_diff, config_from_dict, config_hash, config_to_dict

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
BATCH_FILE = "batch.json"
PROMPTS_FILE = "prompts.json"
STATUS_FILE = "status.json"
RUN_FORMAT_VERSION = 1
BATCH_FORMAT_VERSION = 1


class RunDirError(RuntimeError):
    """The workdir cannot be used for this run (another config/model/shape, or not a find-jax run)."""


class BadRewardError(RuntimeError):
    """Too many non-finite rewards: the run stopped (its last good state is checkpointed)."""


@dataclasses.dataclass
class PromptResult:
    """How one prompt of a batch ended."""

    index: int  # position in prompts.json
    prompt: str  # the text prompt
    category: str  # its category ("" if none)
    dir: str  # its run directory, relative to the batch workdir
    status: str  # "done", "failed", or "skipped" (another process's group)
    step: int  # iterations done
    error: str = ""  # why it failed
    time_s: float = 0.0  # optimisation time spent on it in this call (group time / running prompts)


@dataclasses.dataclass
class BatchResult:
    """What :func:`optimize_batch` did: one :class:`PromptResult` per prompt, in prompt order."""

    workdir: Path
    results: list[PromptResult]
    devices: int  # devices the prompt axis was sharded over

    @property
    def failed(self) -> list[PromptResult]:
        """The prompts that failed."""
        return [r for r in self.results if r.status == "failed"]


def array_hash(a: np.ndarray | None) -> str:
    """A 16-hex-digit SHA-256 of ``a`` as float32 bytes and shape (``""`` for ``None``): the prompt embedding's
    fingerprint in ``config.json``. Exact: any change of a bit gives another hash."""
    if a is None:
        return ""
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()[:16]


def run_record(config, latent_shape, embed_dim, model_id, weights_hash, embedding_hash) -> dict[str, Any]:
    """The run's ``config.json`` record: config, frozen model id and hash, ``latent_shape``,
    ``embed_dim`` and the prompt embedding's :func:`array_hash`; a resume must match it."""
    return {
        "format_version": RUN_FORMAT_VERSION,
        "config": config_to_dict(config),
        "model_id": model_id,
        "weights_hash": weights_hash,
        "latent_shape": list(latent_shape),
        "embed_dim": embed_dim,
        "prompt_embedding_hash": embedding_hash,
    }


def read_run(workdir: str | Path) -> tuple[FindConfig, dict[str, Any]]:
    """``(config, record)`` from a run directory's ``config.json`` (record: model id, shapes, hashes)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise RunDirError(f"{workdir} is not a find-jax run directory: {CONFIG_FILE} is missing")
    try:
        record = json.loads(path.read_text())
        config = config_from_dict(record["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path} is unreadable or not a find-jax run config: {e}") from e
    return config, record


def prepare_workdir(workdir: Path, record: dict[str, Any], config: FindConfig) -> bool:
    """Creates ``workdir`` or checks it belongs to this run; returns True if it holds a previous run."""
    if workdir.exists() and not workdir.is_dir():
        raise RunDirError(f"workdir {workdir} exists and is not a directory")
    cfg_path = workdir / CONFIG_FILE
    if workdir.exists() and not cfg_path.exists():
        if any(workdir.iterdir()):
            raise RunDirError(
                f"workdir {workdir} is not empty and has no {CONFIG_FILE}: refusing to write a run into it "
                "(choose a new or empty directory)"
            )
    if cfg_path.exists():
        old_config, old = read_run(workdir)
        problems = [
            f"config.{k}: existing {a!r}, requested {b!r}" for k, (a, b) in config_diff(old_config, config).items()
        ]
        for key in ("model_id", "weights_hash", "latent_shape", "embed_dim", "prompt_embedding_hash"):
            if old.get(key) != record[key]:
                problems.append(f"{key}: existing {old.get(key)!r}, requested {record[key]!r}")
        if problems:
            raise RunDirError(
                f"workdir {workdir} holds a run with a different setup, refusing to resume or overwrite it: "
                + "; ".join(problems)
                + ". Use a new --workdir, or the same settings to resume."
            )
        return True
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(cfg_path)
    return False


def checkpoint_meta(config: FindConfig, record: dict[str, Any]) -> dict[str, Any]:
    """The metadata stored with (and checked on restore of) each checkpoint: config hash, latent shape,
    ``embed_dim``, model id and weights hash, from ``record`` (:func:`run_record`)."""
    return {
        "config_hash": config_hash(config),
        "latent_shape": list(record["latent_shape"]),
        "embed_dim": record["embed_dim"],
        "model_id": record["model_id"],
        "weights_hash": record["weights_hash"],
    }


def batch_record(config: FindConfig, latent_shape, embed_dim: int, model_id: str, weights_hash: str) -> dict[str, Any]:
    """The prompt set's ``batch.json`` record (``config`` with its prompt blanked); a rerun must match it."""
    return {
        "format_version": BATCH_FORMAT_VERSION,
        "config": config_to_dict(config),
        "model_id": model_id,
        "weights_hash": weights_hash,
        "latent_shape": list(latent_shape),
        "embed_dim": embed_dim,
    }


def last_logged_step(run_dir: Path) -> int:
    """The last ``step`` of ``run_dir/metrics.jsonl`` (0 without one; a torn last line is ignored)."""
    from find_jax.metrics import read_metrics

    records = read_metrics(run_dir / METRICS_FILE)
    return int(records[-1].get("step", 0)) if records else 0


def save_arrays(run_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes each ``name -> array`` as ``run_dir/name.npy`` atomically (a temporary file, then a rename)."""
    for name, arr in arrays.items():
        tmp = run_dir / f"{name}.tmp.npy"
        np.save(tmp, arr)
        tmp.replace(run_dir / f"{name}.npy")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def read_batch(workdir: str | Path) -> tuple[FindConfig, list[dict[str, Any]], dict[str, Any]]:
    """``(config, prompts, record)`` of a batch workdir (``batch.json`` + ``prompts.json``)."""
    workdir = Path(workdir)
    path, ppath = workdir / BATCH_FILE, workdir / PROMPTS_FILE
    if not path.is_file() or not ppath.is_file():
        raise RunDirError(f"{workdir} is not a find-jax batch directory: {BATCH_FILE} or {PROMPTS_FILE} is missing")
    try:
        record = json.loads(path.read_text())
        config = config_from_dict(record["config"])
        prompts = json.loads(ppath.read_text())
        if not isinstance(prompts, list) or not all(isinstance(p, dict) and "dir" in p for p in prompts):
            raise ValueError(f"{PROMPTS_FILE} is not a list of prompt records")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{workdir} holds an unreadable batch record: {e}") from e
    return config, prompts, record


def prepare_batch_dir(workdir: Path, record: dict[str, Any], prompts: list[dict[str, Any]], config: FindConfig):
    """Creates the batch workdir or checks that it holds this very batch (same config, model, prompt list)."""
    if workdir.exists() and not workdir.is_dir():
        raise RunDirError(f"workdir {workdir} exists and is not a directory")
    if (workdir / CONFIG_FILE).exists():
        raise RunDirError(
            f"workdir {workdir} holds a single-prompt run (config.json): choose another --workdir for a prompt set"
        )
    if (workdir / BATCH_FILE).exists():
        old_config, old_prompts, old = read_batch(workdir)
        problems = [
            f"config.{k}: existing {a!r}, requested {b!r}" for k, (a, b) in config_diff(old_config, config).items()
        ]
        for key in ("model_id", "weights_hash", "latent_shape", "embed_dim"):
            if old.get(key) != record[key]:
                problems.append(f"{key}: existing {old.get(key)!r}, requested {record[key]!r}")
        if [(p["prompt"], p.get("category", "")) for p in old_prompts] != [
            (p["prompt"], p["category"]) for p in prompts
        ]:
            problems.append(f"the prompt list differs ({len(old_prompts)} prompts there, {len(prompts)} requested)")
        if problems:
            raise RunDirError(
                f"workdir {workdir} holds a batch with a different setup, refusing to resume or overwrite it: "
                + "; ".join(problems)
                + ". Use a new --workdir, or the same settings to resume."
            )
        return
    # Other processes of a multi-host launch may be writing the same two files right now (atomically).
    ours = (BATCH_FILE, PROMPTS_FILE)
    if workdir.exists() and any(p.name not in ours and not p.name.startswith(".") for p in workdir.iterdir()):
        raise RunDirError(
            f"workdir {workdir} is not empty and has no {BATCH_FILE}: refusing to write a batch into it "
            "(choose a new or empty directory)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / PROMPTS_FILE, prompts)
    write_json(workdir / BATCH_FILE, record)


def write_status(run_dir: Path, result: PromptResult) -> None:
    write_json(run_dir / STATUS_FILE, {"status": result.status, "step": result.step, "error": result.error})


def load_state(workdir: str | Path, *, step: int | None = None) -> trainer.FindState:
    """The state of the latest (or ``step``'s) checkpoint in ``workdir``.

    The template comes from the run's ``config.json``; a checkpoint written for another latent shape,
    config or model, or a corrupt one, raises :class:`~find_jax.checkpoint.CheckpointError` with the reason.
    """
    workdir = Path(workdir)
    config, record = read_run(workdir)
    ckpt_dir = workdir / CHECKPOINT_DIR
    if not ckpt_dir.exists():
        raise CheckpointError(f"{workdir} has no checkpoints yet ({ckpt_dir} is missing)")
    template = trainer.init_state(config, tuple(record["latent_shape"]), embed_dim=int(record["embed_dim"]))
    manager = ckpt.make_manager(ckpt_dir)
    state, _ = ckpt.restore_checkpoint(manager, template, checkpoint_meta(config, record), step=step)
    return state
