"""The policy objective: Ratio Clipping Algorithm (paper section 4.4, Eq. 11-13) and its ablation.

With the importance ratio ``rho = exp(log pi_theta(x) - log pi_ref(x))`` and the calibrated reward
(advantage) ``A`` of a sample, the per-sample objective to *maximise* is

* ``clip_mode="ppo_min"`` (default): ``min(rho * A, clip(rho, 1-eps, 1+eps) * A)`` (Eq. 13, PPO);
* ``clip_mode="clamp"`` (public code): ``clip(rho, 1-eps, 1+eps) * A``;
* ``use_rca=False`` (ablation "w/o RCA"): ``A * log pi_theta(x)`` — REINFORCE (Eq. 8) whose gradient
  equals the ratio form's at ``rho = 1``.

The loss is ``-reward_weight * mean_valid(objective) + kl_weight * mean((mu - 0)^2 + (sigma - 1)^2)``
(the second term is the public code's prior regulariser; 0 in the paper).

``clip`` passes the gradient for ``1-eps <= rho <= 1+eps`` (boundaries included, as ``torch.clamp``)
and blocks it outside; a sample counts as *clipped* when ``|rho - 1| > eps`` (strictly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from find_jax.policy import PolicyParams, log_prob_fn, sigma_fn


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values[mask]`` (0 when the mask is empty); ``values, mask: [N]``."""
    m = mask.astype(values.dtype)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)


def clip_ratio(ratio: jax.Array, clip_eps: float) -> jax.Array:
    """``clip(rho, 1-eps, 1+eps)`` with gradient 1 on the closed interval and 0 outside (Eq. 13)."""
    lo = jnp.asarray(1.0 - clip_eps, ratio.dtype)
    hi = jnp.asarray(1.0 + clip_eps, ratio.dtype)
    return jnp.where(ratio < lo, lo, jnp.where(ratio > hi, hi, ratio))


def is_clipped(ratio: jax.Array, clip_eps: float) -> jax.Array:
    """``[N]`` bool: ``rho`` lies strictly outside ``[1-eps, 1+eps]``."""
    lo = jnp.asarray(1.0 - clip_eps, ratio.dtype)
    hi = jnp.asarray(1.0 + clip_eps, ratio.dtype)
    return (ratio < lo) | (ratio > hi)


def rca_objective(ratio: jax.Array, advantage: jax.Array, *, clip_eps: float, clip_mode: str) -> jax.Array:
    """Per-sample clipped surrogate (to maximise), Eq. 13: ``ratio, advantage: [N]`` -> ``[N]``.

    ``"ppo_min"``: ``min(rho A, clip(rho) A)`` — the pessimistic bound; the gradient vanishes only where
    clipping makes the objective smaller, i.e. where the step already went far enough in A's direction.
    ``"clamp"``: ``clip(rho) A`` — no gradient at all once ``rho`` leaves the interval.
    """
    clipped = clip_ratio(ratio, clip_eps) * advantage
    if clip_mode == "clamp":
        return clipped
    if clip_mode != "ppo_min":
        raise ValueError(f"unknown clip_mode {clip_mode!r}; valid: ppo_min, clamp")
    unclipped = ratio * advantage
    return jnp.where(unclipped <= clipped, unclipped, clipped)


def prior_penalty(mu: jax.Array, sigma: jax.Array) -> jax.Array:
    """The public code's regulariser ``mean((mu - 0)^2 + (sigma - 1)^2)`` over ``[C, h, w]``."""
    return jnp.mean(jnp.square(mu) + jnp.square(sigma - 1.0))


def policy_loss_fn(
    params: PolicyParams,
    x: jax.Array,
    logp_ref: jax.Array,
    advantage: jax.Array,
    mask: jax.Array,
    *,
    sigma_param: str,
    sigma_min: float,
    logprob_reduce: str,
    use_rca: bool,
    clip_eps: float,
    clip_mode: str,
    kl_weight: float,
    reward_weight: float,
    max_log_ratio: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss to minimise over the policy ``params`` (Eq. 11-13 with RCA, Eq. 8 without).

    x: [N, C, h, w] samples; logp_ref: [N] reference log-probs (see :mod:`find_jax.replay`);
    advantage: [N] calibrated rewards ``r - V`` (constants); mask: [N] bool, the samples that count.
    ``log rho`` is clamped to ``[-max_log_ratio, max_log_ratio]`` before ``exp`` so that float32 ratios
    (and AdamW's squared gradients) stay finite with summed log-probs over thousands of elements.

    Returns ``(loss, aux)``; aux holds ``ratio [N]``, ``clipped [N]``, ``pg_loss``, ``prior``.
    """
    logp = log_prob_fn(params, x, sigma_param=sigma_param, reduce=logprob_reduce, sigma_min=sigma_min)
    log_ratio = jnp.clip(logp - logp_ref, -max_log_ratio, max_log_ratio)
    ratio = jnp.exp(log_ratio)
    if use_rca:
        objective = rca_objective(ratio, advantage, clip_eps=clip_eps, clip_mode=clip_mode)
    else:
        objective = advantage * logp
    pg_loss = -reward_weight * masked_mean(objective, mask)
    sigma = sigma_fn(params.sigma_raw, sigma_param=sigma_param, sigma_min=sigma_min)
    prior = prior_penalty(params.mu, sigma)
    loss = pg_loss + kl_weight * prior
    aux = {"ratio": ratio, "clipped": is_clipped(ratio, clip_eps), "pg_loss": pg_loss, "prior": prior}
    return loss, aux
