"""The one host loop of FIND (paper Algorithm 1) over a prompt set; a single prompt is a set of one.

Prompts run in groups of ``P`` (``batch_prompts``; padded to ``P`` so one compiled program serves every group).
Each prompt keeps its own N(mu, sigma^2), DRCM and optimiser states: the group's
:class:`~find_jax.trainer.FindState` has a leading prompt axis ``[P, ...]``, sharded over the local devices
(``jax.sharding`` mesh, axis ``"prompts"``). One iteration of a group:

1. ``x [P, N, *latent_shape]``: every prompt's draw from ``fold_in(rng_loop, step_p)`` (Eq. 6), the very
   numbers a run of that prompt alone draws;
2. one environment call on all ``P * N`` latents (``env.bind(prompts)``; the frozen sampler, no gradient);
3. one reward call on the media of the still-running prompts, as device arrays (the PyTorch rewards take them
   through DLPack without a copy); non-finite rewards are skipped and counted;
4. the vmapped, jitted update (:func:`~find_jax.trainer.make_batch_update_fn`: DRCM Eq. 10, RCA Eq. 13); a
   finished, failed or padding prompt keeps its state.

Every prompt writes its run directory (:mod:`find_jax.rundir`): a metrics line per iteration, a checkpoint
every ``checkpoint_every`` iterations and at the end, the final samples. Failures stay per prompt: more than
``max_bad_rewards`` non-finite rewards (its state before the iteration is checkpointed) or NaN parameters (its
last good checkpoint is kept) mark it ``failed``; the others go on. A single run (``prompt_set=False``) raises
those failures instead (:class:`~find_jax.rundir.BadRewardError`, ``FloatingPointError``). When
``should_stop()`` turns true (an interrupt), every running prompt is checkpointed at its current iteration and
:class:`Interrupted` is raised; rerunning resumes exactly. Progress goes to a caller's :class:`ProgressSink`
(the CLI draws it); the loop prints nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from find_jax import checkpoint as ckpt
from find_jax import rundir, trainer
from find_jax.config import FindConfig
from find_jax.envs.base import Environment
from find_jax.envs.devices import make_prompt_mesh, process_share, shard_prompts
from find_jax.metrics import MetricsWriter, truncate_after
from find_jax.rundir import BadRewardError, BatchResult, PromptResult

logger = logging.getLogger(__name__)


class ProgressSink(Protocol):
    """Where the loop reports progress, in iterations (``find_jax.progress.ProgressBar`` is one)."""

    def start(self, total: int, desc: str) -> None: ...

    def update(self, n: int = 1, **fields: Any) -> None: ...

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


class Interrupted(Exception):
    """``should_stop()`` turned true: every running prompt was checkpointed at ``step`` (the furthest one)."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at iteration {step}; rerun the same command to resume")
        self.step = step
        self.signal = "SIGINT"  # which signal asked (set by find_jax.interrupts)


@dataclasses.dataclass(frozen=True)
class PromptRun:
    """One prompt of the loop: its text, where it sits in the prompt set, and its run directory."""

    index: int  # position in the prompt set (0 for a single run)
    prompt: str
    category: str
    run_dir: Path
    dir: str  # run_dir relative to the prompt set's workdir ("" for a single run)


@dataclasses.dataclass
class _Slot:
    """One position of a group (``run`` None: padding)."""

    run: PromptRun | None
    config: FindConfig
    embedding: np.ndarray
    manager: Any = None
    meta: dict[str, Any] | None = None
    writer: MetricsWriter | None = None
    result: PromptResult | None = None
    active: bool = False


def run_prompts(
    config: FindConfig,
    runs: Sequence[PromptRun],
    workdir: str | Path,
    *,
    env: Environment,
    reward_fn: trainer.RewardFn,
    embeddings: np.ndarray | None = None,
    batch_prompts: int = 1,
    prompt_set: bool = True,
    devices: Sequence[jax.Device] | None = None,
    progress: ProgressSink | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResult:
    """Runs (or resumes) FIND for every prompt of ``runs``, ``batch_prompts`` at a time (see the module doc).

    config: the shared settings (each prompt's run uses them with its own ``prompt``, and ``config.seed``);
    env: the frozen environment (:class:`~find_jax.envs.base.Environment`); reward_fn(media [B, ...], prompts [B])
    -> [B] floats; embeddings: ``[len(runs), E]`` text conditions, required when ``config.drcm_text_conditioned``;
    workdir: the single run's directory or the prompt set's workdir (whose own files the caller has prepared); this
    writes each prompt's run directory. devices: where the prompt axis is sharded (default
    ``jax.local_devices()``). Several processes (:func:`~find_jax.envs.devices.process_share`) each take every
    N-th group.
    """
    if batch_prompts < 1:
        raise ValueError(f"--batch-prompts must be >= 1; got {batch_prompts}")
    runs = list(runs)
    if not runs:
        raise ValueError("the prompt set is empty: give at least one prompt")
    latent_shape = trainer.check_latent_shape(env.latent_shape)
    embed_dim = trainer.prompt_embed_dim(config, None if embeddings is None else embeddings[0])
    emb = np.zeros((len(runs), 0), np.float32) if not embed_dim else np.asarray(embeddings, np.float32)
    base = dataclasses.replace(config, prompt="")
    p_size = min(batch_prompts, len(runs))
    groups = [list(range(s, min(s + p_size, len(runs)))) for s in range(0, len(runs), p_size)]
    pid, nproc = process_share()
    mesh = make_prompt_mesh(p_size, devices)
    if prompt_set:
        logger.info(
            "%d prompts in %d group(s) of %d, prompt axis sharded over %d device(s)%s",
            len(runs),
            len(groups),
            p_size,
            mesh.size,
            f" (process {pid} of {nproc})" if nproc > 1 else "",
        )
    results = [PromptResult(r.index, r.prompt, r.category, r.dir, "skipped", 0) for r in runs]
    loop = _GroupLoop(base, p_size, mesh, env, reward_fn, latent_shape, embed_dim, prompt_set, should_stop)
    my_groups = groups[pid::nproc]
    if progress is not None:
        progress.start(len(my_groups) * config.iterations, "FIND" if not prompt_set else "FIND prompts")
    try:
        for g, group in enumerate(my_groups):
            slots = [
                _Slot(runs[i], dataclasses.replace(base, prompt=runs[i].prompt), emb[i], result=results[i])
                for i in group
            ]
            while len(slots) < p_size:  # padding: a copy of the last prompt that never writes
                slots.append(_Slot(None, slots[-1].config, slots[-1].embedding))
            loop.run_group(slots, progress, f"{g + 1}/{len(my_groups)}")
    finally:
        if progress is not None:
            progress.close()
    return BatchResult(Path(workdir), results, mesh.size)


def optimize_one(
    config: FindConfig,
    workdir: str | Path,
    *,
    env: Environment,
    reward_fn: trainer.RewardFn,
    prompt_embedding: np.ndarray | None = None,
    progress: ProgressSink | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> trainer.FindState:
    """Runs (or resumes) FIND for ``config.prompt`` alone in ``workdir`` (its run directory) on any environment;
    returns the final state. The prompt set of one of :func:`run_prompts` (``prompt_set=False``: failures raise
    :class:`~find_jax.rundir.BadRewardError` / ``FloatingPointError``). ``prompt_embedding: [E]`` is required
    when ``config.drcm_text_conditioned``."""
    if not config.prompt.strip():
        raise ValueError("config.prompt is empty: give the text prompt to optimise for")
    workdir = Path(workdir)
    embeddings = None if prompt_embedding is None else np.asarray(prompt_embedding, np.float32).reshape(1, -1)
    run_prompts(
        config,
        [PromptRun(0, config.prompt, "", workdir, "")],
        workdir,
        env=env,
        reward_fn=reward_fn,
        embeddings=embeddings,
        prompt_set=False,
        devices=jax.local_devices()[:1],
        progress=progress,
        should_stop=should_stop,
    )
    return rundir.load_state(workdir)


class _GroupLoop:
    """The iteration loop of one group of ``p_size`` prompts (settings shared by every group)."""

    def __init__(self, base, p_size, mesh, env, reward_fn, latent_shape, embed_dim, prompt_set, should_stop):
        self.base, self.p_size, self.mesh, self.env, self.reward_fn = base, p_size, mesh, env, reward_fn
        self.latent_shape, self.embed_dim, self.prompt_set = latent_shape, embed_dim, prompt_set
        self.should_stop = should_stop or (lambda: False)
        self.init = trainer.init_state(base, latent_shape, embed_dim=embed_dim)
        self.update_jit = trainer.batch_update_jit(base)

    # -- per-prompt bookkeeping --------------------------------------------------------------------------

    def _open(self, slot: _Slot) -> trainer.FindState:
        """Prepares (or checks) the prompt's run directory and returns its state (restored when resuming)."""
        run, cfg = slot.run, slot.config
        record = rundir.run_record(
            cfg,
            self.latent_shape,
            self.embed_dim,
            self.env.source,
            self.env.fingerprint,
            rundir.array_hash(slot.embedding if self.embed_dim else None),
        )
        rundir.prepare_workdir(run.run_dir, record, cfg)
        slot.meta = rundir.checkpoint_meta(cfg, record)
        slot.manager, state, meta = ckpt.restore_latest(run.run_dir / rundir.CHECKPOINT_DIR, self.init, slot.meta)
        if meta is not None:
            logger.info("resuming %s from iteration %d", run.run_dir, int(state.step))
        start = int(state.step)
        logged = rundir.last_logged_step(run.run_dir)
        if logged < start:
            logger.warning(
                "%s: metrics.jsonl ends at iteration %d but the checkpoint is at %d (lines %d-%d are missing)",
                run.run_dir,
                logged,
                start,
                logged + 1,
                start,
            )
        dropped = truncate_after(run.run_dir / rundir.METRICS_FILE, start)
        if dropped:
            logger.info("dropped %d metric lines past the checkpoint at iteration %d (they are redone)", dropped, start)
        slot.writer = MetricsWriter(run.run_dir / rundir.METRICS_FILE)
        slot.result.status, slot.result.step = "running", start
        slot.active = start < self.base.iterations
        return state

    def _status(self, slot: _Slot) -> None:
        if self.prompt_set:
            rundir.write_status(slot.run.run_dir, slot.result)

    def _fail(self, slot: _Slot, error: str, exc: type[Exception]) -> None:
        slot.active = False
        slot.result.status, slot.result.error = "failed", error
        if not self.prompt_set:
            raise exc(error)
        self._status(slot)
        logger.error("prompt %r failed: %s (the other prompts go on)", slot.config.prompt, error)

    # -- the loop ------------------------------------------------------------------------------------------

    def run_group(self, slots: list[_Slot], progress: ProgressSink | None, group_label: str) -> None:
        base, iters = self.base, self.base.iterations
        states = [self._open(s) if s.run is not None else self.init for s in slots]
        real = [s for s in slots if s.run is not None]
        finals_missing = base.num_final_samples > 0 and any(
            not (s.run.run_dir / "final_samples.npy").exists() for s in real
        )
        if not any(s.active for s in slots) and not finals_missing:
            for s in real:
                s.result.status = "done"
                self._status(s)
            if progress is not None:
                progress.advance(iters)
            return
        stacked = shard_prompts(trainer.stack_states(states), self.mesh)
        env_fn = self.env.bind([s.config.prompt for s in slots])
        emb_dev = shard_prompts(jnp.asarray(np.stack([s.embedding for s in slots])), self.mesh)
        shown = max(s.result.step for s in real)  # progress units shown: the group's furthest prompt
        if progress is not None:
            progress.advance(shown)
        while any(s.active for s in slots):
            stacked, shown = self._iteration(slots, stacked, env_fn, emb_dev, progress, shown, group_label)
            if self.should_stop() and any(s.active for s in slots):
                self._checkpoint(slots, stacked, [k for k, s in enumerate(slots) if s.active])
                raise Interrupted(shown)
        if progress is not None:
            progress.advance(iters - shown)
        done = [k for k, s in enumerate(slots) if s.run is not None and s.result.status == "running"]
        host_state = jax.device_get(stacked)
        for k in done:  # the final state is saved even when it is not a checkpoint step
            if int(host_state.step[k]) == iters and slots[k].manager.latest_step() != iters:
                ckpt.save_checkpoint(slots[k].manager, iters, trainer.unstack_state(host_state, k), slots[k].meta)
        if done and base.num_final_samples > 0:
            self._final_samples(stacked, slots, done, env_fn)
        for k in done:
            slots[k].result.status = "done"
            self._status(slots[k])

    def _checkpoint(self, slots: list[_Slot], stacked: trainer.FindState, which: list[int]) -> None:
        host_state = jax.device_get(stacked)
        for k in which:
            step = int(host_state.step[k])
            ckpt.save_checkpoint(slots[k].manager, step, trainer.unstack_state(host_state, k), slots[k].meta)

    def _rewards(self, media: jax.Array, slots: list[_Slot], running: list[int]) -> np.ndarray:
        """``[P, N]`` rewards of the running prompts' media (0 elsewhere); the reward sees device arrays."""
        p, n = media.shape[:2]
        picked = media if len(running) == p else media[jnp.asarray(running)]
        flat = picked.reshape(len(running) * n, *media.shape[2:])
        r = np.asarray(self.reward_fn(flat, [slots[k].config.prompt for k in running for _ in range(n)]), np.float32)
        if r.size != len(running) * n:
            raise ValueError(f"reward_fn returned {r.size} rewards for {len(running) * n} images")
        rewards = np.zeros((p, n), np.float32)
        rewards[running] = r.reshape(len(running), n)
        return rewards

    def _iteration(self, slots, stacked, env_fn, emb_dev, progress, shown, group_label):
        base, n, iters = self.base, self.base.samples_per_iter, self.base.iterations
        t0 = time.perf_counter()
        steps = np.asarray(jax.device_get(stacked.step))
        bad_before = np.asarray(jax.device_get(stacked.bad_rewards))
        x, rng_env = trainer.batch_iteration_sample(
            stacked.policy,
            stacked.rng,
            stacked.step,
            n=n,
            sigma_param=base.sigma_param,
            sigma_min=float(base.sigma_min),
        )
        media = jax.block_until_ready(env_fn(x, rng_env))  # so the env time is the sampler's
        t_env = time.perf_counter()
        running = [k for k, s in enumerate(slots) if s.active]
        rewards = self._rewards(media, slots, running)
        t_reward = time.perf_counter()
        valid = np.isfinite(rewards)
        host_state = None
        for k in running:
            n_bad = int(n - valid[k].sum())
            if not n_bad:
                continue
            slot, it = slots[k], int(steps[k])
            total_bad = int(bad_before[k]) + n_bad
            where = slot.run.dir or str(slot.run.run_dir)
            logger.warning("%s iteration %d: %d non-finite reward(s) skipped (%d so far)", where, it, n_bad, total_bad)
            if total_bad > base.max_bad_rewards:
                host_state = host_state if host_state is not None else jax.device_get(stacked)
                ckpt.save_checkpoint(slot.manager, it, trainer.unstack_state(host_state, k), slot.meta)
                self._fail(
                    slot,
                    f"{total_bad} non-finite rewards (limit max_bad_rewards={base.max_bad_rewards}) at iteration {it}: "
                    f"the reward model returned {rewards[k].tolist()}; the state before it is checkpointed in "
                    f"{slot.run.run_dir}",
                    BadRewardError,
                )
        active = np.array([s.active for s in slots])
        batch = trainer.Batch(
            x=x,
            reward=shard_prompts(jnp.asarray(np.where(valid, rewards, 0.0)), self.mesh),
            valid=shard_prompts(jnp.asarray(valid), self.mesh),
            prompt_embedding=emb_dev,
        )
        stacked, dev_metrics = self.update_jit(stacked, batch, shard_prompts(jnp.asarray(active), self.mesh))
        metrics = {k: np.asarray(v) for k, v in jax.device_get(dev_metrics).items()}
        t_end = time.perf_counter()
        n_running = max(int(active.sum()), 1)
        timing = {
            "time/iter_s": (t_end - t0) / n_running,
            "time/env_s": (t_env - t0) / n_running,
            "time/reward_s": (t_reward - t_env) / n_running,
            "time/update_s": (t_end - t_reward) / n_running,
        }
        if self.prompt_set:
            timing.update({"time/group_iter_s": t_end - t0, "batch/running": n_running})
        save_at = []
        for k in np.flatnonzero(active):
            slot, it = slots[k], int(steps[k])
            if valid[k].any():
                m = {key: _scalar(v[k]) for key, v in metrics.items()}
                if not m["params/finite"]:
                    self._fail(
                        slot,
                        f"the policy or DRCM parameters became NaN/inf at iteration {it} (metrics: {m}); the last "
                        f"good checkpoint in {slot.run.run_dir / rundir.CHECKPOINT_DIR} is step "
                        f"{slot.manager.latest_step()}",
                        FloatingPointError,
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
            self._checkpoint(slots, stacked, save_at)
        target = max(s.result.step for s in slots if s.run is not None)
        if target > shown and progress is not None:
            running_r = [metrics["reward/mean"][k] for k in np.flatnonzero(active) if valid[k].any()]
            reward = float(np.mean(running_r)) if running_r else float("nan")
            fields = {"reward": reward}
            if self.prompt_set:
                fields.update(running=f"{n_running}/{self.p_size}", group=group_label)
            progress.update(target - shown, **fields)
        return stacked, max(target, shown)

    def _final_samples(self, stacked: trainer.FindState, slots: list[_Slot], done: list[int], env_fn) -> None:
        """``final_latents.npy`` [n, *latent_shape], ``final_samples.npy`` [n, ...], ``final_rewards.npy`` [n] of
        the ``done`` prompts: ``num_final_samples`` draws from the learned distribution with ``rng_final``."""
        base = self.base
        n = base.num_final_samples
        _, _, rng_final = trainer.split_seed(base.seed)
        latents, rng_env = trainer.batch_final_sample(
            stacked.policy, rng_final, n=n, sigma_param=base.sigma_param, sigma_min=float(base.sigma_min)
        )
        rngs = jnp.broadcast_to(rng_env, (latents.shape[0], *rng_env.shape))
        media = np.asarray(jax.device_get(env_fn(latents, rngs)), np.float32)
        latents = np.asarray(jax.device_get(latents))
        flat = media[done].reshape(len(done) * n, *media.shape[2:])
        rewards = np.asarray(self.reward_fn(flat, [slots[k].config.prompt for k in done for _ in range(n)]), np.float32)
        rewards = rewards.reshape(len(done), n)
        for j, k in enumerate(done):
            arrays = {"final_latents": latents[k], "final_samples": media[k], "final_rewards": rewards[j]}
            rundir.save_arrays(slots[k].run.run_dir, arrays)


def _scalar(v: np.ndarray) -> Any:
    v = np.asarray(v)
    return bool(v) if v.dtype == bool else (int(v) if np.issubdtype(v.dtype, np.integer) else float(v))


__all__ = ["Interrupted", "ProgressSink", "PromptRun", "optimize_one", "run_prompts"]
