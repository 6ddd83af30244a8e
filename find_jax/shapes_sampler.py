"""A saved shapes model, loaded from its diffusers layout alone, and a plain DDIM sampler for it.

Used by the testbed measurements (:mod:`find_jax.shapes_quality`, ``scripts/measure_shapes.py``,
``scripts/probe_commit.py``). The sampler is self-contained (``find_jax.envs.ddim`` maths in one ``lax.scan``:
CFG as one batched UNet call, Eq. 3 per step) so that it depends only on the saved layout; with ``trace`` it also
returns every step's decoded x0 prediction.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from find_jax.envs.ddim import ddim_schedule, ddim_step, predict_x0_eps
from find_jax.envs.image.decoders import depth_to_space, to_unit_range
from find_jax.envs.image.shapes import tokenizer as shapes_tokenizer

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(__file__), "envs", "image", "shapes", "assets", "shapes_model")


@dataclasses.dataclass(frozen=True)
class LoadedShapesModel:
    """A saved shapes model: modules, params and sampler settings."""

    unet: Any  # FlaxUNet2DConditionModel
    text_encoder: Any  # FlaxCLIPTextModel
    tokenizer: Any  # CLIPTokenizer
    params: dict[str, Any]  # {"unet": ..., "text_encoder": ...}
    scheduler: dict[str, Any]  # scheduler_config.json
    latent_shape: tuple[int, int, int]  # (C, h, w) of x_T
    factor: int  # space-to-depth factor of the decoder
    defaults: dict[str, Any]  # find_defaults.json


def load_shapes_model(model_dir: str = DEFAULT_MODEL_DIR) -> LoadedShapesModel:
    """Reads the diffusers layout written by :func:`find_jax.envs.image.shapes.model.save_model`."""
    from diffusers import FlaxUNet2DConditionModel
    from transformers import CLIPTokenizer, FlaxCLIPTextModel

    from find_jax.envs.quiet import quiet_upstream_deprecations

    quiet_upstream_deprecations()

    def read(*p):
        with open(os.path.join(model_dir, *p), encoding="utf-8") as f:
            return json.load(f)

    unet, unet_params = FlaxUNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet"))
    text = FlaxCLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"), _do_init=False)
    text_encoder, text_params = text if isinstance(text, tuple) else (text, text.params)
    tok = CLIPTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
    dec = read("decoder", "config.json")
    c = unet.config.in_channels
    defaults_path = os.path.join(model_dir, "find_defaults.json")
    defaults = read("find_defaults.json") if os.path.exists(defaults_path) else {}
    return LoadedShapesModel(
        unet,
        text_encoder,
        tok,
        {"unet": unet_params, "text_encoder": text_params},
        read("scheduler", "scheduler_config.json"),
        (c, unet.config.sample_size, unet.config.sample_size),
        int(dec["factor"]),
        defaults,
    )


def make_sample_fn(model: LoadedShapesModel, *, steps: int, guidance: float, eta: float = 0.0, trace: bool = False):
    """Jitted ``sample_fn(params, x_T [B, C, h, w], ids [B, L], empty_ids [L], rng) -> images [B, 32, 32, 3]``;
    with ``trace``, ``(images, x0_images [S, B, 32, 32, 3])``: every step's x0 prediction, decoded (Eq. 3)."""
    sched = ddim_schedule(model.scheduler, steps)
    ts, al, alp = (jnp.asarray(a) for a in (sched.timesteps, sched.alpha, sched.alpha_prev))
    factor, n_img = model.factor, 3 * model.factor**2

    def decode(x):
        return to_unit_range(depth_to_space(x[:, :n_img], factor))

    @jax.jit
    def sample_fn(params, x_t, ids, empty_ids, rng):
        b = x_t.shape[0]
        all_ids = jnp.concatenate([jnp.broadcast_to(empty_ids, ids.shape), ids])
        ctx = model.text_encoder(all_ids, params=params["text_encoder"], train=False)[0]

        def body(x, k):
            t = jnp.full((2 * b,), ts[k], jnp.int32)
            out = model.unet.apply({"params": params["unet"]}, jnp.concatenate([x, x]), t, ctx).sample
            u, c = out[:b], out[b:]
            noise = jax.random.normal(jax.random.fold_in(rng, k), x.shape, x.dtype)
            guided = u + guidance * (c - u)
            x0_hat = predict_x0_eps(x, guided, al[k], sched.prediction_type)[0] if trace else None
            x = ddim_step(
                x,
                guided,
                al[k],
                alp[k],
                noise,
                eta=eta,
                prediction_type=sched.prediction_type,
                clip_sample=sched.clip_sample,
            )
            return x, None if x0_hat is None else decode(x0_hat)

        x0, traced = jax.lax.scan(body, x_t, jnp.arange(len(sched.timesteps)))
        return (decode(x0), traced) if trace else decode(x0)

    return sample_fn


class Sampler:
    """Samples a loaded model at fixed settings, ``chunk`` images per call (one compiled shape); with ``trace``
    a call also returns every step's decoded x0 prediction (``make_sample_fn``)."""

    def __init__(
        self,
        model: LoadedShapesModel,
        *,
        steps=None,
        guidance=None,
        eta: float = 0.0,
        chunk: int = 32,
        trace: bool = False,
    ):
        self.model = model
        self.steps = int(steps or model.defaults.get("steps", 20))
        self.guidance = float(guidance if guidance is not None else model.defaults.get("guidance", 2.0))
        self.eta = eta
        self.chunk = chunk
        self.trace = trace
        self.fn = make_sample_fn(model, steps=self.steps, guidance=self.guidance, eta=eta, trace=trace)
        self.empty = jnp.asarray(shapes_tokenizer.encode(model.tokenizer, [""])[0])

    def __call__(self, x_t: np.ndarray, prompt: str, rng: jax.Array | None = None):
        """``x_t [N, C, h, w]`` -> images ``[N, 32, 32, 3]`` in ``[0, 1]`` for one prompt (with ``trace``:
        ``(images, x0_images [steps, N, 32, 32, 3])``)."""
        rng = jax.random.PRNGKey(0) if rng is None else rng
        ids = shapes_tokenizer.encode(self.model.tokenizer, [prompt] * self.chunk)
        out, traced = [], []
        for s in range(0, x_t.shape[0], self.chunk):
            part = np.asarray(x_t[s : s + self.chunk], np.float32)
            k = part.shape[0]
            if k < self.chunk:
                part = np.concatenate([part, np.zeros((self.chunk - k, *part.shape[1:]), np.float32)])
            res = self.fn(
                self.model.params, jnp.asarray(part), jnp.asarray(ids), self.empty, jax.random.fold_in(rng, s)
            )
            imgs, x0s = res if self.trace else (res, None)
            out.append(np.asarray(imgs)[:k])
            if self.trace:
                traced.append(np.asarray(x0s)[:, :k])
        images = np.concatenate(out)
        return (images, np.concatenate(traced, axis=1)) if self.trace else images
