"""What the FIND loop needs from an environment (paper §4.2: the frozen sampler is a one-step MDP).

An environment is a frozen text-conditioned diffusion model with fixed sampler settings. The loop sees only:

* ``kind``: ``"image"`` or ``"video"`` (what the media are; rewards declare which they take);
* ``latent_shape``: the shape of one initial latent ``x_T``: ``(C, h, w)`` for images, ``(C, F, h, w)`` for video;
* ``bind(prompts) -> env_fn``: the batched call for a group of ``P`` prompts,
  ``env_fn(latents [P, N, *latent_shape], rngs [P, 2]) -> media [P, N, ...]`` (images ``[H, W, 3]``, videos
  ``[F, H, W, 3]``, float32 in ``[0, 1]``); prompt ``p``'s eta noise comes from ``rngs[p]`` alone, so a prompt's
  media do not depend on the other prompts of its group;
* ``prompt_embeddings(prompts) -> [P, E]``: the text condition of a text-conditioned DRCM (``official`` preset);
* ``source`` / ``fingerprint``: where the frozen weights came from and a hash of them (recorded in run
  directories; the weights themselves are never checkpointed).

:class:`SamplerSettings` holds the sampler's settings and their defaults, the one place they are defined (the
CLI, the config and ``find-jax sample`` read them from here).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np

# env_fn(latents [P, N, *latent_shape], rngs [P, 2]) -> media [P, N, ...] in [0, 1]
BatchEnvFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How the frozen model samples (defaults: the paper's Stable Diffusion setting, §5.1)."""

    steps: int = 50  # DDIM steps
    guidance: float = 7.5  # classifier-free guidance scale (<= 1: no CFG)
    eta: float = 0.0  # DDIM eta: 0 deterministic, 1 DDPM-like
    negative_prompt: str = ""  # the unconditional prompt of CFG
    height: int | None = None  # pixels; None: the model's own size
    width: int | None = None
    num_frames: int | None = None  # video models only; None: the model's own (16 for ModelScope)

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a whole number >= 1; got {self.steps!r}")
        for name in ("guidance", "eta"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 8):
                raise ValueError(f"{name} must be None (the model's size) or a whole number >= 8; got {value!r}")
        if self.num_frames is not None and (not isinstance(self.num_frames, int) or self.num_frames < 1):
            raise ValueError(f"num_frames must be None (the model's) or a whole number >= 1; got {self.num_frames!r}")


SAMPLER_DEFAULTS = SamplerSettings()
SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerSettings))


def sampler_settings(source: Any, **overrides: Any) -> SamplerSettings:
    """The :class:`SamplerSettings` fields of ``source`` (a config or any object with those attributes; missing
    ones keep their defaults), with ``overrides`` (None values ignored) applied."""
    fields = {name: getattr(source, name) for name in SAMPLER_FIELDS if hasattr(source, name)}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return SamplerSettings(**fields)


class Environment(Protocol):
    """The protocol of the module doc (:class:`find_jax.envs.image.sampler.ImageEnvironment` and the video one)."""

    kind: str
    latent_shape: tuple[int, ...]
    source: str
    fingerprint: str

    def bind(self, prompts: Sequence[str]) -> BatchEnvFn: ...

    def prompt_embeddings(self, prompts: Sequence[str]) -> np.ndarray: ...


def bind_one(env: Environment, prompt: str) -> Callable[[Any, jax.Array], jax.Array]:
    """``fn(latents [B, *latent_shape], rng [2]) -> media [B, ...]``: ``env`` bound to one prompt, all ``B``
    draws one group with eta key ``rng`` (``find-jax sample`` batches, evaluation)."""
    env_fn = env.bind([prompt])

    def fn(latents: Any, rng: jax.Array) -> jax.Array:
        return env_fn(jax.numpy.asarray(latents)[None], jax.numpy.asarray(rng)[None])[0]

    return fn


def check_group_latents(latents: Any, latent_shape: tuple[int, ...], num_prompts: int) -> None:
    """Raises ``ValueError`` unless ``latents`` is ``[num_prompts, N, *latent_shape]`` with ``N >= 1``."""
    shape = tuple(latents.shape)
    want = f"[{num_prompts}, N, {', '.join(map(str, latent_shape))}]"
    if len(shape) != 2 + len(latent_shape) or shape[0] != num_prompts or shape[1] < 1:
        raise ValueError(f"latents must be {want}; got {list(shape)}")
    if shape[2:] != tuple(latent_shape):
        raise ValueError(f"latents must be {want}; got {list(shape)}")


__all__ = [
    "SAMPLER_DEFAULTS",
    "SAMPLER_FIELDS",
    "BatchEnvFn",
    "Environment",
    "SamplerSettings",
    "bind_one",
    "check_group_latents",
    "sampler_settings",
]
