"""What the image and video environments share: text conditioning, the batched call and device placement.

:class:`SamplerEnvironment` implements :class:`~find_jax.envs.base.Environment` around a jitted
``sample_fn(params, latents [B, *latent_shape], cond [P, L, D], uncond [P, L, D], rngs [P, 2]) -> media [B, ...]``
(:func:`find_jax.envs.scan.make_scan_sampler`); a subclass only fixes ``latent_shape`` and builds ``sample_fn``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from find_jax.envs.base import SamplerSettings, check_group_latents
from find_jax.envs.devices import batch_mesh, replicate, row_sharding
from find_jax.envs.text import encode_prompts, make_text_encoder, pooled_embeddings

log = logging.getLogger(__name__)


class SamplerEnvironment:
    """A frozen text-conditioned model with fixed sampler settings (the subclasses: image, video).

    ``make_sample_fn(mesh) -> sample_fn`` builds the jitted sampler for the batch mesh; ``mesh="auto"`` is
    :func:`~find_jax.envs.devices.batch_mesh` over the local devices. The params are replicated over the mesh
    once, here. ``bind(prompts)`` encodes the prompts once and returns the group call.
    """

    kind = ""

    def __init__(
        self,
        model: Any,
        settings: SamplerSettings,
        latent_shape: tuple[int, ...],
        make_sample_fn: Callable[[Mesh | None], Any],
        *,
        mesh: Mesh | None | str = "auto",
    ):
        self.model, self.settings = model, settings
        self.latent_shape: tuple[int, ...] = tuple(latent_shape)
        self.mesh = batch_mesh() if isinstance(mesh, str) and mesh == "auto" else mesh
        if self.mesh is not None:
            log.info("sampler batch split over %d devices (%s)", self.mesh.size, self.mesh.devices.flat[0].platform)
        self.source, self.fingerprint = model.source, model.fingerprint
        self.sample_fn = make_sample_fn(self.mesh)
        self.encode_fn = make_text_encoder(model)
        self.params = model.params if self.mesh is None else replicate(model.params, self.mesh)

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """``(cond [P, L, D], uncond [P, L, D])``: the prompts' and the negative prompt's text embeddings."""
        cond = encode_prompts(self.model, prompts, encode_fn=self.encode_fn)
        negative = [self.settings.negative_prompt] * len(prompts)
        return cond, encode_prompts(self.model, negative, allow_empty=True, encode_fn=self.encode_fn)

    def bind(self, prompts: Sequence[str]):
        """``env_fn(latents [P, N, *latent_shape], rngs [P, 2]) -> media [P, N, ...]`` for ``P`` prompts."""
        cond, uncond = self.encode(list(prompts))

        def env_fn(latents: jax.Array, rngs: jax.Array) -> jax.Array:
            return self.sample_rows(latents, rngs, cond, uncond)

        return env_fn

    def sample_rows(self, latents: Any, rngs: Any, cond: jax.Array, uncond: jax.Array) -> jax.Array:
        """The batched call on already encoded prompts: ``[P, N, *latent_shape]`` -> ``[P, N, ...]``."""
        latents, rngs = jnp.asarray(latents), jnp.asarray(rngs)
        p = cond.shape[0]
        check_group_latents(latents, self.latent_shape, p)
        n = latents.shape[1]
        flat = latents.reshape(p * n, *self.latent_shape)
        if self.mesh is not None:  # inputs committed elsewhere (a prompt mesh, a checkpoint) join the sampler's mesh
            replicated = NamedSharding(self.mesh, PS())
            flat = jax.device_put(flat, row_sharding(self.mesh, p * n) or replicated)
            rngs, cond, uncond = jax.device_put((rngs, cond, uncond), replicated)
        media = self.sample_fn(self.params, flat, cond, uncond, rngs)
        return media.reshape(p, n, *media.shape[1:])

    def prompt_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """``[P, D]`` pooled text embeddings: the DRCM's text condition (``official`` preset)."""
        return pooled_embeddings(self.model, list(prompts))


__all__ = ["SamplerEnvironment"]
