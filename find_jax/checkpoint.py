"""Orbax checkpoints of the full FIND state (DESIGN.md §8, STYLE.md "Running").

A checkpoint holds every array of :class:`~find_jax.trainer.FindState` (policy, DRCM, both optimiser
states, replay buffer, step, rng, bad-reward count) as a flat ``{"policy.mu": array, ...}`` dict, plus a
JSON ``meta`` item (latent shape, config hash, model id, weights hash, format version). The frozen
diffusion weights are never saved: the run records their id and hash instead.

Restoring checks ``meta`` against what the caller expects and refuses a checkpoint written for another
latent shape, config or model with a :class:`CheckpointError` that says which value differs; a corrupt
or unreadable checkpoint is refused the same way, naming its directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, or written for another shape/config/model."""


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
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any read failure means the checkpoint is unusable
        raise CheckpointError(
            f"checkpoint {where} is corrupt or unreadable ({type(e).__name__}: {e}); delete that step "
            "directory to resume from an earlier checkpoint, or use a new workdir"
        ) from e
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
        raise CheckpointError(
            f"checkpoint {where} could not be restored ({type(e).__name__}: {e}); delete that step "
            "directory to resume from an earlier checkpoint, or use a new workdir"
        ) from e
    for k, spec in abstract.items():
        if tuple(flat[k].shape) != tuple(spec.shape) or flat[k].dtype != spec.dtype:
            raise CheckpointError(
                f"checkpoint {where}: array {k} is {flat[k].dtype}{tuple(flat[k].shape)}, "
                f"expected {spec.dtype}{tuple(spec.shape)}"
            )
    return unflatten_state(template, flat), meta
