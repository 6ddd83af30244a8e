"""Orbax checkpoints of the full FIND state (DESIGN.md §8, STYLE.md "Running").

A checkpoint holds every array of :class:`~find_jax.trainer.FindState` (policy, DRCM, both optimiser
states, replay buffer, step, rng, bad-reward count) as a flat ``{"policy.mu": array, ...}`` dict, plus a
JSON ``meta`` item (latent shape, config hash, model id, weights hash, format version). The frozen
diffusion weights are never saved: the run records their id and hash instead.

Restoring checks ``meta`` against what the caller expects and refuses a checkpoint written for another
latent shape, config or model with a :class:`CheckpointError` that says which value differs. Each saved step
also holds ``checksums.json`` (SHA-256 of every file Orbax wrote), so a truncated or altered checkpoint is
recognised before any library reads it (:class:`CorruptCheckpointError`, one line naming the step and the file);
:func:`restore_latest` then moves it aside (never deletes it) and falls back to the newest step that restores.
A restored state is checked leaf by leaf: shapes, dtypes, finite values, and its step against the directory's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

FORMAT_VERSION = 1
CHECKSUMS = "checksums.json"  # in each step directory: {relative path: sha256} of the files Orbax wrote
CORRUPT_DIR = "checkpoints.corrupt"  # beside checkpoints/: unreadable steps moved aside, never deleted

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, or written for another shape/config/model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files are damaged or unreadable (as opposed to one of another run's setup)."""


def _one_line(e: BaseException, limit: int = 160) -> str:
    """A library error as one short line (TensorStore errors embed multi-line JSON specs)."""
    text = " ".join(str(e).split())
    for cut in (" [source locations=", " tensorstore_spec=", "; spec=", ' {"driver"'):
        text = text.split(cut)[0]
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _file_digests(step_dir: Path) -> dict[str, str]:
    out = {}
    for f in sorted(step_dir.rglob("*")):
        if f.is_file() and f.name != CHECKSUMS:
            out[str(f.relative_to(step_dir))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def write_checksums(step_dir: Path) -> None:
    """Records the SHA-256 of every file of a finished step directory (atomically: temporary file, rename)."""
    tmp = step_dir / f".{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps(_file_digests(step_dir), indent=1, sort_keys=True))
    tmp.replace(step_dir / CHECKSUMS)


def verify_checksums(step_dir: Path) -> str | None:
    """Why ``step_dir``'s files differ from what was written (None if they match, or if it has no checksums:
    a checkpoint of an older find-jax, or one killed between its commit and its checksums)."""
    path = step_dir / CHECKSUMS
    if not path.is_file():
        return None
    try:
        want = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return f"{CHECKSUMS} is unreadable"
    have = _file_digests(step_dir)
    for name, digest in sorted(want.items()):
        if name not in have:
            return f"file {name} is missing"
        if have[name] != digest:
            return f"file {name} differs from what was written (truncated or altered)"
    extra = sorted(set(have) - set(want))
    return f"unexpected file {extra[0]}" if extra else None


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten_state(state: Any) -> dict[str, Any]:
    """``{"policy.mu": leaf, "policy_opt_state.0.mu.mu": leaf, ...}`` — one dotted key per array leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    flat = {}
    for path, leaf in leaves:
        flat[".".join(_key_name(k) for k in path)] = leaf
    if len(flat) != len(leaves):
        raise ValueError("state has two leaves with the same dotted path")
    return flat


def unflatten_state(template: Any, flat: dict[str, Any]) -> Any:
    """Puts ``flat``'s arrays back into the tree structure of ``template`` (inverse of flatten_state)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, _ in leaves:
        key = ".".join(_key_name(k) for k in path)
        out.append(flat[key])
    return jax.tree_util.tree_unflatten(treedef, out)


class _PartialRestoreFilter(logging.Filter):
    """Drops Orbax's warning for items deliberately left out of a restore (we read ``meta`` before ``state``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "could not be restored" not in record.getMessage()


logging.getLogger("absl").addFilter(_PartialRestoreFilter())


def make_manager(directory: str | Path, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A synchronous Orbax ``CheckpointManager`` over ``directory`` with items ``state`` and ``meta``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=("state", "meta"))


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves the full ``state`` at ``step`` with ``meta`` (JSON) beside it; overwrites nothing."""
    if step in manager.all_steps():
        return
    flat = flatten_state(state)
    meta = {**meta, "format_version": FORMAT_VERSION, "step": int(step)}
    manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)),
    )
    manager.wait_until_finished()
    write_checksums(Path(manager.directory) / str(int(step)))


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest saved step, or None."""
    return manager.latest_step()


def _describe_diff(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    diffs = []
    for key, want in expected.items():
        have = found.get(key, "<missing>")
        if have != want:
            diffs.append(f"{key}: checkpoint has {have!r}, this run has {want!r}")
    return diffs


def restore_checkpoint(
    manager: ocp.CheckpointManager, template: Any, expected_meta: dict[str, Any], step: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` (default: the latest) into the structure of ``template``.

    ``expected_meta`` values (e.g. ``latent_shape``, ``config_hash``) must equal the checkpoint's; any
    difference, a missing or corrupt checkpoint, or an array of the wrong shape raises
    :class:`CheckpointError` with the reason. Returns ``(state, meta)``.
    """
    step = manager.latest_step() if step is None else step
    where = Path(manager.directory) / str(step)
    if step is None:
        raise CheckpointError(f"no checkpoint in {manager.directory}")
    damage = verify_checksums(where)
    if damage:
        raise CorruptCheckpointError(f"checkpoint step {step} ({where}) is corrupt: {damage}")
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any read failure means the checkpoint is unusable
        raise CorruptCheckpointError(f"checkpoint step {step} ({where}) is unreadable ({_one_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"checkpoint {where} has format version {found}, this find-jax reads version {FORMAT_VERSION}"
        )
    diffs = _describe_diff(expected_meta, meta)
    if diffs:
        raise CheckpointError(f"checkpoint {where} is incompatible with this run: " + "; ".join(diffs))
    flat_template = flatten_state(template)
    abstract = {
        k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype if not hasattr(v, "dtype") else v.dtype)
        for k, v in flat_template.items()
    }
    try:
        stored = manager.item_metadata(step)["state"]
        if stored is not None:
            stored_keys = set(stored.keys())
            if stored_keys != set(abstract):
                missing = sorted(set(abstract) - stored_keys)[:5]
                extra = sorted(stored_keys - set(abstract))[:5]
                raise CheckpointError(
                    f"checkpoint {where} holds a different state layout (missing {missing}, extra {extra})"
                )
            for k, spec in abstract.items():
                if tuple(stored[k].shape) != tuple(spec.shape):
                    raise CheckpointError(
                        f"checkpoint {where}: array {k} has shape {tuple(stored[k].shape)}, "
                        f"this run expects {tuple(spec.shape)}"
                    )
        flat = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CorruptCheckpointError(
            f"checkpoint step {step} ({where}) could not be restored ({_one_line(e)})"
        ) from None
    for k, spec in abstract.items():
        if tuple(flat[k].shape) != tuple(spec.shape) or flat[k].dtype != spec.dtype:
            raise CorruptCheckpointError(
                f"checkpoint step {step} ({where}): array {k} is {flat[k].dtype}{tuple(flat[k].shape)}, "
                f"expected {spec.dtype}{tuple(spec.shape)}"
            )
        a = np.asarray(flat[k])
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise CorruptCheckpointError(f"checkpoint step {step} ({where}): array {k} holds NaN or inf")
    if "step" in flat and int(np.asarray(flat["step"])) != int(step):
        found = int(np.asarray(flat["step"]))
        raise CorruptCheckpointError(f"checkpoint step {step} ({where}) holds the state of iteration {found}")
    return unflatten_state(template, flat), meta


def move_aside(manager: ocp.CheckpointManager, step: int) -> Path:
    """Moves step ``step``'s directory to ``<run>/checkpoints.corrupt/<step>[-<time>]`` (kept for inspection)."""
    src = Path(manager.directory) / str(step)
    dest_root = Path(manager.directory).parent / CORRUPT_DIR
    dest_root.mkdir(parents=True, exist_ok=True)
    dest = dest_root / str(step)
    if dest.exists():
        dest = dest_root / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.move(str(src), str(dest))
    return dest


def restore_latest(
    directory: str | Path, template: Any, expected_meta: dict[str, Any]
) -> tuple[ocp.CheckpointManager, Any, dict[str, Any] | None]:
    """``(manager, state, meta)`` from the newest step of ``directory`` that restores (``state`` is
    ``template`` and ``meta`` None when there is no checkpoint).

    A corrupt step is moved aside (:func:`move_aside`) with one warning line and the next older one is tried;
    when none restores, :class:`CheckpointError` says so in one line. A checkpoint of another setup
    (incompatible meta) is refused at once, not moved.
    """
    manager = make_manager(directory)
    reasons = []
    while manager.latest_step() is not None:
        step = manager.latest_step()
        try:
            state, meta = restore_checkpoint(manager, template, expected_meta, step=step)
            if reasons:
                log.warning("resuming from checkpoint step %d instead", step)
            return manager, state, meta
        except CorruptCheckpointError as e:
            dest = move_aside(manager, step)
            log.warning("%s; moved it to %s", e, dest)
            reasons.append(str(e))
            manager = make_manager(directory)
    if reasons:
        raise CheckpointError(
            f"no checkpoint in {directory} restores (the unreadable ones are now in "
            f"{Path(directory).parent / CORRUPT_DIR}); use a new --workdir, or remove the run directory to start over"
        )
    return manager, template, None
