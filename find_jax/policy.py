"""The Gaussian policy over the initial latent (paper Eq. 5-8).

FIND treats one prompt as a one-step MDP (Eq. 5): the state is the prompt, the action is the initial latent
``x_T`` and the policy is a per-element Gaussian (Eq. 6)

    pi_theta(x) = prod_i N(x_i; mu_i, sigma_i^2),     mu, sigma: [C, h, w],

initialised at the diffusion model's prior N(0, I). The policy is a pytree of two arrays
(:class:`PolicyParams`) and every function here is pure; which sigma parameterisation and which log-prob
reduction are used are keyword-only static arguments (strings), so the functions jit and vmap.

Sigma parameterisations (``sigma_param``):

* ``"log"``: ``sigma = exp(s)`` — unconstrained, scale-free steps (the usual PPO ``log_std``);
* ``"softplus"``: ``sigma = softplus(s)``;
* ``"clamp"``: ``sigma = s`` itself, projected to ``s >= sigma_min`` after every optimiser step
  (:func:`project_params`) — the public PyTorch code's choice.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

SIGMA_PARAMS = ("log", "softplus", "clamp")
LOGPROB_REDUCES = ("sum", "mean")
_LOG_2PI = math.log(2.0 * math.pi)


@struct.dataclass
class PolicyParams:
    """Trainable parameters of the initial-noise distribution (Eq. 6).

    mu: [C, h, w] per-element mean.
    sigma_raw: [C, h, w] unconstrained sigma parameter; the standard deviation is
        :func:`sigma_fn` ``(sigma_raw)`` (its meaning depends on ``sigma_param``).
    Both may carry extra leading axes (e.g. a prompt axis under ``jax.vmap``).
    """

    mu: jax.Array
    sigma_raw: jax.Array


def _check_sigma_param(sigma_param: str) -> None:
    if sigma_param not in SIGMA_PARAMS:
        raise ValueError(f"unknown sigma_param {sigma_param!r}; valid: {', '.join(SIGMA_PARAMS)}")


def sigma_to_raw(sigma: jax.Array | float, *, sigma_param: str) -> jax.Array:
    """Inverse of :func:`sigma_fn`: the raw parameter that gives standard deviation ``sigma`` (> 0)."""
    _check_sigma_param(sigma_param)
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma_param == "log":
        return jnp.log(sigma)
    if sigma_param == "softplus":
        # softplus^-1(y) = log(expm1(y)) = y + log(-expm1(-y)), the latter stable for large y.
        return sigma + jnp.log(-jnp.expm1(-sigma))
    return sigma


def sigma_fn(sigma_raw: jax.Array, *, sigma_param: str, sigma_min: float = 0.0) -> jax.Array:
    """Standard deviation ``sigma: [C, h, w]`` from the raw parameter (always positive).

    For ``"clamp"`` the value is ``max(sigma_raw, sigma_min)``: the optimiser step already projects it
    (:func:`project_params`), the ``max`` only guards a caller who skipped that.
    """
    _check_sigma_param(sigma_param)
    if sigma_param == "log":
        return jnp.exp(sigma_raw)
    if sigma_param == "softplus":
        return jax.nn.softplus(sigma_raw)
    return jnp.maximum(sigma_raw, sigma_min)


def init_policy(
    latent_shape: tuple[int, ...], *, sigma_param: str, mu: float = 0.0, sigma: float = 1.0
) -> PolicyParams:
    """The prior N(mu, sigma^2 I) over ``latent_shape = (C, h, w)``; defaults give N(0, I)."""
    if sigma <= 0:
        raise ValueError(f"initial sigma must be > 0, got {sigma}")
    shape = tuple(int(d) for d in latent_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"latent_shape must be positive dimensions like (C, h, w); got {latent_shape}")
    raw = sigma_to_raw(sigma, sigma_param=sigma_param)
    return PolicyParams(mu=jnp.full(shape, mu, jnp.float32), sigma_raw=jnp.full(shape, raw, jnp.float32))


def block_average(a: jax.Array, grid: int) -> jax.Array:
    """``a [..., h, w]`` averaged over each of the ``grid x grid`` blocks of its last two axes, broadcast back.

    The orthogonal projection onto functions that are constant on ``(h/grid) x (w/grid)`` blocks: the gradient of
    a mean ``mu = upsample_nearest(m [..., grid, grid])`` with respect to ``m`` is this projection of the gradient
    with respect to ``mu``, times the block size. ``grid`` must divide ``h`` and ``w`` (:func:`check_mu_grid`).
    """
    h, w = a.shape[-2:]
    blocks = a.reshape(*a.shape[:-2], grid, h // grid, grid, w // grid)
    mean = jnp.mean(blocks, axis=(-3, -1), keepdims=True)
    return jnp.broadcast_to(mean, blocks.shape).reshape(a.shape)


def check_mu_grid(latent_shape: tuple[int, ...], grid: int) -> None:
    """Raises ``ValueError`` unless ``grid`` is 0 (per element) or divides the latent's height and width."""
    h, w = latent_shape[-2:]
    if grid and (h % grid or w % grid):
        raise ValueError(f"mu_grid={grid} must divide the latent's height and width {h}x{w} (or be 0: per element)")


def project_params(params: PolicyParams, *, sigma_param: str, sigma_min: float) -> PolicyParams:
    """Projection applied after every optimiser step: ``sigma_raw >= sigma_min`` for ``"clamp"``.

    The public PyTorch code clamps sigma to >= 1e-4 after each step; the other parameterisations are
    positive by construction and are returned unchanged.
    """
    _check_sigma_param(sigma_param)
    if sigma_param != "clamp":
        return params
    return params.replace(sigma_raw=jnp.maximum(params.sigma_raw, sigma_min))


def rng_sample_fn(
    rng: jax.Array, params: PolicyParams, n: int, *, sigma_param: str, sigma_min: float = 0.0
) -> jax.Array:
    """Draws ``n`` initial latents ``x: [n, C, h, w] ~ pi_theta`` (Eq. 6) by reparameterisation.

    ``x = mu + sigma * z`` with ``z ~ N(0, I)`` drawn from ``rng``; the result is a plain sample (the
    trainer never differentiates through it: the environment is a black box).
    """
    sigma = sigma_fn(params.sigma_raw, sigma_param=sigma_param, sigma_min=sigma_min)
    z = jax.random.normal(rng, (n, *params.mu.shape), params.mu.dtype)
    return params.mu[None] + sigma[None] * z


def gaussian_log_prob(x: jax.Array, mu: jax.Array, sigma: jax.Array, *, reduce: str = "sum") -> jax.Array:
    """``log N(x; mu, sigma^2)`` for a batch: ``x: [N, C, h, w]``, ``mu, sigma: [C, h, w]`` -> ``[N]``.

    Per element ``-(x - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2``, then summed over the C, h, w
    elements (``"sum"``: the exact joint log-density of Eq. 6) or averaged (``"mean"``: the public code's
    choice, which keeps ratios of Eq. 13 near 1 for 16k-element latents).
    """
    if reduce not in LOGPROB_REDUCES:
        raise ValueError(f"unknown logprob_reduce {reduce!r}; valid: {', '.join(LOGPROB_REDUCES)}")
    z = (x - mu[None]) / sigma[None]
    per_elem = -0.5 * jnp.square(z) - jnp.log(sigma)[None] - 0.5 * _LOG_2PI
    axes = tuple(range(1, x.ndim))
    return jnp.sum(per_elem, axis=axes) if reduce == "sum" else jnp.mean(per_elem, axis=axes)


def log_prob_fn(
    params: PolicyParams, x: jax.Array, *, sigma_param: str, reduce: str = "sum", sigma_min: float = 0.0
) -> jax.Array:
    """``log pi_theta(x)`` (Eq. 6): ``x: [N, C, h, w]`` -> ``[N]``, differentiable in ``params``."""
    sigma = sigma_fn(params.sigma_raw, sigma_param=sigma_param, sigma_min=sigma_min)
    return gaussian_log_prob(x, params.mu, sigma, reduce=reduce)


def prior_log_prob(x: jax.Array, *, reduce: str = "sum") -> jax.Array:
    """``log N(x; 0, I)``: ``x: [N, C, h, w]`` -> ``[N]`` — the public code's fixed RCA reference."""
    return gaussian_log_prob(x, jnp.zeros(x.shape[1:], x.dtype), jnp.ones(x.shape[1:], x.dtype), reduce=reduce)
