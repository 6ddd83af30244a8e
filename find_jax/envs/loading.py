"""Offline loading of diffusers-layout model directories, shared by the environments.

A model directory is diffusers' layout: ``model_index.json`` (its ``_class_name`` names the pipeline, which
:func:`find_jax.envs.kind_of` maps to an environment) and one folder per component with ``config.json`` and
weights (Flax msgpack, or PyTorch ``.safetensors`` / ``.bin``). :func:`resolve_model_dir` takes such a directory,
a hub id already in the local Hugging Face cache (never downloads: ``local_files_only``), or the name of a model
shipped in the package. The helpers here build Flax modules from configs and load their weights without an
eager ``init`` (shape trees only), check keys and shapes, and fingerprint the frozen weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "shapes"  # the model shipped inside the package (find_jax/envs/image/shapes/assets/shapes_model)
_SHIPPED = {"shapes": "shapes_model"}

_FLAX_DIFFUSERS = "diffusion_flax_model.msgpack"
_PT_DIFFUSERS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_FLAX_TRANSFORMERS = "flax_model.msgpack"
_PT_TRANSFORMERS = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("vocab.json", "merges.txt")


class ModelLoadError(FileNotFoundError):
    """A model directory, component, weight file or tokenizer file is missing or unreadable."""


def shipped_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of a model shipped inside the package (``find_jax/envs/image/shapes/assets/...``)."""
    return Path(__file__).resolve().parent / "image" / "shapes" / "assets" / _SHIPPED[name]


def resolve_model_dir(spec: str | os.PathLike | None) -> Path:
    """A local directory for ``spec``: ``None``/"shapes" (shipped), a directory, or a cached hub id.

    Hub ids are looked up in the local Hugging Face cache only (works with ``HF_HUB_OFFLINE=1``).
    """
    if spec is None or str(spec) in _SHIPPED:
        path = shipped_model_dir(str(spec or DEFAULT_MODEL))
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"the shipped model {spec or DEFAULT_MODEL!r} is missing at {path}; reinstall find-jax, or train it "
                "with `python scripts/train_shapes.py` (see README)"
            )
        return path
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    looks_like_id = "/" in str(spec) and not str(spec).startswith((".", "/", "~")) and str(spec).count("/") == 1
    if looks_like_id:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(spec), local_files_only=True))
        except Exception as e:  # LocalEntryNotFoundError, or any offline resolution failure
            raise ModelLoadError(
                f"model {spec!r} is neither a local directory nor in the local Hugging Face cache "
                f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}). "
                "Nothing is downloaded: copy a diffusers-format model directory here and pass its path with "
                f"--model DIR, or fill the cache on a machine with network (`huggingface-cli download {spec}`). "
                f"({type(e).__name__})"
            ) from None
    raise ModelLoadError(
        f"model directory {str(path)!r} does not exist; pass --model with a diffusers-format directory "
        "(model_index.json, unet/, text_encoder/, tokenizer/, scheduler/, vae/) or a hub id in the local cache"
    )


def require(path: Path, what: str, how: str) -> Path:
    if not path.exists():
        raise ModelLoadError(f"{what} not found: {path} — {how}")
    return path


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


class ShapeOnly:
    """Stand-in for a Flax model in diffusers' weight converter: shapes only, no eager ``init``.

    ``convert_pytorch_state_dict_to_flax`` calls ``init_weights`` only to learn key names and shapes; an eager
    init of a UNet costs ~40 s on CPU, ``jax.eval_shape`` costs nothing.
    """

    def __init__(self, model: Any):
        self._model = model

    def init_weights(self, rng: jax.Array) -> Any:
        return jax.eval_shape(self._model.init_weights, rng)


class _NumpyTensor:
    """Wraps a numpy array in the ``.numpy()`` interface the converter expects (no torch needed)."""

    def __init__(self, a: np.ndarray):
        self._a = a

    def numpy(self) -> np.ndarray:
        return self._a


def load_pt_state_dict(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return {k: _NumpyTensor(v) for k, v in load_file(str(path)).items()}
    try:
        import torch
    except ImportError:
        raise ModelLoadError(
            f"{path} is a PyTorch .bin file and torch is not installed: `pip install find-jax[torch]`, or "
            "convert the weights to .safetensors / Flax msgpack"
        ) from None
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: _NumpyTensor(v.float().numpy()) for k, v in sd.items()}


def check_params(params: Any, model: Any, where: Path) -> Any:
    """Refuses weights whose keys or shapes do not match the module's config."""
    from flax.traverse_util import flatten_dict

    want = flatten_dict(jax.eval_shape(model.init_weights, jax.random.PRNGKey(0)))
    have = flatten_dict(params)
    missing = sorted("/".join(k) for k in set(want) - set(have))
    unexpected = sorted("/".join(k) for k in set(have) - set(want))
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {where} do not match config.json: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
            f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, v in want.items():
        if tuple(have[k].shape) != tuple(v.shape):
            raise ModelLoadError(f"weight {'/'.join(k)} in {where} has shape {have[k].shape}, config wants {v.shape}")
    return params


def load_diffusers_component(cls: Any, folder: Path, weights: str, dtype: Any) -> tuple[Any, Any]:
    """Builds a diffusers Flax module from ``folder/config.json`` and loads its weights without eager init."""
    from flax.serialization import msgpack_restore

    how = "pass --model with a complete diffusers-format directory"
    require(folder, f"component folder '{folder.name}'", how)
    config = read_json(require(folder / "config.json", f"{folder.name}/config.json", how))
    model = cls.from_config(config, dtype=dtype)
    flax_file = folder / _FLAX_DIFFUSERS
    pt_files = [folder / n for n in _PT_DIFFUSERS if (folder / n).is_file()]
    if weights in ("auto", "flax") and flax_file.is_file():
        try:
            params = msgpack_restore(flax_file.read_bytes())
        except Exception as e:
            raise ModelLoadError(f"cannot read Flax weights {flax_file}: {e}") from None
    elif weights in ("auto", "pt") and pt_files:
        from diffusers.models.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

        params = convert_pytorch_state_dict_to_flax(load_pt_state_dict(pt_files[0]), ShapeOnly(model))
    else:
        names = [_FLAX_DIFFUSERS] * (weights != "pt") + list(_PT_DIFFUSERS) * (weights != "flax")
        raise ModelLoadError(
            f"no weights in {folder}: expected one of {', '.join(names)} — save the model with diffusers' "
            "save_pretrained, or pass --model with a complete diffusers-format directory"
        )
    params = check_params(params, model, folder)
    return model, jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), params)


def flat_items(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    from flax.traverse_util import flatten_dict

    return list(flatten_dict(tree).items())


class ShapeTree:
    """Stand-in for a transformers Flax model in its weight converter: the param shape tree, no init."""

    def __init__(self, model: Any):
        self.base_model_prefix = model.base_model_prefix
        self.params = model.params_shape_tree


def load_text_encoder(folder: Path, weights: str, dtype: Any) -> tuple[Any, Any]:
    """``FlaxCLIPTextModel`` (created with ``_do_init=False``) and its params from Flax or PyTorch weights.

    transformers 4.57's own ``from_pretrained(from_pt=True, _do_init=False)`` fails (its converter reads
    ``model.params``), so PyTorch weights are converted here against the shape tree.
    """
    from flax.serialization import msgpack_restore
    from transformers import CLIPTextConfig, FlaxCLIPTextModel
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    how = "pass --model with a complete diffusers-format directory"
    require(folder, "component folder 'text_encoder'", how)
    config = CLIPTextConfig.from_pretrained(str(require(folder / "config.json", "text_encoder/config.json", how)))
    model = FlaxCLIPTextModel(config, dtype=dtype, _do_init=False)
    flax_file = folder / _FLAX_TRANSFORMERS
    pt_files = [folder / n for n in _PT_TRANSFORMERS if (folder / n).is_file()]
    if weights in ("auto", "flax") and flax_file.is_file():
        try:
            params = msgpack_restore(flax_file.read_bytes())
        except Exception as e:
            raise ModelLoadError(f"cannot read Flax weights {flax_file}: {e}") from None
    elif weights in ("auto", "pt") and pt_files:
        sd = {k: v.numpy() for k, v in load_pt_state_dict(pt_files[0]).items()}
        params = convert_pytorch_state_dict_to_flax(sd, ShapeTree(model))
    else:
        names = [_FLAX_TRANSFORMERS] * (weights != "pt") + list(_PT_TRANSFORMERS) * (weights != "flax")
        raise ModelLoadError(
            f"no weights in {folder}: expected one of {', '.join(names)} — save the text encoder with "
            "transformers' save_pretrained"
        )
    params = check_params(params, ShapeTreeModel(model), folder)
    return model, jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), params)


class ShapeTreeModel:
    """Adapter giving a transformers Flax model the diffusers-style ``init_weights`` :func:`check_params` uses."""

    def __init__(self, model: Any):
        self._tree = model.params_shape_tree

    def init_weights(self, rng: jax.Array) -> Any:
        return self._tree


def load_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    how = "the tokenizer folder needs CLIP's vocab.json and merges.txt (tokenizer.save_pretrained writes them)"
    require(folder, "component folder 'tokenizer'", how)
    for name in _TOKENIZER_FILES:
        require(folder / name, f"tokenizer file {name}", how)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def fingerprint(params: Any) -> str:
    """sha256 over every weight's name, shape and bytes (identifies the frozen weights in run records)."""
    h = hashlib.sha256()
    for k, v in sorted(flat_items(params), key=lambda kv: kv[0]):
        a = np.asarray(jax.device_get(v))
        h.update("/".join(map(str, k)).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def quiet_libraries() -> None:
    """Silences the deprecation line every diffusers/transformers Flax module logs."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
