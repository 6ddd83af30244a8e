"""The FIND environment: DDIM sampling of a frozen Flax diffusion model in one ``lax.scan`` under ``jit``.

For a one-step MDP (paper §4.2, Eq. 5-6) the whole T-step denoising process is the environment: the action
is the initial latent ``x_T`` and the outcome is the decoded image. No gradient ever flows through it
(``stop_gradient`` on the input; FIND differentiates only the policy's log-prob).

DDIM (paper Eq. 3; Song et al. 2020, Eq. 12), with ``a_t = alphas_cumprod[t]``::

    x0_hat    = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)                 (epsilon prediction)
    sigma_t   = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    x_{t-1}   = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - sigma_t^2) * eps + sigma_t * z,   z ~ N(0, I)

with the timesteps, ``a_prev`` for the last step and the prediction types of diffusers' ``DDIMScheduler``
(the PyTorch pipeline is the parity oracle, tests/test_parity.py). diffusers' Flax DDIM step never adds the
``sigma_t * z`` term; here ``z`` comes from ``fold_in(rng, step)`` so ``eta > 0`` is reproducible.

Classifier-free guidance is one batched UNet call on ``[2B]`` inputs: ``eps = u + g * (c - u)``.

Several devices (GPUs, or CPU cores exposed as host devices with :func:`configure_cpu_devices`): given a
:func:`batch_mesh`, the UNet's ``[2B]`` batch is split over the devices inside the scan (data parallel; at
``B = 1`` the unconditional and conditional halves run on different devices) and the params are replicated
once per environment. Results equal the one-device sampler to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from find_jax.fast_norm import fast_group_norm
from find_jax.models import DiffusionModel

log = logging.getLogger(__name__)


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
    """One DDIM update ``x_t -> x_{t-1}`` (Eq. 3). All arrays ``[B, C, h, w]`` except the scalar alphas."""
    beta = 1.0 - alpha
    if prediction_type == "epsilon":
        x0 = (x - jnp.sqrt(beta) * model_out) / jnp.sqrt(alpha)
        eps = model_out
    elif prediction_type == "v_prediction":
        x0 = jnp.sqrt(alpha) * x - jnp.sqrt(beta) * model_out
        eps = jnp.sqrt(alpha) * model_out + jnp.sqrt(beta) * x
    else:  # "sample"
        x0 = model_out
        eps = (x - jnp.sqrt(alpha) * x0) / jnp.sqrt(beta)
    if clip_sample is not None:
        x0 = jnp.clip(x0, -clip_sample, clip_sample)
    var = (1.0 - alpha_prev) / beta * (1.0 - alpha / alpha_prev)
    std = eta * jnp.sqrt(var)
    x_prev = jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - alpha_prev - std**2, 0.0)) * eps
    if eta > 0:
        x_prev = x_prev + std * noise
    return x_prev


# ----------------------------------------------------------------------------------------------------------
# Prompts.


def tokenize(model: DiffusionModel, prompts: Sequence[str], *, allow_empty: bool = False) -> np.ndarray:
    """Prompts -> ``[B, L]`` int32 token ids, padded to the tokenizer's max length (77 for SD).

    Over-long prompts are truncated with a warning (DESIGN §8); empty prompts are refused unless
    ``allow_empty`` (the unconditional / negative prompt may be empty).
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompt given")
    for p in prompts:
        if not isinstance(p, str):
            raise ValueError(f"prompts must be strings; got {type(p).__name__}")
        if not allow_empty and not p.strip():
            raise ValueError("the prompt is empty: give a text prompt (--prompt TEXT)")
    tok = model.tokenizer
    limit = model.max_tokens
    for p in prompts:
        n = len(tok(p, truncation=False).input_ids)
        if n > limit:
            warnings.warn(
                f"prompt has {n} tokens, more than the text encoder's {limit}; truncated: {p[:60]!r}...",
                stacklevel=2,
            )
    ids = tok(prompts, padding="max_length", max_length=limit, truncation=True, return_tensors="np").input_ids
    return ids.astype(np.int32)


def make_text_encoder(model: DiffusionModel, *, pooled: bool = False):
    """Returns ``encode_fn(text_params, ids [B, L])``, jitted once: the last hidden state ``[B, L, D]``, or with
    ``pooled`` the pooled (EOS-token) embedding ``[B, D]``."""
    module = model.text_encoder.module
    index = 1 if pooled else 0

    @jax.jit
    def encode_fn(text_params: Any, ids: jax.Array) -> jax.Array:
        pos = jnp.broadcast_to(jnp.arange(ids.shape[-1])[None], ids.shape)
        out = module.apply({"params": text_params}, ids, jnp.ones_like(ids), pos, deterministic=True)
        return out[index]

    return encode_fn


def encode_prompts(
    model: DiffusionModel, prompts: Sequence[str], *, allow_empty: bool = False, encode_fn=None
) -> jax.Array:
    """Prompts -> text embeddings ``[B, L, D]`` (the UNet's cross-attention context)."""
    encode_fn = encode_fn or make_text_encoder(model)
    return encode_fn(model.params["text_encoder"], jnp.asarray(tokenize(model, prompts, allow_empty=allow_empty)))


def pooled_embedding(model: DiffusionModel, prompt: str) -> np.ndarray:
    """``[D]`` pooled (EOS-token) text embedding of one prompt: the DRCM's text condition (official preset)."""
    return pooled_embeddings(model, [prompt])[0]


EMBED_CHUNK = 64  # prompts per text-encoder call in pooled_embeddings: one compiled shape for any prompt count


def pooled_embeddings(model: DiffusionModel, prompts: Sequence[str], *, chunk: int = EMBED_CHUNK) -> np.ndarray:
    """``[B, D]`` pooled text embeddings of ``B`` prompts: :func:`pooled_embedding` batched.

    All prompts are tokenized together and encoded ``chunk`` rows per jitted call (the last chunk padded by
    repeating its last row), so ``B`` prompts cost ``ceil(B / chunk)`` calls of one compiled program. Rows
    are independent: each equals :func:`pooled_embedding` of its prompt to float32 rounding.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    ids = tokenize(model, prompts)
    n = ids.shape[0]
    size = min(chunk, n)
    encode_fn = make_text_encoder(model, pooled=True)
    params = model.params["text_encoder"]
    rows = []
    for start in range(0, n, size):
        part = ids[start : start + size]
        k = part.shape[0]
        if k < size:
            part = np.concatenate([part, np.repeat(part[-1:], size - k, axis=0)])
        rows.append(np.asarray(encode_fn(params, jnp.asarray(part)), dtype=np.float32)[:k])
    return np.concatenate(rows)


# ----------------------------------------------------------------------------------------------------------
# The sampler.


def make_sampler(
    model: DiffusionModel,
    *,
    steps: int = 50,
    guidance: float = 7.5,
    eta: float = 0.0,
    mesh: Mesh | None = None,
    fast_norm: bool = True,
):
    """Builds the jitted sampler ``sample_fn(params, latents, cond, uncond, rng) -> images``.

    Args of ``sample_fn``:
      params: ``model.params`` (passed, never closed over, so one compiled program serves any weights).
      latents: ``[B, C, h, w]`` initial noise ``x_T``.
      cond: ``[B, L, D]`` prompt embeddings; uncond: ``[B, L, D]`` unconditional / negative embeddings.
      rng: PRNG key for the eta noise (unused when ``eta == 0``).
    Returns images ``[B, H, W, 3]`` float32 in ``[0, 1]``. ``steps``, ``guidance`` and ``eta`` are baked in
    (one compile per setting and shape); changing prompts or latents never recompiles.

    ``mesh``: a 1-D :func:`batch_mesh`; the UNet batch (``[2B]`` with CFG, else ``[B]``) is sharded over it
    when its size divides that batch (else the call runs replicated, with a warning at compile time). Pass
    params replicated over the mesh (as :class:`Environment` does) so they are not copied every call.

    ``fast_norm``: the models' GroupNorms run :mod:`find_jax.fast_norm`'s lowering (same formula, faster on
    CPU); False runs Flax's own.
    """
    if guidance < 0 or not np.isfinite(guidance):
        raise ValueError(f"guidance must be >= 0; got {guidance}")
    if eta < 0 or not np.isfinite(eta):
        raise ValueError(f"eta must be >= 0; got {eta}")
    sched = ddim_schedule(model.scheduler_config, steps)
    unet, decoder, dtype = model.unet, model.decoder, model.dtype
    do_cfg = guidance > 1.0
    ts = jnp.asarray(sched.timesteps)
    al = jnp.asarray(sched.alpha)
    alp = jnp.asarray(sched.alpha_prev)

    def sample_fn(params, latents, cond, uncond, rng):
        with fast_group_norm(fast_norm):  # at trace time: the jitted program holds the rewritten GroupNorms
            return _sample(params, latents, cond, uncond, rng)

    def _sample(params, latents, cond, uncond, rng):
        x0 = jax.lax.stop_gradient(latents).astype(jnp.float32)
        b = x0.shape[0]
        # Row layout of the UNet batch. One device: [uncond rows; cond rows]. On a mesh that divides B, each
        # device holds whole CFG pairs (rows interleaved u0, c0, u1, c1, ...) and the loop needs no
        # communication; when only 2B divides (B = 1), the two halves go to different devices.
        rows = _row_sharding(mesh, b)
        unet_rows = _row_sharding(mesh, 2 * b if do_cfg else b)
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

        context = _constrain(pair(uncond, cond).astype(dtype), unet_rows)

        def body(x, inputs):
            i, t, a, a_prev = inputs
            x_in = _constrain(pair(x, x), unet_rows)
            t_in = jnp.full((x_in.shape[0],), t, dtype=jnp.int32)
            out = unet.apply({"params": params["unet"]}, x_in.astype(dtype), t_in, context).sample
            out = _constrain(out, unet_rows).astype(jnp.float32)
            if do_cfg:
                u, c = unpair(out)
                out = u + guidance * (c - u)
            noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, jnp.float32) if eta > 0 else x
            x = ddim_step(
                x,
                out,
                a,
                a_prev,
                noise,
                eta=eta,
                prediction_type=sched.prediction_type,
                clip_sample=sched.clip_sample,
            )
            return _constrain(x, rows), None

        xs = (jnp.arange(len(sched.timesteps)), ts, al, alp)
        x, _ = jax.lax.scan(body, _constrain(x0, rows), xs)
        return decoder.decode(params["decoder"], x.astype(dtype))

    return jax.jit(sample_fn)


# ----------------------------------------------------------------------------------------------------------
# Devices.

BATCH_AXIS = "batch"
CPU_DEVICES_ENV = "FIND_JAX_CPU_DEVICES"


def configure_cpu_devices(n: int | str | None = None) -> int | None:
    """Exposes ``n`` CPU cores as ``n`` JAX host devices, so the sampler can split its batch over them.

    ``n``: a count >= 1, or None for ``$FIND_JAX_CPU_DEVICES`` (unset: JAX's default is left alone and None
    is returned). Must run before JAX's first operation (the CLI calls it at start-up); afterwards it only
    checks, and a count other than the running one raises ``ValueError``. Only the CPU backend is affected
    (GPUs are separate devices already). Returns the count.

    Why: on a small CPU XLA runs the tiny UNet's kernels on one core; two host devices put the two halves
    of the CFG batch on two cores (README, Benchmarks).
    """
    raw = os.environ.get(CPU_DEVICES_ENV) if n is None else n
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    source = f"${CPU_DEVICES_ENV}" if n is None else "--cpu-devices"
    try:
        count = int(raw)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ValueError(f"{source} must be a whole number >= 1; got {raw!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has started: only a matching count is fine
        have = len(jax.devices("cpu"))
        if have != count:
            raise ValueError(
                f"{source} asks for {count} CPU devices but JAX already runs with {have}; set it before the "
                "first JAX operation"
            ) from None
    return count


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """A 1-D mesh (axis ``"batch"``) over ``devices`` (default: all local devices); None for one device."""
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) < 2:
        return None
    return Mesh(np.array(devices), (BATCH_AXIS,))


def _row_sharding(mesh: Mesh | None, batch: int) -> NamedSharding | None:
    """Axis 0 split over ``mesh``; None when there is no mesh or ``batch`` is not a multiple of its size."""
    if mesh is None or batch % mesh.size:
        return None
    return NamedSharding(mesh, PS(BATCH_AXIS))


def _constrain(x: jax.Array, sharding: NamedSharding | None) -> jax.Array:
    """``x`` laid out as ``sharding`` inside a jitted function (unchanged for None)."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


@dataclasses.dataclass
class Environment:
    """FIND's environment for a fixed list of prompts: ``env(latents [P*N, C, h, w], rng) -> images``.

    Rows are prompt-major: rows ``p*N .. (p+1)*N - 1`` are prompt ``p``. Prompt embeddings are computed
    once; the sampler is compiled once per batch shape.
    """

    model: DiffusionModel
    prompts: list[str]
    cond: jax.Array  # [P, L, D]
    uncond: jax.Array  # [P, L, D]
    sample_fn: Any
    height: int
    width: int
    mesh: Mesh | None = None  # the sampler's batch mesh; params are replicated over it once, here
    params: Any = None  # default: model.params (replicated over ``mesh`` when given)

    def __post_init__(self) -> None:
        if self.params is None:
            self.params = self.replicated_params(self.model, self.mesh)

    @staticmethod
    def replicated_params(model: DiffusionModel, mesh: Mesh | None) -> Any:
        """``model.params``, copied once to every device of ``mesh`` (as loaded when ``mesh`` is None)."""
        return model.params if mesh is None else jax.device_put(model.params, NamedSharding(mesh, PS()))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.model.latent_shape(self.height, self.width)

    def __call__(self, latents: jax.Array, rng: jax.Array) -> jax.Array:
        latents = jnp.asarray(latents)
        p = len(self.prompts)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must be [B, {', '.join(map(str, self.latent_shape))}]; got {latents.shape}")
        if latents.shape[0] % p:
            raise ValueError(f"batch {latents.shape[0]} is not a multiple of the {p} prompts")
        n = latents.shape[0] // p
        cond = jnp.repeat(self.cond, n, axis=0)
        uncond = jnp.repeat(self.uncond, n, axis=0)
        if self.mesh is not None:  # inputs committed to one device (e.g. restored from a checkpoint) join the mesh
            latents = jax.device_put(latents, _row_sharding(self.mesh, latents.shape[0]) or self._replicated)
            rng = jax.device_put(rng, self._replicated)
        return self.sample_fn(self.params, latents, cond, uncond, rng)

    @property
    def _replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PS())


def make_environment(
    model: DiffusionModel,
    prompts: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] = "",
    steps: int = 50,
    guidance: float = 7.5,
    eta: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    mesh: Mesh | None | str = "auto",
    fast_norm: bool = True,
) -> Environment:
    """The environment for ``prompts`` (one string or a list): embeddings + a jitted sampler.

    ``mesh``: where the sampler splits its batch; ``"auto"`` is :func:`batch_mesh` over the local devices
    (None, i.e. one device, unless several are present). ``fast_norm``: as in :func:`make_sampler`.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    negs = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negs) != len(prompts):
        raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts")
    dh, dw = model.default_size
    height, width = height or dh, width or dw
    model.latent_shape(height, width)  # validates divisibility
    encode_fn = make_text_encoder(model)
    cond = encode_prompts(model, prompts, encode_fn=encode_fn)
    uncond = encode_prompts(model, negs, allow_empty=True, encode_fn=encode_fn)
    mesh = batch_mesh() if isinstance(mesh, str) and mesh == "auto" else mesh
    if mesh is not None:
        log.info("sampler batch split over %d devices (%s)", mesh.size, mesh.devices.flat[0].platform)
    sample_fn = make_sampler(model, steps=steps, guidance=guidance, eta=eta, mesh=mesh, fast_norm=fast_norm)
    return Environment(model, prompts, cond, uncond, sample_fn, height, width, mesh)


# ----------------------------------------------------------------------------------------------------------
# Persistent compilation cache.

CACHE_ENV = "FIND_JAX_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$FIND_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/find-jax/xla`` (``~/.cache/find-jax/xla``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "find-jax" / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None, *, min_compile_secs: float = 0.5) -> Path | None:
    """Turns on JAX's persistent compilation cache so a second run of the same shapes skips compiling.

    ``path``: the directory (default :func:`default_cache_dir`); ``"off"`` disables it. Programs that compile
    faster than ``min_compile_secs`` are not stored. Returns the directory.
    """
    if path is not None and str(path) == "off":
        return None
    cache = Path(path).expanduser() if path else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache
