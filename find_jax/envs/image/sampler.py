"""The image environment: Stable Diffusion (or the shipped shapes world) sampled with DDIM in one jitted scan.

:func:`make_sampler` wires the model's Flax ``FlaxUNet2DConditionModel`` and decoder (VAE, or the pixel
fold) into :func:`find_jax.envs.scan.make_scan_sampler` (Eq. 3, CFG as one batched call, keyed eta noise) and
jits it, with the models' GroupNorms lowered by :mod:`find_jax.envs.image.fast_norm`. :class:`ImageEnvironment`
is the :class:`~find_jax.envs.base.Environment` of the loop: latents ``[P, N, C, h, w]`` -> images
``[P, N, H, W, 3]`` in ``[0, 1]``; the params are replicated once over the sampler's batch mesh.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from find_jax.envs.base import SAMPLER_DEFAULTS, SamplerSettings, check_group_latents
from find_jax.envs.ddim import ddim_schedule
from find_jax.envs.devices import batch_mesh, replicate, row_sharding
from find_jax.envs.image.fast_norm import fast_group_norm
from find_jax.envs.image.model import DiffusionModel
from find_jax.envs.scan import make_scan_sampler
from find_jax.envs.text import encode_prompts, make_text_encoder, pooled_embeddings

log = logging.getLogger(__name__)


def make_sampler(
    model: DiffusionModel,
    *,
    steps: int = 50,
    guidance: float = 7.5,
    eta: float = 0.0,
    mesh: Mesh | None = None,
    fast_norm: bool = True,
):
    """Builds the jitted sampler ``sample_fn(params, latents, cond, uncond, rngs) -> images``.

    Args of ``sample_fn``:
      params: ``model.params`` (passed, never closed over, so one compiled program serves any weights).
      latents: ``[B, C, h, w]`` initial noise ``x_T``, ``P`` prompts' ``N = B / P`` rows each, prompt-major.
      cond: ``[P, L, D]`` prompt embeddings; uncond: ``[P, L, D]`` unconditional / negative embeddings.
      rngs: ``[P, 2]`` PRNG keys of the prompts' eta noise (unused when ``eta == 0``).
    Returns images ``[B, H, W, 3]`` float32 in ``[0, 1]``. ``steps``, ``guidance`` and ``eta`` are baked in
    (one compile per setting and shape); changing prompts or latents never recompiles.

    ``mesh``: a 1-D ``"batch"`` mesh (:func:`find_jax.envs.devices.batch_mesh`); the UNet batch is sharded
    over it when its size divides that batch. Pass params replicated over the mesh (as :class:`ImageEnvironment`
    does) so they are not copied every call. ``fast_norm``: the GroupNorms run :mod:`find_jax.envs.image.fast_norm`'s
    lowering (same formula, faster on CPU); False runs Flax's own.
    """
    settings = SamplerSettings(steps=steps, guidance=guidance, eta=eta)  # validates the numbers
    sched = ddim_schedule(model.scheduler_config, settings.steps)
    unet, decoder = model.unet, model.decoder

    def denoise_fn(params, x, t, context):
        return unet.apply({"params": params["unet"]}, x, t, context).sample

    def decode_fn(params, x):
        return decoder.decode(params["decoder"], x)

    scan_fn = make_scan_sampler(denoise_fn, decode_fn, sched, guidance=guidance, eta=eta, dtype=model.dtype, mesh=mesh)

    def sample_fn(params, latents, cond, uncond, rngs):
        with fast_group_norm(fast_norm):  # at trace time: the jitted program holds the rewritten GroupNorms
            return scan_fn(params, latents, cond, uncond, rngs)

    return jax.jit(sample_fn)


class ImageEnvironment:
    """The image :class:`~find_jax.envs.base.Environment` of ``model`` with ``settings``.

    ``bind(prompts)`` encodes the prompts once and returns ``env_fn(latents [P, N, C, h, w], rngs [P, 2]) ->
    images [P, N, H, W, 3]``; one compiled sampler serves every group of the same shape. ``mesh``: where the
    sampler splits its batch; ``"auto"`` is :func:`~find_jax.envs.devices.batch_mesh` over the local devices.
    """

    kind = "image"

    def __init__(
        self,
        model: DiffusionModel,
        settings: SamplerSettings = SAMPLER_DEFAULTS,
        *,
        mesh: Mesh | None | str = "auto",
        fast_norm: bool = True,
    ):
        if settings.num_frames is not None:
            raise ValueError(
                f"num_frames={settings.num_frames} is for video models; {model.source} is a text-to-image model"
            )
        self.model = model
        self.settings = settings
        dh, dw = model.default_size
        self.height, self.width = settings.height or dh, settings.width or dw
        self.latent_shape: tuple[int, ...] = model.latent_shape(self.height, self.width)  # validates the size
        self.mesh = batch_mesh() if isinstance(mesh, str) and mesh == "auto" else mesh
        if self.mesh is not None:
            log.info("sampler batch split over %d devices (%s)", self.mesh.size, self.mesh.devices.flat[0].platform)
        self.source, self.fingerprint = model.source, model.fingerprint
        self.sample_fn = make_sampler(
            model,
            steps=settings.steps,
            guidance=settings.guidance,
            eta=settings.eta,
            mesh=self.mesh,
            fast_norm=fast_norm,
        )
        self.encode_fn = make_text_encoder(model)
        self.params = model.params if self.mesh is None else replicate(model.params, self.mesh)

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """``(cond [P, L, D], uncond [P, L, D])``: the prompts' and the negative prompt's text embeddings."""
        cond = encode_prompts(self.model, prompts, encode_fn=self.encode_fn)
        negative = [self.settings.negative_prompt] * len(prompts)
        return cond, encode_prompts(self.model, negative, allow_empty=True, encode_fn=self.encode_fn)

    def bind(self, prompts: Sequence[str]):
        """``env_fn(latents [P, N, C, h, w], rngs [P, 2]) -> images [P, N, H, W, 3]`` for ``P`` prompts."""
        prompts = list(prompts)
        cond, uncond = self.encode(prompts)

        def env_fn(latents: jax.Array, rngs: jax.Array) -> jax.Array:
            return self.sample_rows(latents, rngs, cond, uncond)

        return env_fn

    def sample_rows(self, latents: Any, rngs: Any, cond: jax.Array, uncond: jax.Array) -> jax.Array:
        """The batched call on already encoded prompts: ``[P, N, C, h, w]`` -> ``[P, N, H, W, 3]``."""
        latents, rngs = jnp.asarray(latents), jnp.asarray(rngs)
        p = cond.shape[0]
        check_group_latents(latents, self.latent_shape, p)
        n = latents.shape[1]
        flat = latents.reshape(p * n, *self.latent_shape)
        if self.mesh is not None:  # inputs committed elsewhere (a prompt mesh, a checkpoint) join the sampler's mesh
            replicated = NamedSharding(self.mesh, PS())
            flat = jax.device_put(flat, row_sharding(self.mesh, p * n) or replicated)
            rngs, cond, uncond = jax.device_put((rngs, cond, uncond), replicated)
        images = self.sample_fn(self.params, flat, cond, uncond, rngs)
        return images.reshape(p, n, *images.shape[1:])

    def prompt_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """``[P, D]`` pooled text embeddings: the DRCM's text condition (``official`` preset)."""
        return pooled_embeddings(self.model, list(prompts))


__all__ = ["ImageEnvironment", "make_sampler"]
