"""Offline loading of a ModelScope UNet3D (diffusers layout, torch weights) into the Flax port.

``load_unet3d(spec)`` reads ``unet/config.json`` (``_class_name`` must be ``UNet3DConditionModel``) and the torch
weights beside it, converts them strictly (``convert.py``) and returns the Flax module and its params. ``spec``
is a model directory (holding ``unet/``), the ``unet`` folder itself, or a hub id already in the local Hugging
Face cache; nothing is ever downloaded. Weight files looked for, first found wins:

  variant None:   diffusion_pytorch_model.safetensors, ...safetensors.index.json (sharded), ...bin
  variant "fp16": diffusion_pytorch_model.fp16.safetensors, ...fp16.safetensors.index.json, ...fp16.bin
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from find_jax.envs.loading import ModelLoadError, resolve_model_dir
from find_jax.envs.video.convert import convert_unet3d_state_dict
from find_jax.envs.video.unet3d import UNet3DConditionModel, UNet3DConfig

UNET3D_CLASS_NAME = "UNet3DConditionModel"
_STEM = "diffusion_pytorch_model"


def unet3d_weight_names(variant: str | None = None) -> tuple[str, ...]:
    """The weight file names looked for, in order, for ``variant`` (None or e.g. ``"fp16"``)."""
    stem = _STEM if variant is None else f"{_STEM}.{variant}"
    return (f"{stem}.safetensors", f"{stem}.safetensors.index.json", f"{stem}.bin")


def unet3d_dir(spec: str | os.PathLike, *, subfolder: str = "unet") -> Path:
    """The folder holding the UNet's ``config.json``: ``<spec>/<subfolder>``, or ``spec`` itself if it has one."""
    root = resolve_model_dir(spec)
    for folder in (root / subfolder, root):
        if (folder / "config.json").is_file():
            return folder
    raise ModelLoadError(f"no UNet3D config: neither {root / subfolder / 'config.json'} nor {root / 'config.json'}")


def read_unet3d_config(folder: str | os.PathLike) -> UNet3DConfig:
    """``UNet3DConfig`` from ``folder/config.json``; refuses any class other than ``UNet3DConditionModel``."""
    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None
    cls = raw.get("_class_name")
    if cls != UNET3D_CLASS_NAME:
        raise ModelLoadError(
            f"{path} describes a {cls!r}, not a {UNET3D_CLASS_NAME!r}: the video environment needs ModelScope's "
            "text-to-video UNet3D (e.g. ali-vilab/text-to-video-ms-1.7b); an image model goes to the image loader"
        )
    try:
        return UNet3DConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: {e}") from None


def find_unet3d_weights(folder: str | os.PathLike, *, variant: str | None = None) -> Path:
    """The first weight file of ``unet3d_weight_names(variant)`` present in ``folder``.

    A miss names every file looked for and the weight files that are there (e.g. another variant).
    """
    folder = Path(folder)
    names = unet3d_weight_names(variant)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.glob(f"{_STEM}*"))
    hint = f"; present: {', '.join(present)} (choose the variant that matches)" if present else "; no weights there"
    raise ModelLoadError(f"no UNet3D weights for variant {variant!r} in {folder}: looked for {', '.join(names)}{hint}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype: read through torch
        import torch
        from safetensors.torch import load_file

        return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in load_file(str(path)).items()}


def _read_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ModelLoadError(
            f"{path} is a PyTorch .bin file and torch is not installed: `pip install find-jax[torch]`, or "
            "convert the weights to .safetensors"
        ) from None
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in sd.items()}


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch state dict as numpy arrays (dtype as stored) from ``.safetensors``, a sharded index, or ``.bin``."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_torch_state_dict(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_bin(path)


def load_unet3d(
    spec: str | os.PathLike,
    *,
    subfolder: str = "unet",
    variant: str | None = None,
    dtype: Any = jnp.float32,
) -> tuple[UNet3DConditionModel, Any]:
    """The Flax ``UNet3DConditionModel`` and its params from torch weights, offline and strictly.

    ``dtype``: the params' dtype and the model's compute dtype (float32 default; an fp16 file is upcast).
    Returns ``(model, params)``; call ``model.apply({"params": params}, sample [B, C, F, h, w], t, context)``.
    Raises ``ModelLoadError`` (or its subclass ``UNet3DWeightsError`` for keys/shapes) with the reason.
    """
    folder = unet3d_dir(spec, subfolder=subfolder)
    config = read_unet3d_config(folder)
    weights = find_unet3d_weights(folder, variant=variant)
    state = read_torch_state_dict(weights)
    params = convert_unet3d_state_dict(state, config, dtype=np.float32, where=str(weights))
    del state
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)
    return UNet3DConditionModel(config, dtype=dtype), params
