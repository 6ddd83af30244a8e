"""Devices, meshes and the persistent compilation cache, shared by every environment and the loop.

Two meshes: the samplers' 1-D ``"batch"`` mesh (the UNet batch split over local devices inside the scan) and
the loop's 1-D ``"prompts"`` mesh (the prompt axis of the FIND state). On a small CPU, host devices made with
:func:`configure_cpu_devices` put one device on each core (README, Benchmarks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

log = logging.getLogger(__name__)

BATCH_AXIS = "batch"
CPU_DEVICES_ENV = "FIND_JAX_CPU_DEVICES"


def configure_cpu_devices(n: int | str | None = None) -> int | None:
    """Exposes ``n`` CPU cores as ``n`` JAX host devices, so the sampler can split its batch over them.

    ``n``: a count >= 1, or None for ``$FIND_JAX_CPU_DEVICES`` (unset: JAX's default is left alone and None
    is returned). Must run before JAX's first operation (the CLI calls it at start-up); afterwards it only
    checks, and a count other than the running one raises ``ValueError``. Only the CPU backend is affected
    (GPUs are separate devices already). Returns the count.

    Why: on a small CPU XLA runs the tiny UNet's kernels on one core; two host devices put the two halves
    of the CFG batch on two cores (README, Benchmarks).
    """
    raw = os.environ.get(CPU_DEVICES_ENV) if n is None else n
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    source = f"${CPU_DEVICES_ENV}" if n is None else "--cpu-devices"
    try:
        count = int(raw)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ValueError(f"{source} must be a whole number >= 1; got {raw!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has started: only a matching count is fine
        have = len(jax.devices("cpu"))
        if have != count:
            raise ValueError(
                f"{source} asks for {count} CPU devices but JAX already runs with {have}; set it before the "
                "first JAX operation"
            ) from None
    return count


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """A 1-D mesh (axis ``"batch"``) over ``devices`` (default: all local devices); None for one device."""
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) < 2:
        return None
    return Mesh(np.array(devices), (BATCH_AXIS,))


def row_sharding(mesh: Mesh | None, batch: int) -> NamedSharding | None:
    """Axis 0 split over ``mesh``; None when there is no mesh or ``batch`` is not a multiple of its size."""
    if mesh is None or batch % mesh.size:
        return None
    return NamedSharding(mesh, PS(BATCH_AXIS))


def constrain(x: jax.Array, sharding: NamedSharding | None) -> jax.Array:
    """``x`` laid out as ``sharding`` inside a jitted function (unchanged for None)."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


PROMPT_AXIS = "prompts"


def process_share() -> tuple[int, int]:
    """``(process_id, num_processes)`` of this process in a multi-host launch, ``(0, 1)`` otherwise.

    Read from ``$FIND_JAX_PROCESS_ID``/``$FIND_JAX_NUM_PROCESSES``, else ``$JAX_PROCESS_ID``/``$JAX_NUM_PROCESSES``
    (the names ``jax.distributed`` launchers use), else SLURM's ``$SLURM_PROCID``/``$SLURM_NTASKS``, else Open
    MPI's ranks. Each process is its own single-process JAX runtime: it takes every ``num_processes``-th group
    and shards it over its local devices. ``jax.distributed.initialize`` is deliberately not called: in a
    multi-process JAX runtime Orbax 0.12 writes host arrays from process 0 only and refuses process-local device
    arrays, so processes could not checkpoint their own prompts (measured); prompts need no communication.
    """
    if jax.process_count() > 1:
        raise RuntimeError(
            "jax.distributed is initialised in this process: batched FIND runs each host as an independent JAX "
            "process (Orbax cannot write process-local checkpoints in a multi-process runtime). Launch the hosts "
            "without jax.distributed.initialize and set JAX_PROCESS_ID / JAX_NUM_PROCESSES (or run under SLURM)."
        )
    for id_name, count_name in _PROCESS_ENV:
        pid, count = os.environ.get(id_name), os.environ.get(count_name)
        if pid is None or count is None:
            continue
        try:
            pid_i, count_i = int(pid), int(count)
        except ValueError:
            raise ValueError(f"${id_name}={pid!r} / ${count_name}={count!r} must be integers") from None
        if not 0 <= pid_i < count_i:
            raise ValueError(f"${id_name}={pid_i} must be in [0, ${count_name}={count_i})")
        return pid_i, count_i
    return 0, 1


_PROCESS_ENV = (
    ("FIND_JAX_PROCESS_ID", "FIND_JAX_NUM_PROCESSES"),
    ("JAX_PROCESS_ID", "JAX_NUM_PROCESSES"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
)


def make_prompt_mesh(num_prompts: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh (axis ``"prompts"``) over the most local devices that divide ``num_prompts`` evenly."""
    devices = list(devices if devices is not None else jax.local_devices())
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1; got {num_prompts}")
    d = max(k for k in range(1, min(len(devices), num_prompts) + 1) if num_prompts % k == 0)
    if d < len(devices):
        log.info(
            "%d prompts per group use %d of %d devices (choose --batch-prompts a multiple of %d)",
            num_prompts,
            d,
            len(devices),
            len(devices),
        )
    return Mesh(np.array(devices[:d]), (PROMPT_AXIS,))


def shard_prompts(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf (leading axis = prompts) split along the mesh's prompt axis."""
    return jax.device_put(tree, NamedSharding(mesh, PS(PROMPT_AXIS)))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf whole on every device of ``mesh`` (the frozen model's params)."""
    return jax.device_put(tree, NamedSharding(mesh, PS()))


# ----------------------------------------------------------------------------------------------------------
# Persistent compilation cache.

CACHE_ENV = "FIND_JAX_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$FIND_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/find-jax/xla`` (``~/.cache/find-jax/xla``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "find-jax" / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None, *, min_compile_secs: float = 0.5) -> Path | None:
    """Turns on JAX's persistent compilation cache so a second run of the same shapes skips compiling.

    ``path``: the directory (default :func:`default_cache_dir`); ``"off"`` disables it. Programs that compile
    faster than ``min_compile_secs`` are not stored. Returns the directory.
    """
    if path is not None and str(path) == "off":
        return None
    cache = Path(path).expanduser() if path else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache
