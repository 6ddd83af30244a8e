"""The FIND optimisation loop (paper Algorithm 1) against an abstract environment.

One iteration for one prompt:

1. ``x ~ pi_theta``: ``samples_per_iter`` latents ``[N, C, h, w]`` (Eq. 6), key ``fold_in(rng, step)``;
2. ``images = env_fn(x, rng_env)`` — the frozen sampler, a black box (no gradient);
3. ``r = reward_fn(images, [prompt] * N)`` on the host; non-finite rewards are skipped and counted;
4. :func:`make_update_fn`'s pure, jitted ``update(state, batch)``:
   DRCM prediction ``V = V_phi(mu, sigma)`` and one AdamW step on Eq. 10; advantage ``A = r - V``
   (``A = r`` without DRCM); the samples enter the replay buffer with ``logp_ref``; ``update_epochs``
   AdamW steps on the policy loss of :mod:`find_jax.objective` (Eq. 13 over the buffer, or REINFORCE
   on the current samples without RCA); the sigma projection of the ``clamp`` parameterisation.

The state (:class:`FindState`) is one pytree whose every leaf can take a leading prompt axis, and the update
is a pure function of ``(state, batch)``, so batching prompts is ``jax.vmap`` over both.

Randomness: one seed, split once into ``rng_init`` (DRCM init), ``rng_loop`` (kept in the state; iteration
``k`` uses ``fold_in(rng_loop, k)``) and ``rng_final`` (final samples). No host RNG; a resumed run draws the
same numbers and ends in exactly the state of an uninterrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from find_jax import checkpoint as ckpt
from find_jax.config import FindConfig, config_diff, config_from_dict, config_hash, config_to_dict
from find_jax.drcm import DrcmMLP, drcm_feature_dim, drcm_features, drcm_loss_fn
from find_jax.metrics import MetricsWriter, truncate_after
from find_jax.objective import masked_mean, policy_loss_fn
from find_jax.policy import (
    PolicyParams,
    init_policy,
    log_prob_fn,
    prior_log_prob,
    project_params,
    rng_sample_fn,
    sigma_fn,
)
from find_jax.replay import ReplayBuffer, add_to_replay, init_replay

logger = logging.getLogger(__name__)

EnvFn = Callable[[jax.Array, jax.Array], jax.Array]  # env_fn(latents [N, C, h, w], rng) -> images [N, H, W, 3]
RewardFn = Callable[[Any, list[str]], np.ndarray]  # reward_fn(images, prompts) -> [N] float32

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
RUN_FORMAT_VERSION = 1


class RunDirError(RuntimeError):
    """The workdir cannot be used for this run (another config/model/shape, or not a find-jax run)."""


class BadRewardError(RuntimeError):
    """Too many non-finite rewards: the run stopped (its last good state is checkpointed)."""


@struct.dataclass
class FindState:
    """Everything one prompt's optimisation carries from iteration to iteration.

    policy: mu, sigma_raw [C, h, w]; policy_opt_state: AdamW state of the policy;
    drcm_params / drcm_opt_state: V_phi and its AdamW state; replay: :class:`ReplayBuffer`;
    step: [] int32 iterations done; rng: [2] uint32 loop key (iteration k uses ``fold_in(rng, k)``);
    bad_rewards: [] int32 non-finite rewards skipped so far.
    sigma_param / sigma_min: static (not arrays): how ``sigma_raw`` maps to sigma, so a state alone can be
    sampled from (:func:`sample_from_state`).
    """

    policy: PolicyParams
    policy_opt_state: Any
    drcm_params: Any
    drcm_opt_state: Any
    replay: ReplayBuffer
    step: jax.Array
    rng: jax.Array
    bad_rewards: jax.Array
    sigma_param: str = struct.field(pytree_node=False, default="log")
    sigma_min: float = struct.field(pytree_node=False, default=1e-4)

    @property
    def sigma(self) -> jax.Array:
        """The standard deviation ``[C, h, w]`` of the learned distribution."""
        return sigma_fn(self.policy.sigma_raw, sigma_param=self.sigma_param, sigma_min=self.sigma_min)


@struct.dataclass
class Batch:
    """One iteration's observations: x [N, C, h, w]; reward [N] (0 where invalid); valid [N] bool;
    prompt_embedding [E] (E = 0 unless the DRCM is text-conditioned)."""

    x: jax.Array
    reward: jax.Array
    valid: jax.Array
    prompt_embedding: jax.Array


def split_seed(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(rng_init, rng_loop, rng_final)`` — the run's three named keys from its single seed."""
    rng_init, rng_loop, rng_final = jax.random.split(jax.random.PRNGKey(seed), 3)
    return rng_init, rng_loop, rng_final


def make_drcm(config: FindConfig) -> DrcmMLP:
    """The config's ``V_phi`` module."""
    return DrcmMLP(hidden=tuple(config.drcm_hidden))


def make_optimizers(config: FindConfig) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """``(policy_tx, drcm_tx)``: AdamW(lr, weight_decay) on (mu, sigma_raw) [optionally after global-norm
    clipping], and AdamW(drcm_lr, weight_decay) on V_phi."""
    policy_tx = optax.adamw(config.lr, weight_decay=config.weight_decay)
    if config.max_grad_norm > 0:
        policy_tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), policy_tx)
    drcm_tx = optax.adamw(config.drcm_lr, weight_decay=config.weight_decay)
    return policy_tx, drcm_tx


def prompt_embed_dim(config: FindConfig, prompt_embedding: np.ndarray | None) -> int:
    """``E``, the size of the DRCM's text condition ``prompt_embedding: [E]``; 0 without text conditioning.

    Raises ``ValueError`` when ``config.drcm_text_conditioned`` and the embedding is missing, empty or not finite.
    """
    if not config.drcm_text_conditioned:
        return 0
    if prompt_embedding is None:
        raise ValueError(
            "drcm_text_conditioned=True needs a prompt_embedding (the text encoder's embedding of the prompt)"
        )
    emb = np.asarray(prompt_embedding)
    if emb.size == 0 or not np.all(np.isfinite(emb)):
        raise ValueError(f"prompt_embedding must be a non-empty finite array; got shape {emb.shape}")
    return int(emb.size)


def init_state(config: FindConfig, latent_shape: tuple[int, int, int], *, embed_dim: int = 0) -> FindState:
    """The initial state: policy N(0, I), a fresh V_phi, empty replay, step 0 (all from ``config.seed``).

    Built by one jitted function (eager construction costs one compilation per small op).
    """
    latent_shape = check_latent_shape(latent_shape)
    policy_tx, drcm_tx = make_optimizers(config)
    module = make_drcm(config)
    feature_dim = drcm_feature_dim(latent_shape, embed_dim)

    def build() -> FindState:
        rng_init, rng_loop, _ = split_seed(config.seed)
        policy = init_policy(latent_shape, sigma_param=config.sigma_param)
        policy = project_params(policy, sigma_param=config.sigma_param, sigma_min=config.sigma_min)
        drcm_params = module.init(rng_init, jnp.zeros((1, feature_dim), jnp.float32))
        return FindState(
            policy=policy,
            policy_opt_state=policy_tx.init(policy),
            drcm_params=drcm_params,
            drcm_opt_state=drcm_tx.init(drcm_params),
            replay=init_replay(config.replay_size, latent_shape),
            step=jnp.zeros((), jnp.int32),
            rng=rng_loop,
            bad_rewards=jnp.zeros((), jnp.int32),
            sigma_param=config.sigma_param,
            sigma_min=float(config.sigma_min),
        )

    return jax.jit(build)()


def check_latent_shape(latent_shape: Any) -> tuple[int, int, int]:
    """``latent_shape`` as a tuple of ints ``(C, h, w)``; raises ``ValueError`` unless three positive sizes."""
    shape = tuple(int(d) for d in latent_shape)
    if len(shape) != 3 or any(d < 1 for d in shape):
        raise ValueError(f"latent_shape must be (C, h, w) with positive sizes; got {latent_shape}")
    return shape  # type: ignore[return-value]


def make_update_fn(
    config: FindConfig,
) -> Callable[[FindState, Batch], tuple[FindState, dict[str, jax.Array]]]:
    """The pure per-prompt update ``update(state, batch) -> (state, metrics)`` (not jitted).

    Steps (see the module doc): DRCM prediction and Eq. 10 step; ``A = r - V`` (``A = r`` without DRCM);
    reference log-prob of the new samples (``log pi_theta_k(x)`` under the policy that drew them for
    ``reference="previous"``, ``log N(x; 0, I)`` for ``"initial"``); replay insertion; ``update_epochs``
    AdamW steps on the policy loss (Eq. 13 over all valid replay entries with RCA; REINFORCE over the
    current valid samples without); sigma projection. Metrics are scalars with flat keys.
    Hyper-parameters are read from ``config`` here, outside the traced function.
    """
    sp, smin, reduce = config.sigma_param, float(config.sigma_min), config.logprob_reduce
    use_drcm, use_rca, text_cond = config.use_drcm, config.use_rca, config.drcm_text_conditioned
    epochs, normalize = config.update_epochs, config.normalize_advantage
    module = make_drcm(config)
    policy_tx, drcm_tx = make_optimizers(config)
    loss_kwargs = dict(
        sigma_param=sp,
        sigma_min=smin,
        logprob_reduce=reduce,
        use_rca=use_rca,
        clip_eps=float(config.clip_eps),
        clip_mode=config.clip_mode,
        kl_weight=float(config.kl_weight),
        reward_weight=float(config.reward_weight),
        max_log_ratio=float(config.max_log_ratio),
    )
    reference = config.reference

    def update(state: FindState, batch: Batch) -> tuple[FindState, dict[str, jax.Array]]:
        policy = state.policy
        valid = batch.valid
        reward = jnp.where(valid, batch.reward.astype(jnp.float32), 0.0)
        sigma = sigma_fn(policy.sigma_raw, sigma_param=sp, sigma_min=smin)
        features = drcm_features(policy.mu, sigma, batch.prompt_embedding if text_cond else None)

        # DRCM (Eq. 10): the prediction for the distribution that drew x, made before seeing r.
        (drcm_loss, pred), drcm_grads = jax.value_and_grad(drcm_loss_fn, has_aux=True)(
            state.drcm_params, module, features, reward, valid
        )
        if use_drcm:
            drcm_updates, drcm_opt_state = drcm_tx.update(drcm_grads, state.drcm_opt_state, state.drcm_params)
            drcm_params = optax.apply_updates(state.drcm_params, drcm_updates)
            advantage = reward - jax.lax.stop_gradient(pred)
        else:
            drcm_params, drcm_opt_state = state.drcm_params, state.drcm_opt_state
            advantage = reward
        advantage = jnp.where(valid, advantage, 0.0)

        x = batch.x.astype(jnp.float32)
        if reference == "previous":
            logp_ref = log_prob_fn(policy, x, sigma_param=sp, reduce=reduce, sigma_min=smin)
        else:
            logp_ref = prior_log_prob(x, reduce=reduce)
        replay, _ = add_to_replay(state.replay, x, reward, advantage, logp_ref, valid)

        if use_rca:
            loss_x, loss_ref, loss_adv, loss_mask = replay.x, replay.logp_ref, replay.advantage, replay.valid
        else:
            loss_x, loss_ref, loss_adv, loss_mask = x, logp_ref, advantage, valid
        if normalize:
            mean_sq = masked_mean(jnp.square(loss_adv), loss_mask) - jnp.square(masked_mean(loss_adv, loss_mask))
            loss_adv = loss_adv / (jnp.sqrt(jnp.maximum(mean_sq, 0.0)) + 1e-8)

        grad_fn = jax.value_and_grad(policy_loss_fn, has_aux=True)

        def epoch(carry, _):
            params, opt_state = carry
            (loss, aux), grads = grad_fn(params, loss_x, loss_ref, loss_adv, loss_mask, **loss_kwargs)
            updates, opt_state = policy_tx.update(grads, opt_state, params)
            params = project_params(optax.apply_updates(params, updates), sigma_param=sp, sigma_min=smin)
            ratio, m = aux["ratio"], loss_mask
            out = {
                "loss": loss,
                "pg_loss": aux["pg_loss"],
                "prior": aux["prior"],
                "grad_norm": optax.global_norm(grads),
                "ratio_mean": masked_mean(ratio, m),
                "ratio_min": jnp.min(jnp.where(m, ratio, jnp.inf)),
                "ratio_max": jnp.max(jnp.where(m, ratio, -jnp.inf)),
                "clip_frac": masked_mean(aux["clipped"].astype(jnp.float32), m),
            }
            return (params, opt_state), out

        (new_policy, policy_opt_state), per_epoch = jax.lax.scan(
            epoch, (policy, state.policy_opt_state), None, length=epochs
        )
        new_sigma = sigma_fn(new_policy.sigma_raw, sigma_param=sp, sigma_min=smin)
        n_valid = jnp.sum(valid.astype(jnp.int32))
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves((new_policy, drcm_params))])
        )
        metrics = {
            "reward/mean": masked_mean(reward, valid),
            "reward/max": jnp.max(jnp.where(valid, reward, -jnp.inf)),
            "reward/num_valid": n_valid,
            "drcm/pred": pred,
            "drcm/loss": drcm_loss,
            "adv/mean": masked_mean(advantage, valid),
            "rca/ratio_mean": jnp.mean(per_epoch["ratio_mean"]),
            "rca/ratio_min": jnp.min(per_epoch["ratio_min"]),
            "rca/ratio_max": jnp.max(per_epoch["ratio_max"]),
            "rca/clip_frac": jnp.mean(per_epoch["clip_frac"]),
            "policy/loss": per_epoch["loss"][0],
            "policy/pg_loss": per_epoch["pg_loss"][0],
            "policy/prior": per_epoch["prior"][-1],
            "policy/grad_norm": per_epoch["grad_norm"][0],
            "policy/mu_abs": jnp.mean(jnp.abs(new_policy.mu)),
            "policy/sigma_mean": jnp.mean(new_sigma),
            "policy/sigma_min": jnp.min(new_sigma),
            "params/finite": finite,
            "replay/size": jnp.sum(replay.valid.astype(jnp.int32)),
        }
        new_state = state.replace(
            policy=new_policy,
            policy_opt_state=policy_opt_state,
            drcm_params=drcm_params,
            drcm_opt_state=drcm_opt_state,
            replay=replay,
            step=state.step + 1,
            bad_rewards=state.bad_rewards + (valid.shape[0] - n_valid).astype(jnp.int32),
        )
        return new_state, metrics

    return update


def sample_from_state(state: FindState, rng: jax.Array, n: int) -> jax.Array:
    """``n`` latents ``[n, C, h, w]`` from the learned distribution N(mu, sigma^2) of ``state``."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return sample_jit(state.policy, rng, n=n, sigma_param=state.sigma_param, sigma_min=state.sigma_min)


@functools.partial(jax.jit, static_argnames=("n", "sigma_param", "sigma_min"))
def sample_jit(policy: PolicyParams, rng: jax.Array, *, n: int, sigma_param: str, sigma_min: float) -> jax.Array:
    """``n`` latents ``[n, C, h, w]`` from N(mu, sigma^2) of ``policy`` with key ``rng`` (jitted; keywords static)."""
    return rng_sample_fn(rng, policy, n, sigma_param=sigma_param, sigma_min=sigma_min)


@functools.partial(jax.jit, static_argnames=("n", "sigma_param", "sigma_min"))
def iteration_sample_jit(
    policy: PolicyParams, rng_loop: jax.Array, step: jax.Array, *, n: int, sigma_param: str, sigma_min: float
) -> tuple[jax.Array, jax.Array]:
    """Iteration ``step``'s draw: ``(x [n, C, h, w], rng_env)`` from ``fold_in(rng_loop, step)`` (jitted).

    A resumed run, and each prompt of a batch run, draws the same numbers as an uninterrupted single run.
    """
    rng_sample, rng_env = jax.random.split(jax.random.fold_in(rng_loop, step))
    return rng_sample_fn(rng_sample, policy, n, sigma_param=sigma_param, sigma_min=sigma_min), rng_env


# ----------------------------------------------------------------------------------------------------------
# Run directory


def array_hash(a: np.ndarray | None) -> str:
    """A 16-hex-digit SHA-256 of ``a`` as float32 bytes and shape (``""`` for ``None``): the prompt embedding's
    fingerprint in ``config.json``. Exact: any change of a bit gives another hash."""
    if a is None:
        return ""
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()[:16]


def run_record(config, latent_shape, embed_dim, model_id, weights_hash, embedding_hash) -> dict[str, Any]:
    """The run's ``config.json`` record: config, frozen model id and hash, ``latent_shape (C, h, w)``,
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


def _to_host_metrics(metrics: dict[str, jax.Array]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = bool(v) if v.dtype == bool else (int(v) if np.issubdtype(v.dtype, np.integer) else float(v))
    return out


def optimize(
    config: FindConfig,
    workdir: str | Path,
    *,
    env_fn: EnvFn,
    reward_fn: RewardFn,
    latent_shape: tuple[int, int, int],
    prompt_embedding: np.ndarray | None = None,
    model_id: str = "",
    weights_hash: str = "",
    progress: bool = False,
) -> FindState:
    """Runs (or resumes) FIND for ``config.prompt`` in ``workdir`` and returns the final state.

    env_fn(latents [N, C, h, w], rng) -> images [N, H, W, 3] in [0, 1] (the frozen sampler);
    reward_fn(images, prompts) -> [N] float32 host array. ``prompt_embedding: [E]`` is required when
    ``config.drcm_text_conditioned``. ``model_id`` / ``weights_hash`` identify the frozen model (recorded
    in ``config.json`` and checkpoints; the weights themselves are never saved).

    Writes ``config.json``, ``metrics.jsonl`` (one line per iteration), Orbax checkpoints every
    ``checkpoint_every`` iterations and at the end, and finally ``final_latents.npy`` /
    ``final_samples.npy`` / ``final_rewards.npy`` (``num_final_samples`` draws from the learned
    distribution). An existing workdir of the same setup resumes from its last checkpoint; one of another
    setup raises :class:`RunDirError`. Non-finite rewards are skipped and counted; more than
    ``max_bad_rewards`` raises :class:`BadRewardError`; NaN parameters raise ``FloatingPointError``.
    """
    if not config.prompt.strip():
        raise ValueError("config.prompt is empty: give the text prompt to optimise for")
    latent_shape = check_latent_shape(latent_shape)
    embed_dim = prompt_embed_dim(config, prompt_embedding)
    emb = np.asarray(prompt_embedding, np.float32).ravel() if embed_dim else np.zeros((0,), np.float32)
    record = run_record(config, latent_shape, embed_dim, model_id, weights_hash, array_hash(emb if embed_dim else None))
    workdir = Path(workdir)
    resuming = prepare_workdir(workdir, record, config)

    manager = ckpt.make_manager(workdir / CHECKPOINT_DIR)
    meta = checkpoint_meta(config, record)
    state = init_state(config, latent_shape, embed_dim=embed_dim)
    if resuming and manager.latest_step() is not None:
        state, _ = ckpt.restore_checkpoint(manager, state, meta)
        logger.info("resuming %s from iteration %d", workdir, int(state.step))
    start = int(state.step)
    metrics_path = workdir / METRICS_FILE
    dropped = truncate_after(metrics_path, start)
    if dropped:
        logger.info("dropped %d metric lines past the checkpoint at iteration %d (they are redone)", dropped, start)
    writer = MetricsWriter(metrics_path)

    n = config.samples_per_iter
    prompts = [config.prompt] * n
    update_jit = jax.jit(make_update_fn(config), donate_argnums=0)
    emb_dev = jnp.asarray(emb)

    for it in range(start, config.iterations):
        t0 = time.perf_counter()
        x, rng_env = iteration_sample_jit(
            state.policy,
            state.rng,
            jnp.int32(it),
            n=n,
            sigma_param=config.sigma_param,
            sigma_min=float(config.sigma_min),
        )
        images = jax.block_until_ready(env_fn(x, rng_env))  # so time/env_s is the sampler's time
        t_env = time.perf_counter()
        rewards = np.asarray(reward_fn(images, prompts), np.float32).reshape(-1)
        if rewards.shape != (n,):
            raise ValueError(f"reward_fn returned {rewards.shape[0]} rewards for {n} images")
        t_reward = time.perf_counter()
        valid = np.isfinite(rewards)
        n_bad = int(n - valid.sum())
        if n_bad:
            total_bad = int(state.bad_rewards) + n_bad
            logger.warning("iteration %d: %d non-finite reward(s) skipped (%d so far)", it, n_bad, total_bad)
            if total_bad > config.max_bad_rewards:
                ckpt.save_checkpoint(manager, it, state, meta)
                raise BadRewardError(
                    f"{total_bad} non-finite rewards (limit max_bad_rewards={config.max_bad_rewards}) at "
                    f"iteration {it}: the reward model returned {rewards.tolist()}. The state before this "
                    f"iteration is checkpointed in {workdir}."
                )
        if valid.any():
            batch = Batch(
                x=x,
                reward=jnp.asarray(np.where(valid, rewards, 0.0)),
                valid=jnp.asarray(valid),
                prompt_embedding=emb_dev,
            )
            state, dev_metrics = update_jit(state, batch)
            m = _to_host_metrics(dev_metrics)
            if not m["params/finite"]:
                raise FloatingPointError(
                    f"the policy or DRCM parameters became NaN/inf at iteration {it} (metrics: {m}); the last good "
                    f"checkpoint in {workdir / CHECKPOINT_DIR} is step {manager.latest_step()}"
                )
        else:
            state = state.replace(step=state.step + 1, bad_rewards=state.bad_rewards + n_bad)
            m = {"reward/num_valid": 0}
        t_end = time.perf_counter()
        m.update(
            {
                "step": it + 1,
                "rewards/bad_total": int(state.bad_rewards),
                "time/iter_s": t_end - t0,
                "time/env_s": t_env - t0,
                "time/reward_s": t_reward - t_env,
                "time/update_s": t_end - t_reward,
            }
        )
        writer.write(m)
        if progress:
            r = m.get("reward/mean", float("nan"))
            sys.stderr.write(f"\riter {it + 1}/{config.iterations}  reward {r:+.4f}  {m['time/iter_s']:.2f}s ")
            sys.stderr.flush()
        if (it + 1) % config.checkpoint_every == 0 or it + 1 == config.iterations:
            ckpt.save_checkpoint(manager, it + 1, state, meta)
    if progress:
        sys.stderr.write("\n")
    if int(state.step) == config.iterations and manager.latest_step() != config.iterations:
        ckpt.save_checkpoint(manager, config.iterations, state, meta)
    _write_final_samples(config, state, workdir, env_fn, reward_fn)
    return state


def _write_final_samples(
    config: FindConfig, state: FindState, workdir: Path, env_fn: EnvFn, reward_fn: RewardFn
) -> None:
    """``final_latents.npy`` [n, C, h, w], ``final_samples.npy`` [n, H, W, 3], ``final_rewards.npy`` [n]."""
    n = config.num_final_samples
    if n == 0:
        return
    _, _, rng_final = split_seed(config.seed)
    rng_sample, rng_env = jax.random.split(rng_final)
    latents = sample_from_state(state, rng_sample, n)
    images = np.asarray(jax.device_get(env_fn(latents, rng_env)), np.float32)
    rewards = np.asarray(reward_fn(images, [config.prompt] * n), np.float32).reshape(-1)
    for name, arr in (
        ("final_latents", np.asarray(latents)),
        ("final_samples", images),
        ("final_rewards", rewards),
    ):
        tmp = workdir / f"{name}.tmp.npy"
        np.save(tmp, arr)
        tmp.replace(workdir / f"{name}.npy")


def load_state(workdir: str | Path, *, step: int | None = None) -> FindState:
    """The state of the latest (or ``step``'s) checkpoint in ``workdir``.

    The template comes from the run's ``config.json``; a checkpoint written for another latent shape,
    config or model, or a corrupt one, raises :class:`~find_jax.checkpoint.CheckpointError` with the reason.
    """
    workdir = Path(workdir)
    config, record = read_run(workdir)
    ckpt_dir = workdir / CHECKPOINT_DIR
    if not ckpt_dir.exists():
        raise ckpt.CheckpointError(f"{workdir} has no checkpoints yet ({ckpt_dir} is missing)")
    manager = ckpt.make_manager(ckpt_dir)
    template = init_state(config, tuple(record["latent_shape"]), embed_dim=int(record["embed_dim"]))
    state, _ = ckpt.restore_checkpoint(manager, template, checkpoint_meta(config, record), step=step)
    return state


__all__ = [
    "Batch",
    "BadRewardError",
    "EnvFn",
    "FindState",
    "RewardFn",
    "RunDirError",
    "array_hash",
    "check_latent_shape",
    "checkpoint_meta",
    "init_state",
    "iteration_sample_jit",
    "load_state",
    "make_optimizers",
    "make_update_fn",
    "optimize",
    "prepare_workdir",
    "prompt_embed_dim",
    "read_run",
    "run_record",
    "sample_from_state",
    "sample_jit",
    "split_seed",
]
