"""DDIM math shared by every environment (paper Eq. 3; Song et al. 2020, Eq. 12).

With ``a_t = alphas_cumprod[t]``::

    x0_hat    = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)                 (epsilon prediction)
    sigma_t   = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    x_{t-1}   = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - sigma_t^2) * eps + sigma_t * z,   z ~ N(0, I)

with the timesteps, ``a_prev`` for the last step and the prediction types of diffusers' ``DDIMScheduler``
(the PyTorch pipelines are the parity oracles). diffusers' Flax DDIM step never adds the ``sigma_t * z`` term;
the samplers draw ``z`` from ``fold_in(rng, step)`` so ``eta > 0`` is reproducible. Element-wise, so the
latents may be ``[B, C, h, w]`` (images) or ``[B, C, F, h, w]`` (video).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class DdimSchedule:
    """Per-step constants of a DDIM run, in sampling order (``S`` steps).

    timesteps: ``[S]`` int32 UNet timesteps (descending); alpha: ``[S]`` ``a_t``; alpha_prev: ``[S]`` ``a_{t-1}``.
    """

    timesteps: np.ndarray
    alpha: np.ndarray
    alpha_prev: np.ndarray
    prediction_type: str
    clip_sample: float | None  # clip x0_hat to [-v, v] when set


def _betas(cfg: dict[str, Any]) -> np.ndarray:
    n = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    kind = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is not None:
        return np.asarray(cfg["trained_betas"], dtype=np.float32)
    if kind == "linear":
        return np.linspace(b0, b1, n, dtype=np.float32)
    if kind == "scaled_linear":
        return np.linspace(b0**0.5, b1**0.5, n, dtype=np.float32) ** 2
    if kind == "squaredcos_cap_v2":
        f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        i = np.arange(n, dtype=np.float64)
        return np.minimum(1 - f((i + 1) / n) / f(i / n), 0.999).astype(np.float32)
    raise ValueError(f"unsupported beta_schedule {kind!r} (linear, scaled_linear, squaredcos_cap_v2)")


def ddim_schedule(scheduler_config: dict[str, Any], steps: int) -> DdimSchedule:
    """DDIM constants for ``steps`` steps, exactly as diffusers' ``DDIMScheduler.set_timesteps`` + ``step``."""
    cfg = scheduler_config
    if cfg.get("thresholding") or cfg.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler options thresholding / rescale_betas_zero_snr are not supported")
    n = int(cfg.get("num_train_timesteps", 1000))
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in [1, {n}]; got {steps}")
    alphas_cumprod = np.cumprod(1.0 - _betas(cfg), dtype=np.float32)
    final = np.float32(1.0) if cfg.get("set_alpha_to_one", True) else alphas_cumprod[0]
    offset = int(cfg.get("steps_offset", 0))
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing == "leading":
        ts = (np.arange(steps) * (n // steps)).round()[::-1].astype(np.int64) + offset
    elif spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unsupported timestep_spacing {spacing!r}")
    prev = ts - n // steps
    alpha = alphas_cumprod[ts]
    alpha_prev = np.where(prev >= 0, alphas_cumprod[np.clip(prev, 0, None)], final).astype(np.float32)
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"unsupported prediction_type {pred!r}")
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", False) else None
    return DdimSchedule(ts.astype(np.int32), alpha, alpha_prev, pred, clip)


def predict_x0_eps(
    x: jax.Array, model_out: jax.Array, alpha: jax.Array, prediction_type: str = "epsilon"
) -> tuple[jax.Array, jax.Array]:
    """``(x0_hat, eps_hat)`` of ``x_t`` (``[B, C, ...]``) from the model output (Eq. 3's x0 prediction)."""
    beta = 1.0 - alpha
    if prediction_type == "epsilon":
        return (x - jnp.sqrt(beta) * model_out) / jnp.sqrt(alpha), model_out
    if prediction_type == "v_prediction":
        return jnp.sqrt(alpha) * x - jnp.sqrt(beta) * model_out, jnp.sqrt(alpha) * model_out + jnp.sqrt(beta) * x
    x0 = model_out  # "sample"
    return x0, (x - jnp.sqrt(alpha) * x0) / jnp.sqrt(beta)


def ddim_step(
    x: jax.Array,
    model_out: jax.Array,
    alpha: jax.Array,
    alpha_prev: jax.Array,
    noise: jax.Array,
    *,
    eta: float,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
) -> jax.Array:
    """One DDIM update ``x_t -> x_{t-1}`` (Eq. 3). Arrays ``[B, C, ...]`` (any rank) except the scalar alphas."""
    beta = 1.0 - alpha
    x0, eps = predict_x0_eps(x, model_out, alpha, prediction_type)
    if clip_sample is not None:
        x0 = jnp.clip(x0, -clip_sample, clip_sample)
    var = (1.0 - alpha_prev) / beta * (1.0 - alpha / alpha_prev)
    std = eta * jnp.sqrt(var)
    x_prev = jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - alpha_prev - std**2, 0.0)) * eps
    if eta > 0:
        x_prev = x_prev + std * noise
    return x_prev
