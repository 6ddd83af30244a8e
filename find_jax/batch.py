"""Batched FIND over a prompt set: P prompts optimised at once, the prompt axis sharded over devices.

Each prompt keeps its own distribution N(mu, sigma^2), DRCM and optimiser states: the per-prompt
:class:`~find_jax.trainer.FindState` gains a leading prompt axis ``[P, ...]`` and the trainer's pure update
(:func:`~find_jax.trainer.make_update_fn`, paper Algorithm 1, Eq. 6-13) is ``jax.vmap``-ed over it. One
iteration of a group of P prompts is:

1. ``x [P, N, C, h, w]``: every prompt's draw, from ``fold_in(rng_loop_p, step_p)`` exactly as a single run;
2. one sampler call on all ``P * N`` latents (the frozen DDIM environment vmapped over prompts, each prompt
   with its own text condition and eta key);
3. one reward call on the ``k * N`` images of the ``k`` still-running prompts (host side);
4. the vmapped, jitted update; a prompt that is finished, failed or padding keeps its state unchanged.

Sharding: the prompt axis of the state, the draws and the images lives on a ``jax.sharding.Mesh`` over the
local devices (axis ``"prompts"``, ``NamedSharding``); the frozen model's params are replicated. XLA's SPMD
partitioner splits the sampler and the update along that axis, so P prompts on D devices run P/D per
device. Multi-host: N processes started on the same workdir (``JAX_PROCESS_ID``/``JAX_NUM_PROCESSES``, or
SLURM's task ids; see :func:`process_share`) each take every N-th group and shard it over their own devices —
prompts are independent, so no step needs another host, and each process checkpoints its own prompts.

Seeds: every prompt uses the run's one seed (``config.seed``). A prompt's batched result is therefore its
single run ``find-jax optimize --prompt TEXT --seed S`` (to float tolerance: batched XLA kernels round
differently), whatever P and the device count are.

Workdir layout (one single-run-compatible directory per prompt, so ``find-jax sample --workdir`` and
``find-jax export`` work on each unchanged)::

    WORKDIR/batch.json          the shared config, model id/hash and latent shape (a rerun must match it)
    WORKDIR/prompts.json        [{"index", "prompt", "category", "dir"}, ...]
    WORKDIR/NNN-<slug>/         config.json, metrics.jsonl, checkpoints/, final_*.npy, status.json
                                (+ reward_curve.png, final_samples.png from :func:`run_batch`)

Failures stay per prompt: too many NaN/inf rewards (its state before the iteration is checkpointed, as a
single run) or NaN parameters (its last good state is kept) mark that prompt ``failed`` in its
``status.json``; the others go on. Rerunning the same command resumes every prompt from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from find_jax import checkpoint as ckpt
from find_jax import trainer
from find_jax.config import FindConfig, config_diff, config_from_dict, config_to_dict
from find_jax.metrics import MetricsWriter, truncate_after
from find_jax.progress import ProgressBar
from find_jax.prompts import PromptItem, prompts_to_json

logger = logging.getLogger(__name__)

# env_fn(latents [P, N, C, h, w], rngs [P, 2]) -> images [P, N, H, W, 3] in [0, 1]
BatchEnvFn = Callable[[jax.Array, jax.Array], jax.Array]
# env_factory(prompts: list of P texts) -> the BatchEnvFn of that group
EnvFactory = Callable[[list[str]], BatchEnvFn]
EmbedFn = Callable[[str], np.ndarray]  # embed_fn(prompt) -> [E] the DRCM's text condition

BATCH_FILE = "batch.json"
PROMPTS_FILE = "prompts.json"
STATUS_FILE = "status.json"
BATCH_FORMAT_VERSION = 1
PROMPT_AXIS = "prompts"


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


# ----------------------------------------------------------------------------------------------------------
# Devices and sharding.


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
        logger.info(
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


def stack_states(states: Sequence[trainer.FindState]) -> trainer.FindState:
    """``P`` states -> one state whose every leaf has a leading prompt axis ``[P, ...]``."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *states)


def unstack_state(state: trainer.FindState, index: int) -> trainer.FindState:
    """Prompt ``index`` of a stacked state, as host (numpy) arrays."""
    return jax.tree.map(lambda a: np.asarray(a)[index], state)


# ----------------------------------------------------------------------------------------------------------
# The pure batched steps.


def make_batch_update_fn(config: FindConfig):
    """The vmapped update ``update(state [P], batch [P], active [P]) -> (state, metrics [P])`` (not jitted).

    Per prompt: ``active`` and at least one finite reward -> the trainer's update (Eq. 10, 13; kept only if
    the new parameters are finite, ``metrics["params/finite"]``); ``active`` and no finite reward -> only
    ``step`` and ``bad_rewards`` advance (as a single run skips the update); inactive -> unchanged.
    """
    update_fn = jax.vmap(trainer.make_update_fn(config))

    def update(state: trainer.FindState, batch: trainer.Batch, active: jax.Array):
        new, metrics = update_fn(state, batch)
        any_valid = jnp.any(batch.valid, axis=1)
        n_bad = jnp.sum(~batch.valid, axis=1).astype(jnp.int32)
        take_new = active & any_valid & metrics["params/finite"]
        take_skip = active & ~any_valid
        skipped = state.replace(step=state.step + 1, bad_rewards=state.bad_rewards + n_bad)

        def pick(n, s, o):
            shape = (-1,) + (1,) * (n.ndim - 1)
            return jnp.where(take_new.reshape(shape), n, jnp.where(take_skip.reshape(shape), s, o))

        return jax.tree.map(pick, new, skipped, state), metrics

    return update


@functools.lru_cache(maxsize=8)
def _batch_update_jit(config: FindConfig):
    """The jitted batch update for ``config`` (its prompt blanked), compiled once per config and shape and
    reused by every later batch of this process (the config is frozen and hashable)."""
    return jax.jit(make_batch_update_fn(config), donate_argnums=0)


@functools.partial(jax.jit, static_argnames=("n", "sigma_param", "sigma_min"))
def _batch_iteration_sample(policy, rng_loop, step, *, n: int, sigma_param: str, sigma_min: float):
    """Every prompt's draw for its own iteration ``step[p]``: ``(x [P, n, C, h, w], rng_env [P, 2])``,
    the very numbers a single run of that prompt draws."""
    one = functools.partial(trainer.iteration_sample_jit, n=n, sigma_param=sigma_param, sigma_min=sigma_min)
    return jax.vmap(one)(policy, rng_loop, step)


@functools.partial(jax.jit, static_argnames=("n", "sigma_param", "sigma_min"))
def _batch_final_sample(policy, rng_final, *, n: int, sigma_param: str, sigma_min: float):
    """``(latents [P, n, C, h, w], rng_env [2])`` of the final samples, as a single run's ``final_*``."""
    rng_sample, rng_env = jax.random.split(rng_final)
    one = functools.partial(trainer.sample_jit, n=n, sigma_param=sigma_param, sigma_min=sigma_min)
    return jax.vmap(one, in_axes=(0, None))(policy, rng_sample), rng_env


# ----------------------------------------------------------------------------------------------------------
# The environment for a group of prompts.


def make_sd_env_factory(model, config: FindConfig, mesh: Mesh | None = None) -> EnvFactory:
    """``env_factory(prompts) -> env_fn`` for the frozen diffusion ``model`` with ``config``'s sampler settings.

    The DDIM sampler is compiled once (per batch shape) and serves every group: prompts only change the text
    condition ``cond [P, L, D]``, an argument. ``env_fn(latents [P, N, C, h, w], rngs [P, 2])`` runs the
    sampler vmapped over prompts (one program on ``P * N`` latents; eta noise keyed per prompt, as in a
    single run) and returns images ``[P, N, H, W, 3]``. With ``mesh`` the params are replicated on it and
    the prompt axis is sharded.
    """
    from find_jax.sampler import encode_prompts, make_sampler, make_text_encoder

    dh, dw = model.default_size
    height, width = config.height or dh, config.width or dw
    model.latent_shape(height, width)  # validates the size
    sample_fn = make_sampler(model, steps=config.steps, guidance=config.guidance, eta=config.eta)
    encode_fn = make_text_encoder(model)
    params = replicate(model.params, mesh) if mesh is not None else model.params

    @jax.jit
    def group_sample_fn(params, latents, cond, uncond, rngs):
        p, n = latents.shape[:2]
        c = jnp.broadcast_to(cond[:, None], (p, n, *cond.shape[1:]))
        u = jnp.broadcast_to(uncond[:, None], (p, n, *uncond.shape[1:]))
        return jax.vmap(sample_fn, in_axes=(None, 0, 0, 0, 0))(params, latents, c, u, rngs)

    def env_factory(prompts: list[str]) -> BatchEnvFn:
        cond = encode_prompts(model, prompts, encode_fn=encode_fn)
        uncond = encode_prompts(model, [config.negative_prompt] * len(prompts), allow_empty=True, encode_fn=encode_fn)
        if mesh is not None:
            cond, uncond = shard_prompts((cond, uncond), mesh)

        def env_fn(latents: jax.Array, rngs: jax.Array) -> jax.Array:
            return group_sample_fn(params, latents, cond, uncond, rngs)

        return env_fn

    env_factory.latent_shape = model.latent_shape(height, width)  # type: ignore[attr-defined]
    return env_factory


# ----------------------------------------------------------------------------------------------------------
# Workdir bookkeeping.


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def read_batch(workdir: str | Path) -> tuple[FindConfig, list[dict[str, Any]], dict[str, Any]]:
    """``(config, prompts, record)`` of a batch workdir (``batch.json`` + ``prompts.json``)."""
    workdir = Path(workdir)
    path, ppath = workdir / BATCH_FILE, workdir / PROMPTS_FILE
    if not path.is_file() or not ppath.is_file():
        raise trainer.RunDirError(
            f"{workdir} is not a find-jax batch directory: {BATCH_FILE} or {PROMPTS_FILE} is missing"
        )
    try:
        record = json.loads(path.read_text())
        config = config_from_dict(record["config"])
        prompts = json.loads(ppath.read_text())
        if not isinstance(prompts, list) or not all(isinstance(p, dict) and "dir" in p for p in prompts):
            raise ValueError(f"{PROMPTS_FILE} is not a list of prompt records")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise trainer.RunDirError(f"{workdir} holds an unreadable batch record: {e}") from e
    return config, prompts, record


def _prepare_batch_dir(workdir: Path, record: dict[str, Any], prompts: list[dict[str, Any]], config: FindConfig):
    """Creates the batch workdir or checks that it holds this very batch (same config, model, prompt list)."""
    if workdir.exists() and not workdir.is_dir():
        raise trainer.RunDirError(f"workdir {workdir} exists and is not a directory")
    if (workdir / trainer.CONFIG_FILE).exists():
        raise trainer.RunDirError(
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
            raise trainer.RunDirError(
                f"workdir {workdir} holds a batch with a different setup, refusing to resume or overwrite it: "
                + "; ".join(problems)
                + ". Use a new --workdir, or the same settings to resume."
            )
        return
    # Other processes of a multi-host launch may be writing the same two files right now (atomically).
    ours = (BATCH_FILE, PROMPTS_FILE)
    if workdir.exists() and any(p.name not in ours and not p.name.startswith(".") for p in workdir.iterdir()):
        raise trainer.RunDirError(
            f"workdir {workdir} is not empty and has no {BATCH_FILE}: refusing to write a batch into it "
            "(choose a new or empty directory)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    _write_json(workdir / PROMPTS_FILE, prompts)
    _write_json(workdir / BATCH_FILE, record)


def _write_status(run_dir: Path, result: PromptResult) -> None:
    _write_json(run_dir / STATUS_FILE, {"status": result.status, "step": result.step, "error": result.error})


# ----------------------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class _Slot:
    """One prompt position of a group (``item`` None: padding)."""

    item: dict[str, Any] | None
    config: FindConfig
    run_dir: Path | None = None
    manager: Any = None
    meta: dict[str, Any] | None = None
    writer: MetricsWriter | None = None
    result: PromptResult | None = None
    active: bool = False


def optimize_batch(
    config: FindConfig,
    prompts: Sequence[PromptItem],
    workdir: str | Path,
    *,
    env_factory: EnvFactory,
    reward_fn: trainer.RewardFn,
    latent_shape: tuple[int, int, int],
    batch_prompts: int = 1,
    embed_fn: EmbedFn | None = None,
    model_id: str = "",
    weights_hash: str = "",
    progress: bool = False,
    devices: Sequence[jax.Device] | None = None,
) -> BatchResult:
    """Runs (or resumes) FIND for every prompt of ``prompts``, ``batch_prompts`` at a time, in ``workdir``.

    config: the shared settings (its ``prompt`` is replaced by each prompt's text; every prompt uses
    ``config.seed``); env_factory(texts) -> ``env_fn(latents [P, N, C, h, w], rngs [P, 2]) -> images
    [P, N, H, W, 3]``; reward_fn(images [B, H, W, 3], prompts [B]) -> [B] host floats; embed_fn(text) -> [E]
    (required when ``config.drcm_text_conditioned``). ``devices``: where to shard the prompt axis (default
    ``jax.local_devices()``). Writes the layout of the module doc; returns a :class:`BatchResult`.
    A workdir holding another setup or prompt list raises :class:`~find_jax.trainer.RunDirError`.
    """
    if batch_prompts < 1:
        raise ValueError(f"--batch-prompts must be >= 1; got {batch_prompts}")
    items = list(prompts)
    if not items:
        raise ValueError("the prompt set is empty: give at least one prompt")
    latent_shape = trainer.check_latent_shape(latent_shape)
    if config.drcm_text_conditioned and embed_fn is None:
        raise ValueError("drcm_text_conditioned=True needs embed_fn (the text encoder's embedding of each prompt)")
    workdir = Path(workdir)
    base = dataclasses.replace(config, prompt="")
    records = prompts_to_json(items)
    embeddings = [np.asarray(embed_fn(it.text), np.float32).ravel() for it in items] if embed_fn else None
    embed_dim = trainer.prompt_embed_dim(config, embeddings[0] if embeddings else None)
    batch_record = {
        "format_version": BATCH_FORMAT_VERSION,
        "config": config_to_dict(base),
        "model_id": model_id,
        "weights_hash": weights_hash,
        "latent_shape": list(latent_shape),
        "embed_dim": embed_dim,
    }
    _prepare_batch_dir(workdir, batch_record, records, base)

    p_size = min(batch_prompts, len(items))
    groups = [list(range(s, min(s + p_size, len(items)))) for s in range(0, len(items), p_size)]
    pid, nproc = process_share()
    mesh = make_prompt_mesh(p_size, devices)
    logger.info(
        "%d prompts in %d group(s) of %d, prompt axis sharded over %d device(s)%s",
        len(items),
        len(groups),
        p_size,
        mesh.size,
        f" (process {pid} of {nproc})" if nproc > 1 else "",
    )
    results: list[PromptResult] = [
        PromptResult(r["index"], r["prompt"], r["category"], r["dir"], "skipped", 0) for r in records
    ]
    init = trainer.init_state(base, latent_shape, embed_dim=embed_dim)
    update_jit = _batch_update_jit(base)
    my_groups = groups[pid::nproc]
    bar = ProgressBar(len(my_groups) * config.iterations, desc="FIND batch", quiet=not progress)
    for g, group in enumerate(my_groups):
        _run_group(
            base,
            [records[i] for i in group],
            p_size,
            workdir,
            init,
            update_jit,
            mesh,
            bar,
            env_factory=env_factory,
            reward_fn=reward_fn,
            embeddings=[embeddings[i] for i in group] if embeddings else None,
            latent_shape=latent_shape,
            embed_dim=embed_dim,
            model_id=model_id,
            weights_hash=weights_hash,
            results=results,
            group_label=f"{g + 1}/{len(my_groups)}",
        )
    bar.close()
    return BatchResult(workdir, results, mesh.size)


def _run_group(
    base: FindConfig,
    group: list[dict[str, Any]],
    p_size: int,
    workdir: Path,
    init: trainer.FindState,
    update_jit,
    mesh: Mesh,
    bar: ProgressBar,
    *,
    env_factory: EnvFactory,
    reward_fn: trainer.RewardFn,
    embeddings: list[np.ndarray] | None,
    latent_shape: tuple[int, int, int],
    embed_dim: int,
    model_id: str,
    weights_hash: str,
    results: list[PromptResult],
    group_label: str,
) -> None:
    """Optimises one group of up to ``p_size`` prompts (padded to ``p_size`` so one program serves all)."""
    n, iters = base.samples_per_iter, base.iterations
    slots: list[_Slot] = []
    for k in range(p_size):
        rec = group[k] if k < len(group) else None
        cfg = dataclasses.replace(base, prompt=(rec or group[-1])["prompt"])
        slots.append(_Slot(rec, cfg))
    states = []
    for k, slot in enumerate(slots):
        if slot.item is None:
            states.append(init)
            continue
        emb = embeddings[k] if embeddings else None
        record = trainer.run_record(
            slot.config,
            latent_shape,
            embed_dim,
            model_id,
            weights_hash,
            trainer.array_hash(emb if embed_dim else None),
        )
        slot.run_dir = workdir / slot.item["dir"]
        resuming = trainer.prepare_workdir(slot.run_dir, record, slot.config)
        slot.manager = ckpt.make_manager(slot.run_dir / trainer.CHECKPOINT_DIR)
        slot.meta = trainer.checkpoint_meta(slot.config, record)
        state = init
        if resuming and slot.manager.latest_step() is not None:
            state, _ = ckpt.restore_checkpoint(slot.manager, init, slot.meta)
            logger.info("resuming %s from iteration %d", slot.run_dir, int(state.step))
        start = int(state.step)
        metrics_path = slot.run_dir / trainer.METRICS_FILE
        truncate_after(metrics_path, start)
        slot.writer = MetricsWriter(metrics_path)
        slot.result = results[slot.item["index"]]
        slot.result.status, slot.result.step = "running", start
        slot.active = start < iters
        states.append(state)

    real = [s for s in slots if s.item is not None]
    finals_missing = base.num_final_samples > 0 and any(not (s.run_dir / "final_samples.npy").exists() for s in real)
    if not any(s.active for s in slots) and not finals_missing:
        for s in real:
            s.result.status = "done"
            _write_status(s.run_dir, s.result)
        bar.advance(iters)
        return

    stacked = shard_prompts(stack_states(states), mesh)
    texts = [s.config.prompt for s in slots]
    env_fn = env_factory(texts)
    emb = (
        np.stack([embeddings[min(k, len(group) - 1)] for k in range(p_size)])
        if embeddings
        else np.zeros((p_size, 0), np.float32)
    )
    emb_dev = shard_prompts(jnp.asarray(emb), mesh)
    sp, smin = base.sigma_param, float(base.sigma_min)
    shown = max(s.result.step for s in real)  # progress units shown: the group's furthest prompt
    bar.advance(shown)

    def _fail(slot: _Slot, error: str) -> None:
        slot.active = False
        slot.result.status, slot.result.error = "failed", error
        _write_status(slot.run_dir, slot.result)
        logger.error("prompt %r failed: %s (the other prompts go on)", slot.config.prompt, error)

    while any(s.active for s in slots):
        t0 = time.perf_counter()
        steps = np.asarray(jax.device_get(stacked.step))
        bad_before = np.asarray(jax.device_get(stacked.bad_rewards))
        x, rng_env = _batch_iteration_sample(
            stacked.policy, stacked.rng, stacked.step, n=n, sigma_param=sp, sigma_min=smin
        )
        images = jax.block_until_ready(env_fn(x, rng_env))  # so the env time is the sampler's
        images = np.asarray(jax.device_get(images), np.float32)
        t_env = time.perf_counter()
        running = [k for k, s in enumerate(slots) if s.active]
        rewards = np.zeros((p_size, n), np.float32)
        flat = images[running].reshape(len(running) * n, *images.shape[2:])
        r = np.asarray(reward_fn(flat, [slots[k].config.prompt for k in running for _ in range(n)]), np.float32)
        if r.size != len(running) * n:
            raise ValueError(f"reward_fn returned {r.size} rewards for {len(running) * n} images")
        rewards[running] = r.reshape(len(running), n)
        t_reward = time.perf_counter()
        valid = np.isfinite(rewards)
        host_state = None
        for k in running:
            n_bad = int(n - valid[k].sum())
            if not n_bad:
                continue
            slot, it = slots[k], int(steps[k])
            total_bad = int(bad_before[k]) + n_bad
            logger.warning(
                "%s iteration %d: %d non-finite reward(s) skipped (%d so far)", slot.item["dir"], it, n_bad, total_bad
            )
            if total_bad > base.max_bad_rewards:
                host_state = host_state if host_state is not None else jax.device_get(stacked)
                ckpt.save_checkpoint(slot.manager, it, unstack_state(host_state, k), slot.meta)
                _fail(
                    slot,
                    f"{total_bad} non-finite rewards (limit max_bad_rewards={base.max_bad_rewards}) at iteration {it}; "
                    f"the state before it is checkpointed",
                )
        active = np.array([s.active for s in slots])
        batch = trainer.Batch(
            x=x,
            reward=shard_prompts(jnp.asarray(np.where(valid, rewards, 0.0)), mesh),
            valid=shard_prompts(jnp.asarray(valid), mesh),
            prompt_embedding=emb_dev,
        )
        stacked, dev_metrics = update_jit(stacked, batch, shard_prompts(jnp.asarray(active), mesh))
        metrics = {k: np.asarray(v) for k, v in jax.device_get(dev_metrics).items()}
        t_end = time.perf_counter()
        n_running = max(int(active.sum()), 1)
        timing = {
            "time/iter_s": (t_end - t0) / n_running,
            "time/env_s": (t_env - t0) / n_running,
            "time/reward_s": (t_reward - t_env) / n_running,
            "time/update_s": (t_end - t_reward) / n_running,
            "time/group_iter_s": t_end - t0,
            "batch/running": n_running,
        }
        save_at = []
        for k in np.flatnonzero(active):
            slot, it = slots[k], int(steps[k])
            if valid[k].any():
                m = {key: _scalar(v[k]) for key, v in metrics.items()}
                if not m["params/finite"]:
                    _fail(
                        slot,
                        f"the policy or DRCM parameters became NaN/inf at iteration {it}; its last good checkpoint "
                        f"is step {slot.manager.latest_step()}",
                    )
                    continue
            else:
                m = {"reward/num_valid": 0}
            m.update({"step": it + 1, "rewards/bad_total": int(bad_before[k]) + int(n - valid[k].sum()), **timing})
            slot.writer.write(m)
            slot.result.step = it + 1
            slot.result.time_s += timing["time/iter_s"]
            if (it + 1) % base.checkpoint_every == 0 or it + 1 == iters:
                save_at.append(k)
            if it + 1 == iters:
                slot.active = False
        if save_at:
            host_state = jax.device_get(stacked)
            for k in save_at:
                ckpt.save_checkpoint(slots[k].manager, int(steps[k]) + 1, unstack_state(host_state, k), slots[k].meta)
        target = max(s.result.step for s in real)
        if target > shown:
            running_r = [metrics["reward/mean"][k] for k in np.flatnonzero(active) if valid[k].any()]
            reward = float(np.mean(running_r)) if running_r else float("nan")
            bar.update(target - shown, reward=reward, running=f"{n_running}/{p_size}", group=group_label)
            shown = target
    bar.advance(iters - shown)

    done = [k for k, s in enumerate(slots) if s.item is not None and s.result.status == "running"]
    host_state = jax.device_get(stacked)
    for k in done:  # single runs save the final state even when it is not a checkpoint step
        slot = slots[k]
        if int(host_state.step[k]) == iters and slot.manager.latest_step() != iters:
            ckpt.save_checkpoint(slot.manager, iters, unstack_state(host_state, k), slot.meta)
    if done and base.num_final_samples > 0:
        _write_final_samples(base, stacked, [slots[k] for k in range(p_size)], done, env_fn, reward_fn)
    for k in done:
        slots[k].result.status = "done"
        _write_status(slots[k].run_dir, slots[k].result)


def _scalar(v: np.ndarray) -> Any:
    v = np.asarray(v)
    return bool(v) if v.dtype == bool else (int(v) if np.issubdtype(v.dtype, np.integer) else float(v))


def _write_final_samples(
    base: FindConfig, stacked: trainer.FindState, slots: list[_Slot], done: list[int], env_fn, reward_fn
) -> None:
    """``final_latents.npy``, ``final_samples.npy``, ``final_rewards.npy`` of the ``done`` prompts: the same
    draws (``rng_final`` of the seed) and files as a single run's."""
    n = base.num_final_samples
    _, _, rng_final = trainer.split_seed(base.seed)
    latents, rng_env = _batch_final_sample(
        stacked.policy, rng_final, n=n, sigma_param=base.sigma_param, sigma_min=float(base.sigma_min)
    )
    rngs = jnp.broadcast_to(rng_env, (latents.shape[0], *rng_env.shape))
    images = np.asarray(jax.device_get(env_fn(latents, rngs)), np.float32)
    latents = np.asarray(jax.device_get(latents))
    flat = images[done].reshape(len(done) * n, *images.shape[2:])
    rewards = np.asarray(reward_fn(flat, [slots[k].config.prompt for k in done for _ in range(n)]), np.float32)
    rewards = rewards.reshape(len(done), n)
    for j, k in enumerate(done):
        run_dir = slots[k].run_dir
        for name, arr in (("final_latents", latents[k]), ("final_samples", images[k]), ("final_rewards", rewards[j])):
            tmp = run_dir / f"{name}.tmp.npy"
            np.save(tmp, arr)
            tmp.replace(run_dir / f"{name}.npy")


# ----------------------------------------------------------------------------------------------------------
# Wiring: the frozen model, the reward and the reports.


def run_batch(
    config: FindConfig,
    prompts: Sequence[PromptItem],
    workdir: str | Path,
    *,
    batch_prompts: int = 1,
    progress: bool = False,
    model=None,
    devices: Sequence[jax.Device] | None = None,
    weights: str = "auto",
) -> BatchResult:
    """FIND over ``prompts`` on ``config.model`` with ``config.reward`` (``find-jax optimize --prompts-file``).

    ``model``: the loaded model to use; else ``config.model`` is loaded from its ``weights`` files.

    Loads the model and reward once, shards groups of ``batch_prompts`` prompts over ``devices``, and writes
    each finished prompt's ``reward_curve.png`` and ``final_samples.png`` (:func:`find_jax.report.write_run_report`).
    """
    from find_jax.models import load_model
    from find_jax.report import write_run_report
    from find_jax.sampler import pooled_embeddings
    from reward_models import make_reward

    reward_fn = make_reward(config.reward, **dict(config.reward_options))
    model = model or load_model(config.model, dtype=config.dtype, weights=weights)
    p_size = max(1, min(batch_prompts, len(prompts)))
    mesh = make_prompt_mesh(p_size, devices)
    env_factory = make_sd_env_factory(model, config, mesh)
    embed_fn = None
    if config.drcm_text_conditioned and prompts:  # no prompts: optimize_batch says so
        # One batched, jitted text-encoder pass for every prompt (not one unjitted call per prompt). Chunks
        # do not follow batch_prompts, so a resume with another group size gets the same embedding bits
        # (config.json records their exact hash).
        texts = [item.text for item in prompts]
        embed_fn = dict(zip(texts, pooled_embeddings(model, texts), strict=True)).__getitem__
    result = optimize_batch(
        config,
        prompts,
        workdir,
        env_factory=env_factory,
        reward_fn=reward_fn,
        latent_shape=env_factory.latent_shape,  # type: ignore[attr-defined]
        batch_prompts=batch_prompts,
        embed_fn=embed_fn,
        model_id=model.source,
        weights_hash=model.fingerprint,
        progress=progress,
        devices=list(mesh.devices.flat),
    )
    for r in result.results:
        if r.status == "done":
            summary = write_run_report(Path(workdir) / r.dir)
            logger.info("%s: %s", r.dir, summary)
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


__all__ = [
    "BATCH_FILE",
    "PROMPTS_FILE",
    "STATUS_FILE",
    "BatchEnvFn",
    "BatchResult",
    "EnvFactory",
    "PromptResult",
    "batch_summary",
    "process_share",
    "make_batch_update_fn",
    "make_prompt_mesh",
    "make_sd_env_factory",
    "optimize_batch",
    "read_batch",
    "replicate",
    "run_batch",
    "shard_prompts",
    "stack_states",
    "unstack_state",
]
