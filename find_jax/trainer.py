"""FIND's state and its pure, jitted steps (paper Algorithm 1), for any latent shape and any environment.

One iteration for one prompt (the host side is :mod:`find_jax.loop`):

1. ``x ~ pi_theta``: ``samples_per_iter`` latents ``[N, *latent_shape]`` (Eq. 6), key ``fold_in(rng, step)``
   (:func:`iteration_sample_jit`); ``latent_shape`` is ``(C, h, w)`` for images, ``(C, F, h, w)`` for video;
2. ``media = env_fn(x, rng_env)`` — the frozen sampler, a black box (no gradient);
3. ``r = reward_fn(media, [prompt] * N)`` on the host; non-finite rewards are skipped and counted;
4. :func:`make_update_fn`'s pure ``update(state, batch)``:
   DRCM prediction ``V = V_phi(mu, sigma)`` and one AdamW step on Eq. 10; advantage ``A = r - V``
   (``A = r`` without DRCM); the samples enter the replay buffer with ``logp_ref``; ``update_epochs``
   AdamW steps on the policy loss of :mod:`find_jax.objective` (Eq. 13 over the buffer, or REINFORCE
   on the current samples without RCA); the sigma projection of the ``clamp`` parameterisation.

The state (:class:`FindState`) is one pytree whose every leaf can take a leading prompt axis, and the update
is a pure function of ``(state, batch)``, so batching prompts is ``jax.vmap`` over both
(:func:`make_batch_update_fn`); the loop always runs the batched form, a single prompt being a set of one.

Randomness: one seed, split once into ``rng_init`` (DRCM init), ``rng_loop`` (kept in the state; iteration
``k`` uses ``fold_in(rng_loop, k)``) and ``rng_final`` (final samples). No host RNG; a resumed run draws the
same numbers and ends in exactly the state of an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from find_jax.config import FindConfig
from find_jax.drcm import DrcmMLP, drcm_feature_dim, drcm_features, drcm_loss_fn
from find_jax.objective import masked_mean, policy_loss_fn
from find_jax.policy import (
    PolicyParams,
    block_average,
    check_mu_grid,
    init_policy,
    log_prob_fn,
    prior_log_prob,
    project_params,
    rng_sample_fn,
    sigma_fn,
)
from find_jax.replay import ReplayBuffer, add_to_replay, init_replay

logger = logging.getLogger(__name__)

RewardFn = Callable[[Any, list[str]], np.ndarray]  # reward_fn(media [B, ...], prompts [B]) -> [B] float32


@struct.dataclass
class FindState:
    """Everything one prompt's optimisation carries from iteration to iteration.

    policy: mu, sigma_raw [*latent_shape]; policy_opt_state: AdamW state of the policy;
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
        """The standard deviation ``[*latent_shape]`` of the learned distribution."""
        return sigma_fn(self.policy.sigma_raw, sigma_param=self.sigma_param, sigma_min=self.sigma_min)


@struct.dataclass
class Batch:
    """One iteration's observations: x [N, *latent_shape]; reward [N] (0 where invalid); valid [N] bool;
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
    clipping], and AdamW(drcm_lr, weight_decay) on V_phi.

    With ``mu_grid = g > 0`` the gradient of mu is first projected onto the g x g block-constant means
    (:func:`find_jax.policy.block_average`). mu starts at 0 and AdamW acts element-wise, so every element of a
    block keeps the same moments and the same value: this is AdamW on the coarse grid itself (Adam is invariant
    to the block-size factor of the gradient), and mu stays a full ``[*latent_shape]`` array for sampling,
    checkpoints and export."""
    policy_tx = optax.adamw(config.lr, weight_decay=config.weight_decay)
    if config.max_grad_norm > 0:
        policy_tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), policy_tx)
    if config.mu_grid > 0:
        grid = config.mu_grid

        def project(updates, state, params=None):
            del params
            return updates.replace(mu=block_average(updates.mu, grid)), state

        policy_tx = optax.chain(optax.GradientTransformation(lambda params: optax.EmptyState(), project), policy_tx)
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


def init_state(config: FindConfig, latent_shape: Sequence[int], *, embed_dim: int = 0) -> FindState:
    """The initial state: policy N(0, I), a fresh V_phi, empty replay, step 0 (all from ``config.seed``).

    Built by one jitted function (eager construction costs one compilation per small op).
    """
    latent_shape = check_latent_shape(latent_shape)
    check_mu_grid(latent_shape, config.mu_grid)
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


def check_latent_shape(latent_shape: Any) -> tuple[int, ...]:
    """``latent_shape`` as a tuple of ints: ``(C, h, w)`` (images) or ``(C, F, h, w)`` (video); raises
    ``ValueError`` unless it has three or four positive sizes."""
    try:
        shape = tuple(int(d) for d in latent_shape)
    except (TypeError, ValueError):
        raise ValueError(f"latent_shape must be (C, h, w) or (C, F, h, w); got {latent_shape!r}") from None
    if len(shape) not in (3, 4) or any(d < 1 for d in shape):
        raise ValueError(f"latent_shape must be (C, h, w) or (C, F, h, w) with positive sizes; got {latent_shape}")
    return shape


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
    """``n`` latents ``[n, *latent_shape]`` from the learned distribution N(mu, sigma^2) of ``state``."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return sample_jit(state.policy, rng, n=n, sigma_param=state.sigma_param, sigma_min=state.sigma_min)


@functools.partial(jax.jit, static_argnames=("n", "sigma_param", "sigma_min"))
def sample_jit(policy: PolicyParams, rng: jax.Array, *, n: int, sigma_param: str, sigma_min: float) -> jax.Array:
    """``n`` latents ``[n, *latent_shape]`` from N(mu, sigma^2) of ``policy`` with key ``rng`` (jitted; keywords
    static)."""
    return rng_sample_fn(rng, policy, n, sigma_param=sigma_param, sigma_min=sigma_min)


@functools.partial(jax.jit, static_argnames=("n", "sigma_param", "sigma_min"))
def iteration_sample_jit(
    policy: PolicyParams, rng_loop: jax.Array, step: jax.Array, *, n: int, sigma_param: str, sigma_min: float
) -> tuple[jax.Array, jax.Array]:
    """Iteration ``step``'s draw: ``(x [n, *latent_shape], rng_env)`` from ``fold_in(rng_loop, step)`` (jitted).

    A resumed run, and each prompt of a batch run, draws the same numbers as an uninterrupted single run.
    """
    rng_sample, rng_env = jax.random.split(jax.random.fold_in(rng_loop, step))
    return rng_sample_fn(rng_sample, policy, n, sigma_param=sigma_param, sigma_min=sigma_min), rng_env


# ----------------------------------------------------------------------------------------------------------
# Prompt sets: every leaf with a leading prompt axis [P, ...], the update vmapped over it.


def stack_states(states: Sequence[FindState]) -> FindState:
    """``P`` states -> one state whose every leaf has a leading prompt axis ``[P, ...]``."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *states)


def unstack_state(state: FindState, index: int) -> FindState:
    """Prompt ``index`` of a stacked state, as host (numpy) arrays."""
    return jax.tree.map(lambda a: np.asarray(a)[index], state)


def make_batch_update_fn(config: FindConfig):
    """The vmapped update ``update(state [P], batch [P], active [P]) -> (state, metrics [P])`` (not jitted).

    Per prompt: ``active`` and at least one finite reward -> the trainer's update (Eq. 10, 13; kept only if
    the new parameters are finite, ``metrics["params/finite"]``); ``active`` and no finite reward -> only
    ``step`` and ``bad_rewards`` advance (as a single run skips the update); inactive -> unchanged.

    With one prompt (``P = 1``, known when tracing) the update runs unbatched on the squeezed state: XLA rounds
    the vmapped DRCM's batched matmuls differently (~3e-5 in mu after 150 iterations), and a single run's
    results should not depend on this being the prompt-set code path.
    """
    one_fn = make_update_fn(config)
    batched_fn = jax.vmap(one_fn)

    def update_fn(state: FindState, batch: Batch):
        if state.step.shape[0] != 1:
            return batched_fn(state, batch)
        squeeze = lambda tree: jax.tree.map(lambda a: a[0], tree)
        new, metrics = one_fn(squeeze(state), squeeze(batch))
        return jax.tree.map(lambda a: a[None], (new, metrics))

    def update(state: FindState, batch: Batch, active: jax.Array):
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
def batch_update_jit(config: FindConfig):
    """The jitted batch update for ``config`` (its prompt blanked), compiled once per config and shape and
    reused by every later batch of this process (the config is frozen and hashable)."""
    return jax.jit(make_batch_update_fn(config), donate_argnums=0)


@functools.partial(jax.jit, static_argnames=("n", "sigma_param", "sigma_min"))
def batch_iteration_sample(policy, rng_loop, step, *, n: int, sigma_param: str, sigma_min: float):
    """Every prompt's draw for its own iteration ``step[p]``: ``(x [P, n, *latent_shape], rng_env [P, 2])``,
    the very numbers a single run of that prompt draws."""
    one = functools.partial(iteration_sample_jit, n=n, sigma_param=sigma_param, sigma_min=sigma_min)
    return jax.vmap(one)(policy, rng_loop, step)


@functools.partial(jax.jit, static_argnames=("n", "sigma_param", "sigma_min"))
def batch_final_sample(policy, rng_final, *, n: int, sigma_param: str, sigma_min: float):
    """``(latents [P, n, *latent_shape], rng_env [2])`` of the final samples, as a single run's ``final_*``."""
    rng_sample, rng_env = jax.random.split(rng_final)
    one = functools.partial(sample_jit, n=n, sigma_param=sigma_param, sigma_min=sigma_min)
    if policy.mu.shape[0] == 1:  # one prompt: unbatched, so the draws equal a single run's bit for bit
        return one(jax.tree.map(lambda a: a[0], policy), rng_sample)[None], rng_env
    return jax.vmap(one, in_axes=(0, None))(policy, rng_sample), rng_env
