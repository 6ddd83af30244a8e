"""The paper's video metrics (Tab. 5): ViCLIP score, CLIP frame consistency, PickScore over frames.

* ``viclip``: :mod:`reward_models.viclip` (text-video cosine).
* ``frame_consistency`` (registered here, ``video=True``): LOVEU-TGVE's "frame consistency" (Wu et al.,
  2023): CLIP ViT-L/14 image embeddings of every frame, L2-normalised, and the mean cosine over all ordered
  pairs of distinct frames, ``sum_{i != j} <e_i, e_j> / (T (T - 1))``. It ignores the prompt.
* ``pickscore``: the image reward on every frame, averaged (:func:`reward_models.registry.mean_over_frames`,
  which :func:`reward_models.make_reward` applies to any image reward given a video).

:func:`video_metric_fns` builds the three from per-metric options; :func:`frame_strip` lays frames side by
side for the frame-strip grids of ``find-jax evaluate``.

``frame_consistency`` runs in JAX (``transformers.FlaxCLIPModel``, as ``clip_score``): preprocessing (8-bit,
PIL's bicubic resize bit for bit, centre crop, CLIP mean/std) and the image tower are jitted on the videos'
device, the params an argument. Weights: ``openai/clip-vit-large-patch14`` from a directory or the local hub
cache (Flax or PyTorch weights), never downloaded.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reward_models.registry import RewardFn, register

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # LOVEU-TGVE's CLIP for frame consistency
TAB5_METRICS = ("viclip", "frame_consistency", "pickscore")  # Tab. 5's columns: ViCLIP, Consistency, PickScore


def pairwise_consistency(embeddings: jax.Array) -> jax.Array:
    """Mean cosine over ordered pairs of distinct frames: ``embeddings [B, T, D]`` (any norm) -> ``[B]``.

    ``(sum_{i, j} <e_i, e_j> - sum_i <e_i, e_i>) / (T (T - 1))`` with unit ``e``; needs ``T >= 2``.
    """
    t = embeddings.shape[1]
    if t < 2:
        raise ValueError(f"frame consistency needs at least 2 frames; got {t}")
    e = embeddings.astype(jnp.float32)
    e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    sim = jnp.einsum("btd,bsd->bts", e, e)  # [B, T, T]
    off = jnp.sum(sim, axis=(1, 2)) - jnp.trace(sim, axis1=1, axis2=2)
    return off / (t * (t - 1))


def clip_frame_embeddings(params: Any, frames: jax.Array, *, model: Any, preprocess: Any) -> jax.Array:
    """CLIP image embeddings (projected, not normalised): ``frames [N, H, W, 3]`` in [0, 1] -> ``[N, D]``."""
    from reward_models.clip_score import preprocess_jax

    pixel_values = preprocess_jax(frames, preprocess).astype(model.dtype)
    return model.get_image_features(pixel_values=pixel_values, params=params).astype(jnp.float32)


@register(
    "frame_consistency",
    description="CLIP ViT-L/14 frame consistency (LOVEU-TGVE): mean cosine over all ordered pairs of frames",
    weights=f"{DEFAULT_CLIP} from the local Hugging Face cache, or path=DIR (Flax or PyTorch weights)",
    video=True,
)
def make_frame_consistency(path: str | None = None, *, dtype: str = "float32", batch_size: int = 64) -> RewardFn:
    """Builds ``reward_fn(videos [B, T, H, W, 3] in [0, 1], prompts) -> [B]`` (prompts are not used).

    Args:
      path: directory with a CLIP model (``config.json`` + ``flax_model.msgpack``, ``model.safetensors`` or
        ``pytorch_model.bin``; ``preprocessor_config.json`` optional), or a hub id in the local cache;
        default ``openai/clip-vit-large-patch14``.
      dtype: ``"float32"`` or ``"bfloat16"`` compute dtype (the cosines are float32).
      batch_size: frames per forward pass of the image tower.
    """
    from reward_models.bridge import clip_preprocess, read_preprocess_config
    from reward_models.clip_score import load_flax_clip
    from reward_models.weights import resolve_weights, transformers_files

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    files = transformers_files(DEFAULT_CLIP, flax=True)
    directory = resolve_weights("frame_consistency: CLIP model", path=path, files=files, hub_id=DEFAULT_CLIP)
    model, params = load_flax_clip(directory, jnp.dtype(dtype))
    params = jax.device_put(params)
    cfg = read_preprocess_config(directory, clip_preprocess(model.config.vision_config.image_size))
    embed_fn = jax.jit(functools.partial(clip_frame_embeddings, model=model, preprocess=cfg))

    def reward_fn(videos: Any, prompts: Sequence[str]) -> jax.Array:
        x = jnp.asarray(videos)
        b, t = x.shape[:2]
        frames = x.reshape((b * t, *x.shape[2:]))
        emb = jnp.concatenate([embed_fn(params, frames[i : i + batch_size]) for i in range(0, b * t, batch_size)])
        return pairwise_consistency(emb.reshape(b, t, -1))

    reward_fn.model = model  # type: ignore[attr-defined]
    reward_fn.params = params  # type: ignore[attr-defined]
    reward_fn.embed_fn = embed_fn  # type: ignore[attr-defined]
    return reward_fn


def video_metric_fns(
    options: Mapping[str, Mapping[str, Any]] | None = None, metrics: Sequence[str] = TAB5_METRICS
) -> dict[str, RewardFn]:
    """``{metric: reward_fn(videos [B, T, H, W, 3], prompts) -> [B]}`` for Tab. 5 (weights loaded once each).

    ``options[name]`` are that reward's factory options (e.g. ``{"viclip": {"path": ...}}``); an image
    reward in ``metrics`` scores a video as its mean over frames.
    """
    from reward_models.registry import make_reward

    options = dict(options or {})
    unknown = sorted(set(options) - set(metrics))
    if unknown:
        raise ValueError(f"options for {unknown}, which are not among the metrics {list(metrics)}")
    return {name: make_reward(name, **dict(options.get(name, {}))) for name in metrics}


def frame_strip(videos: Any, frames: int = 8) -> np.ndarray:
    """``[B, T, H, W, 3]`` -> ``[B, H, n W, 3]`` float32: ``n = min(frames, T)`` evenly spaced frames side by
    side (first and last included), for grids of videos."""
    v = np.asarray(videos, dtype=np.float32)
    if v.ndim != 5:
        raise ValueError(f"videos must be [B, T, H, W, 3]; got shape {v.shape}")
    n = max(1, min(int(frames), v.shape[1]))
    idx = np.round(np.linspace(0, v.shape[1] - 1, n)).astype(int)
    picked = v[:, idx]  # [B, n, H, W, 3]
    return np.concatenate(list(picked.transpose(1, 0, 2, 3, 4)), axis=2)


__all__ = [
    "DEFAULT_CLIP",
    "TAB5_METRICS",
    "clip_frame_embeddings",
    "frame_strip",
    "make_frame_consistency",
    "pairwise_consistency",
    "video_metric_fns",
]
