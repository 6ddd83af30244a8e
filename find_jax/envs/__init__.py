"""The environments: frozen diffusion models as black boxes (paper §4.2), behind one protocol.

:mod:`find_jax.envs.base` says what the loop needs from an environment. ``image`` holds Stable Diffusion and the
shipped shapes world, ``video`` ModelScope text-to-video. The functions here are the only place that tells them
apart: :func:`kind_of` reads a model directory's ``model_index.json`` (``_class_name``), :func:`load_model` loads
it with that kind's loader and :func:`make_environment` builds that kind's environment, so ``optimize``,
``sample`` and ``evaluate`` never branch on image vs video.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from find_jax.envs.base import SAMPLER_DEFAULTS, Environment, SamplerSettings, sampler_settings
from find_jax.envs.loading import DEFAULT_MODEL, ModelLoadError, resolve_model_dir, shipped_model_dir
from find_jax.envs.quiet import quiet_upstream_deprecations

# model_index.json _class_name -> environment kind (any other pipeline is read as a text-to-image one)
VIDEO_PIPELINES = ("TextToVideoSDPipeline", "VideoToVideoSDPipeline")
# kind -> ("module:model loader", "module:environment class")
_KINDS = {
    "image": ("find_jax.envs.image.model:load_model", "find_jax.envs.image.sampler:ImageEnvironment"),
    "video": ("find_jax.envs.video.model:load_model", "find_jax.envs.video.sampler:VideoEnvironment"),
}


def kind_of(spec: str | os.PathLike | None) -> str:
    """``"image"`` or ``"video"`` for a model spec (directory, cached hub id, or shipped name)."""
    index = resolve_model_dir(spec) / "model_index.json"
    if not index.is_file():
        return "image"  # the image loader names what is missing
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ModelLoadError(f"cannot read {index}: {e}") from None
    return "video" if name in VIDEO_PIPELINES else "image"


def _resolve(kind: str, which: int) -> Any:
    module, name = _KINDS[kind][which].split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(f"the {kind} environment is not available in this installation ({e})") from None


def load_model(spec: str | os.PathLike | None = None, *, dtype: str | Any = "float32", weights: str = "auto") -> Any:
    """Loads the frozen model of ``spec`` (default: the shipped shapes model) offline with its kind's loader."""
    if weights not in ("auto", "flax", "pt"):
        raise ValueError(f"weights must be 'auto', 'flax' or 'pt'; got {weights!r}")
    kind = kind_of(spec)
    quiet_upstream_deprecations()  # diffusers' "Flax classes are deprecated" once, not once per module
    return _resolve(kind, 0)(spec, dtype=dtype, weights=weights)


def make_environment(
    model: Any, settings: SamplerSettings = SAMPLER_DEFAULTS, *, mesh: Any = "auto", **kwargs: Any
) -> Environment:
    """The environment of a loaded ``model`` (its ``kind``) with ``settings``; ``mesh``: the sampler's batch
    mesh (``"auto"``: every local device); ``kwargs`` go to the environment class (e.g. ``fast_norm``)."""
    kind = getattr(model, "kind", "image")
    return _resolve(kind, 1)(model, settings, mesh=mesh, **kwargs)


__all__ = [
    "DEFAULT_MODEL",
    "SAMPLER_DEFAULTS",
    "Environment",
    "ModelLoadError",
    "SamplerSettings",
    "kind_of",
    "load_model",
    "make_environment",
    "resolve_model_dir",
    "sampler_settings",
    "shipped_model_dir",
]
