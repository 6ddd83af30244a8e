"""Training of the shapes-world model: a pure jitted DDPM step, Orbax checkpoints, automatic resume.

``train(config, workdir, out_dir)`` draws batch ``k`` from ``world.batch_rng(seed, k)`` and the step's
noise from ``fold_in(rng_train, k)``, so a run resumed from a checkpoint continues with the same numbers.
Every ``checkpoint_every`` steps (and at the end) it saves the full state with Orbax under
``workdir/checkpoints`` and exports the EMA weights in the diffusers layout to ``out_dir``
(:func:`find_jax.envs.image.shapes.model.save_model`), so a usable model exists even if the run is stopped early.
Metrics go to ``workdir/metrics.jsonl`` (flat keys: ``loss/mean``, ``grad/norm``, ``lr``, ...).

Objective (DDPM): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``x_0: [B, 12 + c, 16, 16]``
(:func:`find_jax.envs.image.shapes.model.image_latents`: the space-to-depth image in ``[-1, 1]`` followed by
``c = coord_channels`` coordinate planes); loss ``|f_theta(x_t, t, c) - target|^2`` with target
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (v-prediction, the default) or ``eps``.
Captions are dropped (replaced by the empty caption) with probability ``caption_dropout`` so that the
model supports classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from find_jax.envs.devices import BATCH_AXIS, batch_mesh
from find_jax.envs.image.shapes import model as shapes_model
from find_jax.envs.image.shapes import tokenizer as shapes_tokenizer
from find_jax.envs.image.shapes import world


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (saved as ``workdir/config.json``)."""

    steps: int = 3000  # total optimiser steps
    batch: int = 32  # images per step
    seed: int = 0  # seeds the data, the init and the noise
    learning_rate: float = 8e-4  # peak AdamW learning rate
    warmup_steps: int = 200  # linear warm-up, then cosine decay to lr_final_fraction * peak
    lr_final_fraction: float = 0.1  # learning rate at the last step, relative to the peak
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # global-norm gradient clipping
    ema_decay: float = 0.999  # EMA of the params (exported); warmed up as min(decay, (1+k)/(10+k))
    caption_dropout: float = 0.1  # probability of training on the empty caption (for CFG)
    # Timestep sampling: a share ``high_noise_fraction`` of each batch draws t uniformly from
    # [high_noise_from, T) instead of [0, T). Layout (where an object goes: "on the left", "above") is decided at
    # high noise, where x_t shows nothing of x_0 and only the caption can tell; uniform t spends 40% of the
    # batch at t >= 600 (measured: models trained that way never learned position words; README, Model quality).
    high_noise_fraction: float = 0.5
    high_noise_from: int = 600
    # A saved model directory (same architecture) whose weights start the run instead of a random init: a
    # warm start spends this run's CPU on improving a trained model (the shipped one took 32 CPU-minutes).
    # "" = random init. Only the weights are read; the optimiser and EMA start fresh.
    init_from: str = ""
    checkpoint_every: int = 250  # steps between Orbax checkpoints + exports
    log_every: int = 10  # steps between metrics.jsonl lines
    model: shapes_model.ShapesModelConfig = shapes_model.ShapesModelConfig()  # architecture
    # Object sizes and gap of the training images; the shipped model's are the default. Larger, better separated
    # objects were tried for label stability (issue 18; README, "Is it a testbed that can tell?").
    world: world.Geometry = world.SHIPPED_GEOMETRY


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs (the data and noise derive from ``step``)."""

    step: jax.Array  # [] int32, optimiser steps done
    params: Any  # {"unet": ..., "text_encoder": ...}
    ema_params: Any  # EMA of params (exported)
    opt_state: Any  # optax state
    wall_s: jax.Array  # [] float32, training wall time summed over resumes


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    d = dict(d)
    m = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("model").items()}
    geometry = dataclasses.replace(world.LEGACY_GEOMETRY, **d.pop("world", {}))  # older runs: fields they lack
    return TrainConfig(**d, model=shapes_model.ShapesModelConfig(**m), world=geometry)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clipped AdamW with linear warm-up and cosine decay."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.lr_final_fraction,
    )
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, weight_decay=config.weight_decay),
    ), schedule


def alphas_cumprod(cfg: shapes_model.ShapesModelConfig) -> jax.Array:
    """``abar_t: [T]`` of the linear beta schedule (same numbers as diffusers' schedulers)."""
    betas = jnp.linspace(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=jnp.float32)
    return jnp.cumprod(1.0 - betas)


def validate_config(config: TrainConfig) -> None:
    """Raises ``ValueError`` naming the first bad field (before anything is written)."""
    num_t = config.model.num_train_timesteps
    if config.steps < 1 or config.batch < 1:
        raise ValueError(f"steps and batch must be >= 1; got steps={config.steps}, batch={config.batch}")
    if not 0.0 <= config.high_noise_fraction <= 1.0 or not 0 <= config.high_noise_from < num_t:
        raise ValueError(
            f"high_noise_fraction must be in [0, 1] and high_noise_from in [0, {num_t}); got "
            f"{config.high_noise_fraction}, {config.high_noise_from}"
        )
    if config.model.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction'; got {config.model.prediction_type!r}")
    if config.model.coord_channels not in (0, 2):
        raise ValueError(f"coord_channels must be 0 or 2; got {config.model.coord_channels}")
    config.world.validate()
    m = config.model
    if m.factor not in shapes_model.FACTORS:
        raise ValueError(f"factor must be one of {shapes_model.FACTORS}; got {m.factor}")
    levels = len(m.block_out_channels)
    if len(m.down_block_types) != levels or len(m.up_block_types) != levels:
        raise ValueError(f"the UNet needs one down and one up block per entry of block_out_channels ({levels})")
    if m.latent_size % 2 ** (levels - 1):
        raise ValueError(
            f"a {m.latent_size}x{m.latent_size} latent (factor {m.factor}) cannot be halved {levels - 1} times "
            f"by {levels} UNet levels"
        )


def sample_timesteps(rng: jax.Array, b: int, num_t: int, high_fraction: float, high_from: int) -> jax.Array:
    """``[b]`` int32 training timesteps: uniform on ``[0, num_t)``, except a ``high_fraction`` share of the rows
    (the first ``round(high_fraction * b)``) uniform on ``[high_from, num_t)``."""
    n_high = int(round(high_fraction * b))
    t_all = jax.random.randint(rng, (b,), 0, num_t)
    t_high = high_from + jax.random.randint(jax.random.fold_in(rng, 1), (b,), 0, num_t - high_from)
    return jnp.where(jnp.arange(b) < n_high, t_high, t_all).astype(jnp.int32)


def make_train_step(model: shapes_model.ShapesModel, config: TrainConfig):
    """``train_step(state, images [B,32,32,3] in [0,1], ids [B,L], empty_ids [L], rng) -> (state, metrics)``.

    Pure and jitted once; the state is donated. ``rng`` is the run's training key; the step folds in the
    step number.
    """
    optimizer, schedule = make_optimizer(config)
    abar = alphas_cumprod(config.model)
    num_t = config.model.num_train_timesteps
    prediction_type = config.model.prediction_type
    validate_config(config)

    def loss_fn(params, x0, ids, t, noise):
        ctx = model.text_encoder(ids, params=params["text_encoder"], train=False)[0]
        a = abar[t][:, None, None, None]
        x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise
        pred = model.unet.apply({"params": params["unet"]}, x_t, t, ctx).sample
        if prediction_type == "v_prediction":
            target = jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0
        else:
            target = noise
        return jnp.mean((pred - target) ** 2)

    def train_step(state: TrainState, images, ids, empty_ids, rng):
        rng = jax.random.fold_in(rng, state.step)
        rng_t, rng_noise, rng_drop = jax.random.split(rng, 3)
        b = images.shape[0]
        x0 = shapes_model.image_latents(config.model, images)  # [B, 12 + c, 16, 16]
        drop = jax.random.bernoulli(rng_drop, config.caption_dropout, (b,))
        ids = jnp.where(drop[:, None], empty_ids[None, :], ids)
        t = sample_timesteps(rng_t, b, num_t, config.high_noise_fraction, config.high_noise_from)
        noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x0, ids, t, noise)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        k = state.step.astype(jnp.float32)
        decay = jnp.minimum(config.ema_decay, (1.0 + k) / (10.0 + k))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        metrics = {
            "loss/mean": loss,
            "grad/norm": optax.global_norm(grads),
            "param/norm": optax.global_norm(params),
            "lr": schedule(state.step),
        }
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=(0,))


def load_init_params(init_from: str, like: Any) -> dict[str, Any]:
    """``{"unet", "text_encoder"}`` weights of a saved model dir, checked against ``like`` (same tree and shapes)."""
    from flax.serialization import from_state_dict, msgpack_restore

    files = {"unet": "unet/diffusion_flax_model.msgpack", "text_encoder": "text_encoder/flax_model.msgpack"}
    out = {}
    for key, rel in files.items():
        with open(os.path.join(init_from, rel), "rb") as f:
            raw = msgpack_restore(f.read())
        restored = from_state_dict(like[key], raw)
        for a, b in zip(jax.tree.leaves(like[key]), jax.tree.leaves(restored), strict=True):
            if tuple(a.shape) != tuple(np.shape(b)):
                raise ValueError(
                    f"{init_from}: {key} weights do not fit this architecture ({np.shape(b)} vs {a.shape})"
                )
        out[key] = jax.tree.map(jnp.asarray, restored)
    return out


def init_state(model: shapes_model.ShapesModel, config: TrainConfig, rng_init: jax.Array) -> TrainState:
    params = shapes_model.init_params(model, rng_init)
    if config.init_from:
        params = load_init_params(config.init_from, params)
    optimizer, _ = make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
        wall_s=jnp.zeros((), jnp.float32),
    )


def _bias_record(geometry: world.Geometry) -> dict[str, Any]:
    return {
        "dominant_colour": world.DOMINANT_COLOUR,
        "dominant_prob": geometry.dominant_prob,
        "count_probs": {str(k): v for k, v in world.COUNT_PROBS.items()},
        "plain_prob": world.PLAIN_PROB,
        "same_kind_prob": world.SAME_KIND_PROB,
    }


def _check_config(workdir: str, config: TrainConfig) -> None:
    """Writes ``config.json``, or refuses to resume a run whose saved config differs (except ``steps``)."""
    path = os.path.join(workdir, "config.json")
    new = config_to_dict(config)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        old = config_to_dict(config_from_dict(old))  # fields added since that run read as their defaults
        old_cmp = json.loads(json.dumps({k: v for k, v in old.items() if k != "steps"}))
        new_cmp = json.loads(json.dumps({k: v for k, v in new.items() if k != "steps"}))
        if old_cmp != new_cmp:
            diff = sorted(k for k in set(old_cmp) | set(new_cmp) if old_cmp.get(k) != new_cmp.get(k))
            raise ValueError(
                f"{workdir} holds a run with a different config (fields {diff}); use a new --workdir "
                "or the same settings to resume"
            )
    with open(path, "w", encoding="utf-8") as f:
        json.dump(new, f, indent=2)


def train(
    config: TrainConfig,
    workdir: str,
    out_dir: str,
    *,
    log=print,
    note: str = "",
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the shapes model; returns the final ``training.json`` record.

    ``max_seconds``: stop after this much wall time in this call (checkpointed and exported at the step it
    reached; the record's ``steps`` says where), so a time-limited machine ends with a usable, resumable run.
    ``should_stop``: polled after every step; once true, the run stops the same way (a signal handler's flag:
    ``scripts/train_shapes.py`` stops on SIGINT / SIGTERM without losing the steps since the last checkpoint).

    ``note``: free text recorded in ``training.json`` (e.g. what the cores were shared with), with the host's
    CPU count and JAX devices. ``workdir`` holds ``config.json``, ``metrics.jsonl`` and ``checkpoints/``;
    re-running with the same ``workdir`` resumes from the latest checkpoint (a differing config is refused).
    ``out_dir`` receives the diffusers layout at every checkpoint and at the end.
    """
    import orbax.checkpoint as ocp

    validate_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _check_config(workdir, config)

    model = shapes_model.build_model(config.model, os.path.join(workdir, "tokenizer"))
    rng_init, rng_train = jax.random.split(jax.random.PRNGKey(config.seed))
    empty_ids = jnp.asarray(shapes_tokenizer.encode(model.tokenizer, [""])[0])

    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )
    abstract = jax.eval_shape(lambda: init_state(model, config, rng_init))
    latest = manager.latest_step()
    if latest is not None:
        state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
        log(f"resumed from step {int(state.step)} in {workdir}")
    else:
        state = init_state(model, config, rng_init)
    train_step = make_train_step(model, config)
    # Several local devices (GPUs, or CPU cores via $FIND_JAX_CPU_DEVICES): data parallel. The batch is split
    # over a 1-D mesh, the state replicated; XLA's SPMD partitioner adds the gradient all-reduce.
    mesh = batch_mesh()
    if mesh is not None and config.batch % mesh.size:
        log(f"batch {config.batch} is not a multiple of {mesh.size} devices: training on one device")
        mesh = None
    split = (lambda x: x) if mesh is None else (lambda x: jax.device_put(x, NamedSharding(mesh, PS(BATCH_AXIS))))
    if mesh is not None:
        state = jax.device_put(state, NamedSharding(mesh, PS()))
        log(f"data parallel over {mesh.size} devices")

    init_record = None
    if config.init_from:
        path = os.path.join(config.init_from, "training.json")
        prior = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}
        init_record = {"path": config.init_from, "steps": prior.get("steps"), "wall_time_s": prior.get("wall_time_s")}
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    last_loss = float("nan")
    window: list[dict[str, float]] = []
    t_seg = time.time()
    wall0 = float(state.wall_s)

    def record() -> dict[str, Any]:
        return {
            "steps": int(state.step),
            "final_loss": last_loss,
            "seed": config.seed,
            "batch": config.batch,
            "data_bias": _bias_record(config.world),
            "wall_time_s": wall0 + time.time() - t_seg,
            "ema_decay": config.ema_decay,
            "exported_params": "ema",
            "config": config_to_dict(config),
            "init_from": init_record,
            "host": {"cpu_count": os.cpu_count(), "devices": jax.device_count(), "platform": jax.default_backend()},
            "note": note,
        }

    def checkpoint_and_export() -> None:
        nonlocal state
        state = state.replace(wall_s=jnp.asarray(wall0 + time.time() - t_seg, jnp.float32))
        manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
        shapes_model.save_model(model, state.ema_params, out_dir, record())

    t_log = time.time()
    t_call = time.time()
    while int(state.step) < config.steps:
        step = int(state.step)
        images, captions = world.sample_batch(world.batch_rng(config.seed, step), config.batch, config.world)
        ids = shapes_tokenizer.encode(model.tokenizer, captions)
        state, metrics = train_step(state, split(images), split(ids), empty_ids, rng_train)
        window.append(metrics)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            m = {k: float(np.mean([float(w[k]) for w in window])) for k in window[0]}
            if not math.isfinite(m["loss/mean"]):
                raise FloatingPointError(f"loss is {m['loss/mean']} at step {done}; stopping (see {metrics_path})")
            last_loss = m["loss/mean"]
            now = time.time()
            m.update({"step": done, "time/step_s": (now - t_log) / len(window)})
            t_log = now
            window = []
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(m) + "\n")
            log(f"step {done}/{config.steps} loss {last_loss:.4f} ({m['time/step_s']:.2f} s/step)")
        out_of_time = max_seconds is not None and time.time() - t_call > max_seconds and done < config.steps
        stopped = should_stop is not None and should_stop() and done < config.steps
        if done % config.checkpoint_every == 0 or done == config.steps or out_of_time or stopped:
            checkpoint_and_export()
        if out_of_time or stopped:  # checked after the step: every call makes at least one
            why = f"time limit of {max_seconds:.0f} s reached" if out_of_time else "asked to stop"
            log(f"{why} at step {done}: checkpointed, stopping")
            break
    manager.close()
    rec = record()
    return rec
