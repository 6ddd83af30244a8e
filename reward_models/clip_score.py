"""CLIP score in JAX (``transformers.FlaxCLIPModel``): how well an image matches its prompt.

``clip_score(image, prompt) = scale * cos(E_img(image), E_txt(prompt))`` with the projected, L2-normalised
CLIP embeddings. The default ``scale=100`` gives the usual "CLIP score" numbers (torchmetrics' CLIPScore,
without its clamp at 0, so a reward keeps ordering information below zero); ``scale=1`` gives the raw
cosine in [-1, 1]. Default weights: ``openai/clip-vit-large-patch14`` (the CLIP-score convention), read from
a local directory or the local hub cache, Flax (``flax_model.msgpack``) or PyTorch weights (converted).

Everything after tokenisation runs jitted on the images' device: the preprocessing (bicubic shortest-edge
resize done as PIL does it on 8-bit images, bit for bit, centre crop, CLIP mean/std) and both encoders. The
params are an argument of the jitted function, not baked into it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reward_models.bridge import (
    ImagePreprocess,
    clip_preprocess,
    read_preprocess_config,
    resize_shortest_edge_size,
)
from reward_models.pil_resize import pil_resize_jax
from reward_models.registry import RewardFn, register
from reward_models.weights import clip_tokenizer_files, resolve_weights, transformers_files

DEFAULT_CLIP = "openai/clip-vit-large-patch14"

_JAX_METHOD = {"bicubic": "bicubic", "bilinear": "linear"}


def preprocess_jax(images: jax.Array, cfg: ImagePreprocess) -> jax.Array:
    """The CLIP processor in JAX: ``images: [B, H, W, 3]`` in [0, 1] -> ``pixel_values: [B, 3, S, S]``.

    Shortest-edge resize to ``cfg.size`` (long edge rounded down; skipped when already there), centre crop
    ``cfg.crop_size``, then ``(x - mean) / std``. With ``cfg.pil_uint8`` (default) the images are rounded to
    8 bits and resized in PIL's fixed point, bit for bit (:func:`reward_models.pil_resize.pil_resize_jax`);
    otherwise ``jax.image.resize`` (the same antialiased Keys cubic, a = -0.5, in float) clipped to [0, 1].
    """
    b, h, w, _ = images.shape
    x = images.astype(jnp.float32)
    out_h, out_w = resize_shortest_edge_size(h, w, cfg.size)
    if cfg.pil_uint8:  # 8-bit, PIL's integer resample bit for bit, as the original processor on PIL images
        levels = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.int32)
        levels = pil_resize_jax(jnp.transpose(levels, (0, 3, 1, 2)), (out_h, out_w), cfg.interpolation)
        x = jnp.transpose(levels, (0, 2, 3, 1)).astype(jnp.float32) / 255.0
    elif (out_h, out_w) != (h, w):
        method = _JAX_METHOD[cfg.interpolation]
        x = jax.image.resize(x, (b, out_h, out_w, 3), method=method, antialias=cfg.antialias)
        x = jnp.clip(x, 0.0, 1.0)
    c = cfg.crop_size
    if c > out_h or c > out_w:
        raise ValueError(f"crop {c} is larger than the resized image {out_h}x{out_w}")
    top, left = (out_h - c) // 2, (out_w - c) // 2
    x = x[:, top : top + c, left : left + c, :]
    x = (x - jnp.asarray(cfg.mean, jnp.float32)) / jnp.asarray(cfg.std, jnp.float32)
    return jnp.transpose(x, (0, 3, 1, 2))


def clip_cosine(
    params: Any,
    images: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    model: Any,
    preprocess: ImagePreprocess,
) -> jax.Array:
    """Cosine similarity of each image with its prompt.

    Args:
      params: FlaxCLIPModel params.
      images: ``[B, H, W, 3]`` in [0, 1].
      input_ids, attention_mask: ``[B, L]`` int32 token ids (end-of-text has the highest id).
      model: the ``FlaxCLIPModel`` (module definition; its own params are not used).
      preprocess: the image processor settings.

    Returns:
      ``[B]`` float32 cosines in [-1, 1].
    """
    pixel_values = preprocess_jax(images, preprocess).astype(model.dtype)
    img = model.get_image_features(pixel_values=pixel_values, params=params)
    txt = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, params=params)
    img = img.astype(jnp.float32)
    txt = txt.astype(jnp.float32)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    return jnp.sum(img * txt, axis=-1)


class PromptTokenizer:
    """Tokenises prompts to ``[B, L]`` ids + mask once per distinct prompt list (warns when truncating)."""

    def __init__(self, tokenizer: Any, max_length: int, name: str) -> None:
        self.tokenizer = tokenizer  # a CLIP tokenizer (fast or slow)
        self.max_length = max_length  # the text encoder's position limit (77 for CLIP)
        self.name = name  # reward name for the truncation warning
        self._cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(prompts)
        if key not in self._cache:
            lengths = [len(ids) for ids in self.tokenizer(list(key))["input_ids"]]
            long = [p for p, n in zip(key, lengths, strict=True) if n > self.max_length]
            if long:
                warnings.warn(
                    f"{self.name}: {len(long)} prompt(s) exceed {self.max_length} tokens and are truncated, "
                    f"e.g. {long[0][:60]!r}",
                    stacklevel=3,
                )
            enc = self.tokenizer(
                list(key), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="np"
            )
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = (enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32))
        return self._cache[key]


def load_clip_tokenizer(directory: Any) -> Any:
    """The CLIP tokenizer in ``directory`` (fast if ``tokenizers`` can build it, as ``AutoProcessor`` does)."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    try:
        return CLIPTokenizerFast.from_pretrained(directory, local_files_only=True)
    except Exception:  # noqa: BLE001 - fall back to the slow tokenizer, same vocabulary
        return CLIPTokenizer.from_pretrained(directory, local_files_only=True)


def load_flax_clip(directory: Any, dtype: Any = jnp.float32) -> tuple[Any, Any]:
    """``(model, params)`` of a FlaxCLIPModel from Flax weights, or converted from PyTorch weights.

    PyTorch weights (``model.safetensors``, or ``pytorch_model.bin`` which needs torch) are converted with
    transformers' own key mapping against the *abstract* param tree (``jax.eval_shape``), so no random
    init runs (eager init of CLIP ViT-L takes minutes on a CPU). Every param must be present in the file:
    a partial checkpoint is refused rather than silently left random.
    """
    import types
    from pathlib import Path

    from flax.traverse_util import flatten_dict
    from transformers import CLIPConfig, FlaxCLIPModel
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    directory = Path(directory)
    if (directory / "flax_model.msgpack").is_file():
        return FlaxCLIPModel.from_pretrained(directory, dtype=dtype, _do_init=False, local_files_only=True)
    config = CLIPConfig.from_pretrained(directory, local_files_only=True)
    model = FlaxCLIPModel(config, dtype=dtype, _do_init=False)
    abstract = jax.eval_shape(lambda: model.init_weights(jax.random.PRNGKey(0), model.input_shape))
    abstract = flax_unfreeze(abstract)
    if (directory / "model.safetensors").is_file():
        from safetensors.numpy import load_file

        state = load_file(directory / "model.safetensors")
    else:
        import torch

        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        state = {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}
    shim = types.SimpleNamespace(params=abstract, base_model_prefix=model.base_model_prefix)
    params = convert_pytorch_state_dict_to_flax(dict(state), shim)
    want, got = flatten_dict(abstract), flatten_dict(params)
    missing = sorted(".".join(k) for k in want if k not in got)
    if missing:
        raise ValueError(f"{directory}: the checkpoint lacks {len(missing)} CLIP params, e.g. {missing[:5]}")
    params = {k: v for k, v in got.items() if k in want}  # drop buffers such as position_ids
    from flax.traverse_util import unflatten_dict

    return model, unflatten_dict(params)


def flax_unfreeze(tree: Any) -> Any:
    """A plain nested dict from a (possibly frozen) Flax param tree."""
    from flax.core import unfreeze

    return unfreeze(tree)


@register(
    "clip_score",
    description="100 x cosine of CLIP image/text embeddings (JAX FlaxCLIPModel; scale=1 for the raw cosine)",
    weights=f"{DEFAULT_CLIP} from the local Hugging Face cache, or path=DIR (Flax or PyTorch weights)",
)
def make_clip_score(path: str | None = None, *, scale: float = 100.0, dtype: str = "float32") -> RewardFn:
    """Builds the CLIP-score reward.

    Args:
      path: a directory with ``config.json``, weights (``flax_model.msgpack``, ``model.safetensors`` or
        ``pytorch_model.bin``), ``vocab.json`` and ``merges.txt`` (``preprocessor_config.json`` optional),
        or a hub id in the local cache; default ``openai/clip-vit-large-patch14``.
      scale: multiplies the cosine (100: the usual CLIP score; 1: raw cosine).
      dtype: ``"float32"`` or ``"bfloat16"`` compute dtype.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    files = transformers_files(DEFAULT_CLIP, flax=True) + clip_tokenizer_files(DEFAULT_CLIP)
    directory = resolve_weights("clip_score: CLIP model", path=path, files=files, hub_id=DEFAULT_CLIP)
    model, params = load_flax_clip(directory, jnp.dtype(dtype))
    params = jax.device_put(params)
    cfg = read_preprocess_config(directory, clip_preprocess(model.config.vision_config.image_size))
    tokenize = PromptTokenizer(
        load_clip_tokenizer(directory), model.config.text_config.max_position_embeddings, "clip_score"
    )
    cosine_fn = jax.jit(functools.partial(clip_cosine, model=model, preprocess=cfg))
    scale_f = float(scale)

    def reward_fn(images: Any, prompts: Sequence[str]) -> jax.Array:
        input_ids, mask = tokenize(prompts)
        return scale_f * cosine_fn(params, jnp.asarray(images), input_ids, mask)

    reward_fn.params = params  # type: ignore[attr-defined]
    reward_fn.model = model  # type: ignore[attr-defined]
    reward_fn.cosine_fn = cosine_fn  # type: ignore[attr-defined]
    reward_fn.tokenize = tokenize  # type: ignore[attr-defined]
    return reward_fn
