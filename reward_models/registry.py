"""Reward registry: one contract, looked up by name.

Contract (DESIGN.md §5): a reward is built once by a factory (which loads any weights) and returns a
callable ``reward_fn(images, prompts) -> rewards`` with

* ``images``: ``[B, H, W, 3]`` float in ``[0, 1]`` (a ``jax.Array`` or numpy array); video rewards take
  ``[B, T, H, W, 3]`` and declare ``video=True`` when registered; an image reward given videos scores each
  as the mean over its frames (:func:`mean_over_frames`);
* ``prompts``: ``list[str]`` of length ``B``;
* ``rewards``: ``[B]`` float32 numpy array.

Factories register themselves with :func:`register`; :func:`make_reward` builds one by name and wraps it so
that every reward validates its inputs the same way (:func:`validate_inputs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

RewardFn = Callable[[Any, Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A registered reward: its factory and what it consumes."""

    name: str
    factory: Callable[..., RewardFn]  # factory(**options) -> reward_fn
    video: bool  # True: images are [B, T, H, W, 3]; False: [B, H, W, 3]
    description: str  # one line for `find-jax --help` and README
    weights: str  # where the weights come from ("none" for weight-free rewards)


_REGISTRY: dict[str, RewardSpec] = {}


def register(
    name: str, *, description: str, weights: str = "none", video: bool = False
) -> Callable[[Callable[..., RewardFn]], Callable[..., RewardFn]]:
    """Decorator registering ``factory(**options) -> reward_fn`` under ``name``."""

    def wrap(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is registered twice")
        _REGISTRY[name] = RewardSpec(name, factory, video, description, weights)
        return factory

    return wrap


def available() -> list[str]:
    """Sorted names of every registered reward."""
    _load_builtin()
    return sorted(_REGISTRY)


def spec(name: str) -> RewardSpec:
    """The :class:`RewardSpec` of ``name``; an unknown name lists the valid ones."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; available rewards: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_reward(name: str, **options: Any) -> RewardFn:
    """Builds the reward ``name`` (loading weights once) and returns a validating ``reward_fn``.

    An image reward also scores videos ``[B, T, H, W, 3]``: each video gets the mean of its frames' scores
    (:func:`mean_over_frames`; every frame is scored with the video's prompt), so ``pickscore`` or
    ``brightness`` works on a video run (Tab. 5's "PickScore" column).
    """
    s = spec(name)
    inner = s.factory(**options)

    def reward_fn(images: Any, prompts: Sequence[str]) -> np.ndarray:
        per_frame = not s.video and len(getattr(images, "shape", ())) == 5
        validate_inputs(images, prompts, video=s.video or per_frame)
        if per_frame:
            out = mean_over_frames(inner, images, list(prompts))
        else:
            out = np.asarray(inner(images, list(prompts)), dtype=np.float32)
        if out.shape != (len(prompts),):
            raise RuntimeError(f"reward {name!r} returned shape {out.shape}, expected ({len(prompts)},)")
        return out

    reward_fn.reward_name = name  # type: ignore[attr-defined]
    reward_fn.inner = inner  # type: ignore[attr-defined]
    reward_fn.video = s.video  # type: ignore[attr-defined]
    # check_prompts(prompts) raises ValueError for prompts the reward cannot score (checked before a run writes)
    reward_fn.check_prompts = getattr(inner, "check_prompts", _accept_any)  # type: ignore[attr-defined]
    return reward_fn


def _accept_any(prompts: Sequence[str]) -> None:
    """The default ``check_prompts``: every prompt can be scored."""


def mean_over_frames(
    image_fn: Callable[[Any, Sequence[str]], Any], videos: Any, prompts: Sequence[str], *, max_frames: int = 256
) -> np.ndarray:
    """An image reward applied to every frame, averaged per video.

    Args:
      image_fn: ``image_fn(images [N, H, W, 3], prompts) -> [N]``.
      videos: ``[B, T, H, W, 3]`` (``jax.Array``, numpy or torch); the frames are a reshape (no copy for a
        contiguous array), scored on the videos' device.
      prompts: ``B`` strings; each frame is scored with its video's prompt.
      max_frames: at most this many frames per call of ``image_fn`` (whole videos at a time, at least one),
        so 100 videos of 16 frames do not reach a model as one batch of 1600 images.

    Returns:
      ``[B]`` float32: the mean over the ``T`` frames.
    """
    shape = tuple(videos.shape)
    b, t = int(shape[0]), int(shape[1])
    step = max(1, int(max_frames) // t)
    out = []
    for start in range(0, b, step):
        n = min(step, b - start)
        frames = videos[start : start + n].reshape((n * t, *shape[2:]))
        frame_prompts = [p for p in prompts[start : start + n] for _ in range(t)]
        scores = np.asarray(image_fn(frames, frame_prompts), dtype=np.float32)
        if scores.shape != (n * t,):
            raise RuntimeError(f"the image reward returned shape {scores.shape} for {n * t} frames")
        out.append(scores.reshape(n, t).mean(axis=1))
    return np.concatenate(out)


def validate_inputs(images: Any, prompts: Sequence[str], *, video: bool = False) -> None:
    """Raises ``ValueError`` for inputs that would give a silently wrong score.

    Checks rank (4, or 5 for video), 3 channels last, float dtype, values in [0, 1] (NaN counts as out of
    range), a non-empty prompt list of strings whose length equals the batch.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not one string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("the prompt list is empty: give one prompt per image")
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("every prompt must be a string")
    shape = tuple(getattr(images, "shape", ()))
    rank = 5 if video else 4
    layout = "[B, T, H, W, 3]" if video else "[B, H, W, 3]"
    if len(shape) != rank:
        raise ValueError(f"images must be {layout}; got shape {shape}")
    if shape[-1] != 3:
        raise ValueError(f"images must have 3 channels last {layout}; got shape {shape}")
    if shape[0] != len(prompts):
        raise ValueError(f"{shape[0]} images but {len(prompts)} prompts: give one prompt per image")
    dtype = np.dtype(getattr(images, "dtype", np.float32))
    if not np.issubdtype(dtype, np.floating) and dtype.name != "bfloat16":
        raise ValueError(f"images must be floats in [0, 1]; got dtype {dtype}")
    if any(int(d) == 0 for d in shape):
        raise ValueError(f"images must not be empty; got shape {shape}")
    if isinstance(images, jax.Array):  # reduce on the device: two scalars cross to the host, not the batch
        lo, hi = (float(v) for v in _min_max(images))
    else:
        lo = float(np.min(np.asarray(images, dtype=np.float32)))
        hi = float(np.max(np.asarray(images, dtype=np.float32)))
    if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
        raise ValueError(f"images must lie in [0, 1]; got values in [{lo}, {hi}]")


@jax.jit
def _min_max(images: jax.Array) -> jax.Array:
    """``[min, max]`` of any array as float32 (NaN propagates)."""
    x = images.astype(jnp.float32)
    return jnp.stack([jnp.min(x), jnp.max(x)])


_BUILTIN_LOADED = False


def _load_builtin() -> None:
    """Imports the modules that register the built-in rewards (once)."""
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


# Modules whose import registers rewards. Heavy imports (torch, transformers) happen inside the factories,
# not at module import, so listing a module here costs nothing until its reward is built.
_BUILTIN_MODULES: list[str] = [
    "reward_models.weightfree",
    "reward_models.clip_score",
    "reward_models.aesthetic",
    "reward_models.pickscore",
    "reward_models.imagereward",
    "reward_models.shapes",
    "reward_models.viclip",
    "reward_models.video_metrics",
]
