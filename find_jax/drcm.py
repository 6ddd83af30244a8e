"""Dynamic Reward Calibration Module (paper section 4.3, Eq. 9-10).

A small MLP ``V_phi(mu, sigma[, e_prompt])`` predicts the expected reward ``E_{x ~ N(mu, sigma^2)}[r(x)]``
of the *current* distribution. It is trained online with the squared error on the rewards observed at
each iteration (Eq. 10) and gives the calibrated reward (advantage) ``A = r - V_phi(mu, sigma)`` that
replaces the raw reward in the policy gradient (Eq. 8 / 12).

Input features: ``concat(flatten(mu), flatten(sigma)[, prompt_embedding])`` — ``2*C*h*w`` values (32768
for SD1.5's 4x64x64 latent), plus the text embedding when ``text_conditioned`` (public code: the CLIP
ViT-L/14 text embedding). The policy's parameters enter as constants (``stop_gradient``): the DRCM loss
never moves mu or sigma.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class DrcmMLP(nn.Module):
    """``V_phi``: features ``[B, F]`` -> predicted reward ``[B]``.

    ``hidden`` ReLU layers (paper: "a simple 3-layer MLP"; public code 256-256-256) and a linear output.
    """

    hidden: Sequence[int] = (256, 256, 256)

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        h = features
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(1)(h)[..., 0]


def drcm_features(mu: jax.Array, sigma: jax.Array, prompt_embedding: jax.Array | None = None) -> jax.Array:
    """DRCM input ``[F]`` from ``mu, sigma: [C, h, w]`` and an optional ``prompt_embedding: [E]``.

    ``F = 2*C*h*w (+ E)``. Gradients are stopped: V_phi is a critic of the distribution, not a path for
    the policy's gradient.
    """
    parts = [jnp.ravel(mu), jnp.ravel(sigma)]
    if prompt_embedding is not None:
        parts.append(jnp.ravel(prompt_embedding).astype(mu.dtype))
    return jax.lax.stop_gradient(jnp.concatenate(parts))


def drcm_feature_dim(latent_shape: Sequence[int], embed_dim: int = 0) -> int:
    """Length ``F`` of :func:`drcm_features` for a latent ``[C, h, w]`` and an embedding of ``embed_dim``."""
    n = 1
    for d in latent_shape:
        n *= int(d)
    return 2 * n + int(embed_dim)


def init_drcm(rng: jax.Array, module: DrcmMLP, feature_dim: int) -> dict:
    """Random Flax params of ``module`` for features of length ``feature_dim``."""
    return jax.jit(module.init)(rng, jnp.zeros((1, feature_dim), jnp.float32))


def drcm_loss_fn(
    drcm_params: dict,
    module: DrcmMLP,
    features: jax.Array,
    rewards: jax.Array,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Eq. 10: ``L(phi) = 1/N sum_n (V_phi(mu, sigma) - r_n)^2`` over the N valid samples of an iteration.

    features: [F] of the distribution that drew the samples; rewards: [N]; mask: [N] bool (False for a
    skipped NaN/inf reward). Returns ``(loss, prediction)`` with ``prediction`` the scalar ``V_phi``.
    With no valid sample the loss is 0 (no gradient).
    """
    pred = module.apply(drcm_params, features[None])[0]
    err = jnp.square(pred - rewards)
    if mask is None:
        return jnp.mean(err), pred
    m = mask.astype(err.dtype)
    return jnp.sum(jnp.where(mask, err, 0.0)) / jnp.maximum(jnp.sum(m), 1.0), pred
