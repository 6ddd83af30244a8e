"""The DDIM sampler of every environment: one ``lax.scan`` over timesteps under ``jit``, CFG as one batched call.

For a one-step MDP (paper §4.2, Eq. 5-6) the whole T-step denoising process is the environment: the action is
the initial latent ``x_T`` and the outcome is the decoded image or video. No gradient ever flows through it
(``stop_gradient`` on the input; FIND differentiates only the policy's log-prob). The step is
:func:`find_jax.envs.ddim.ddim_step` (Eq. 3); the environments differ only in the denoiser (a 2-D or 3-D UNet)
and the decoder, which they pass in.

Classifier-free guidance is one batched denoiser call on ``[2B]`` inputs: ``eps = u + g * (c - u)``.

Rows and prompts: ``latents [B, ...]`` hold ``P`` prompts' ``N = B / P`` draws prompt-major (rows
``p*N .. (p+1)*N - 1`` are prompt ``p``); ``cond`` / ``uncond`` are ``[P, L, D]`` and ``rngs [P, 2]``. Prompt
``p``'s eta noise at step ``i`` is ``normal(fold_in(rngs[p], i), [N, ...])``, so it does not depend on the other
prompts of the call.

Several devices (GPUs, or CPU cores exposed as host devices): given a ``"batch"`` mesh
(:func:`find_jax.envs.devices.batch_mesh`), the denoiser's ``[2B]`` batch is split over the devices inside the
scan (data parallel; at ``B = 1`` the unconditional and conditional halves run on different devices). Results
equal the one-device sampler to float32 rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from find_jax.envs.ddim import DdimSchedule, ddim_step
from find_jax.envs.devices import constrain, row_sharding

log = logging.getLogger(__name__)

# denoise_fn(params, x [2B or B, ...], t [2B or B] int32, context [2B or B, L, D]) -> model output like x
DenoiseFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
# decode_fn(params, x_0 [B, ...]) -> media [B, ...] in [0, 1]
DecodeFn = Callable[[Any, jax.Array], jax.Array]


def make_scan_sampler(
    denoise_fn: DenoiseFn,
    decode_fn: DecodeFn,
    sched: DdimSchedule,
    *,
    guidance: float,
    eta: float,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
):
    """``sample_fn(params, latents [B, ...], cond [P, L, D], uncond [P, L, D], rngs [P, 2]) -> media [B, ...]``
    (not jitted; the environments jit it). ``guidance``, ``eta`` and the schedule are baked in; prompts,
    latents, keys and params are arguments, so changing them never recompiles."""
    do_cfg = guidance > 1.0
    ts, al, alp = jnp.asarray(sched.timesteps), jnp.asarray(sched.alpha), jnp.asarray(sched.alpha_prev)

    def sample_fn(params, latents, cond, uncond, rngs):
        x0 = jax.lax.stop_gradient(latents).astype(jnp.float32)
        b, p = x0.shape[0], cond.shape[0]
        n = b // p
        # Row layout of the denoiser batch. One device: [uncond rows; cond rows]. On a mesh that divides B, each
        # device holds whole CFG pairs (rows interleaved u0, c0, u1, c1, ...) and the loop needs no
        # communication; when only 2B divides (B = 1), the two halves go to different devices.
        rows = row_sharding(mesh, b)
        unet_rows = row_sharding(mesh, 2 * b if do_cfg else b)
        if mesh is not None and unet_rows is None:
            log.warning("UNet batch %d is not a multiple of %d devices: sampling replicated", 2 * b, mesh.size)
        interleave = do_cfg and rows is not None

        def pair(u, c):
            if not do_cfg:
                return c
            if interleave:
                return jnp.stack([u, c], axis=1).reshape(2 * b, *u.shape[1:])
            return jnp.concatenate([u, c])

        def unpair(out):
            if interleave:
                out = out.reshape(b, 2, *out.shape[1:])
                return out[:, 0], out[:, 1]
            return jnp.split(out, 2)

        cond_rows, uncond_rows = jnp.repeat(cond, n, axis=0), jnp.repeat(uncond, n, axis=0)
        context = constrain(pair(uncond_rows, cond_rows).astype(dtype), unet_rows)

        def noise_at(i, shape):
            one = lambda key: jax.random.normal(jax.random.fold_in(key, i), (n, *shape[1:]), jnp.float32)
            return jax.vmap(one)(rngs).reshape(shape)

        def body(x, inputs):
            i, t, a, a_prev = inputs
            x_in = constrain(pair(x, x), unet_rows)
            t_in = jnp.full((x_in.shape[0],), t, dtype=jnp.int32)
            out = constrain(denoise_fn(params, x_in.astype(dtype), t_in, context), unet_rows).astype(jnp.float32)
            if do_cfg:
                u, c = unpair(out)
                out = u + guidance * (c - u)
            noise = noise_at(i, x.shape) if eta > 0 else x
            x = ddim_step(
                x, out, a, a_prev, noise, eta=eta, prediction_type=sched.prediction_type, clip_sample=sched.clip_sample
            )
            return constrain(x, rows), None

        xs = (jnp.arange(len(sched.timesteps)), ts, al, alp)
        x, _ = jax.lax.scan(body, constrain(x0, rows), xs)
        return decode_fn(params, x.astype(dtype))

    return sample_fn


__all__ = ["DecodeFn", "DenoiseFn", "make_scan_sampler"]
