"""Bounded replay buffer of recent samples for the Ratio Clipping Algorithm (paper section 4.4).

RCA reuses historical samples by importance sampling (Eq. 11-12). The buffer keeps the last
``size`` samples ``x`` with their reward, the advantage computed when they were drawn, and ``logp_ref``,
the log-probability under the reference policy *at the time the sample was drawn*:

* ``reference="previous"`` (paper): ``log pi_{theta_k}(x)`` with ``theta_k`` the policy that produced
  ``x`` (PPO's "old policy");
* ``reference="initial"`` (public code): ``log N(x; 0, I)``.

Fixed-size arrays (a ring buffer with a ``valid`` mask) keep the update's shapes static, so one compiled
update serves every iteration and every leaf can take a leading prompt axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ReplayBuffer:
    """Ring buffer of ``B`` samples.

    x: [B, C, h, w] latents; reward: [B]; advantage: [B] (``r - V`` when drawn, Eq. 10);
    logp_ref: [B] reference log-prob (see module doc); valid: [B] bool (False = empty slot or a skipped
    non-finite reward); next_index: [] int32, the slot the next sample is written to.
    """

    x: jax.Array
    reward: jax.Array
    advantage: jax.Array
    logp_ref: jax.Array
    valid: jax.Array
    next_index: jax.Array


def init_replay(size: int, latent_shape: tuple[int, ...]) -> ReplayBuffer:
    """An empty buffer of ``size`` slots for latents ``[C, h, w]``."""
    if size < 1:
        raise ValueError(f"replay size must be >= 1; got {size}")
    return ReplayBuffer(
        x=jnp.zeros((size, *latent_shape), jnp.float32),
        reward=jnp.zeros((size,), jnp.float32),
        advantage=jnp.zeros((size,), jnp.float32),
        logp_ref=jnp.zeros((size,), jnp.float32),
        valid=jnp.zeros((size,), bool),
        next_index=jnp.zeros((), jnp.int32),
    )


def add_to_replay(
    buffer: ReplayBuffer,
    x: jax.Array,
    reward: jax.Array,
    advantage: jax.Array,
    logp_ref: jax.Array,
    valid: jax.Array,
) -> tuple[ReplayBuffer, jax.Array]:
    """Writes ``N`` new samples (``x: [N, C, h, w]``, the rest ``[N]``) over the oldest slots.

    Returns the new buffer and ``slots: [N]``, the indices written (``N <= B``, checked by the config).
    """
    size = buffer.reward.shape[0]
    n = x.shape[0]
    slots = (buffer.next_index + jnp.arange(n, dtype=jnp.int32)) % size
    new = buffer.replace(
        x=buffer.x.at[slots].set(x.astype(buffer.x.dtype)),
        reward=buffer.reward.at[slots].set(reward.astype(jnp.float32)),
        advantage=buffer.advantage.at[slots].set(advantage.astype(jnp.float32)),
        logp_ref=buffer.logp_ref.at[slots].set(logp_ref.astype(jnp.float32)),
        valid=buffer.valid.at[slots].set(valid),
        next_index=(buffer.next_index + n) % size,
    )
    return new, slots
