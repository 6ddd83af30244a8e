"""ImageReward (Xu et al., 2023): the paper's image reward, on transformers' BLIP classes.

FIND uses it as the reward ``r(x_0, c)`` of its one-step MDP (Eq. 5, maximised in Eq. 7) for every image
experiment (Sec. 5.1) and reports it as the first metric (Tab. 1). Only its value is needed (the policy
gradient of Eq. 8 treats the reward as a black box), so scoring runs under ``torch.inference_mode``.

The released model (``THUDM/ImageReward``: ``ImageReward.pt`` + ``med_config.json``) is BLIP's ViT-L/16 image
encoder, BLIP's BERT-base text encoder whose layers cross-attend to the image tokens, and a 5-layer linear
MLP head on the text ``[CLS]`` feature:

    score = (head(text([CLS] prompt [SEP] | image tokens)[:, 0]) - 0.16717) / 1.03334

Route chosen: the original's modules (timm-0.6 ViT + BLIP's ``med.py`` BERT) are mathematically the same as
transformers' ``BlipVisionModel`` and ``BlipTextModel`` (which were ported from BLIP), so this module builds
those two classes from the checkpoint's own ``med_config.json`` and renames the checkpoint's keys
(:func:`map_checkpoint`). Every checkpoint entry is accounted for: it is loaded, or it is one of the few
entries the score does not use (:data:`UNUSED_KEYS`); anything else, a missing weight or a shape mismatch is
refused with the reason (the original loads non-strictly and would silently keep random weights). Parity
with the original package on seeded random weights is tested against golden scores made by
``scripts/imagereward_golden.py``.

Preprocessing runs on the images' device. The original takes a PIL image: 8-bit, bicubic resize of the
short edge to 224 (PIL's separable antialiased filter in fixed point), torchvision's centre crop, then CLIP
mean/std. :func:`preprocess` reproduces that on tensors; with ``match_pil_uint8=True`` (default) the images
are rounded to 8 bits and resized with :func:`reward_models.pil_resize.pil_resize`, which equals PIL bit for
bit, so the pixels match the original's exactly and the scores to float rounding (~1e-6) at any input size.

The code is split in three modules: :mod:`reward_models.imagereward_checkpoint` (config, files, tokenizer,
checkpoint key mapping), :mod:`reward_models.imagereward_model` (the network and its loader) and this one
(preprocessing, scoring, the registered reward); every public name is importable from here.

``torch`` and ``transformers`` are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reward_models.imagereward_checkpoint import (
    BERT_HUB_IDS,
    CHECKPOINT_FILE,
    IMAGEREWARD_CACHE,
    IMAGEREWARD_HUB_ID,
    MED_CONFIG_FILE,
    UNUSED_KEYS,
    VOCAB_FILE,
    ImageRewardConfig,
    MissingWeightsError,
    checkpoint_files,
    load_state_dict,
    make_config,
    make_tokenizer,
    map_checkpoint,
    map_key,
    read_med_config,
    resolve_checkpoint_dir,
    resolve_vocab_file,
    tokenize,
)
from reward_models.imagereward_model import ImageRewardModel, build_modules, load_imagereward
from reward_models.registry import register
from reward_models.weights import hub_url

if TYPE_CHECKING:  # pragma: no cover
    import torch

# ----------------------------------------------------------------------------------------------------------
# Preprocessing and scoring


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` after torchvision's ``Resize(size)``: short edge ``size``, long edge rounded down.

    (The same rule as Hugging Face's shortest-edge resize.)
    """
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``CenterCrop(size)`` offsets ``(top, left)``: ``int(round((edge - size) / 2))``.

    Python's ``round`` halves to even, so an odd margin can put the extra pixel on either side; the
    Hugging Face processors' floor division differs there by one pixel.
    """
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def preprocess(images: torch.Tensor, config: ImageRewardConfig) -> torch.Tensor:
    """The original's PIL + torchvision transform on tensors, on the tensors' device.

    ``Resize(S, BICUBIC)`` on the short edge, ``CenterCrop(S)``, ``ToTensor()``, CLIP ``Normalize`` with
    ``S = config.image_size``. With ``config.match_pil_uint8`` (default) the images are rounded to 8 bits
    (``round(255 x)``, as a PIL image made from them) and resized exactly as PIL does
    (:func:`reward_models.pil_resize.pil_resize`: fixed-point coefficients, rounding and clipping after each
    pass, bit for bit). Without it, torch's antialiased float bicubic (PIL's kernel, a = -0.5) runs on the
    float images, one axis at a time in Pillow's order, each pass clipped to [0, 1]: within about one grey level of PIL.

    Args:
      images: ``[B, H, W, 3]`` float in [0, 1].

    Returns:
      ``pixel_values: [B, 3, S, S]`` float32.
    """
    import torch
    import torch.nn.functional as F

    from reward_models.pil_resize import pil_resize, to_uint8, vertical_first

    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3]; got shape {tuple(images.shape)}")
    s = config.image_size
    h, w = int(images.shape[1]), int(images.shape[2])
    out_h, out_w = resized_size(h, w, s)
    if config.match_pil_uint8:
        x = pil_resize(to_uint8(images).permute(0, 3, 1, 2), (out_h, out_w), "bicubic")
        x = x.to(torch.float32) / 255.0  # ToTensor
    else:
        x = images.permute(0, 3, 1, 2).to(torch.float32)  # [B, 3, H, W]
        # PIL's two passes, each clipped, in the installed Pillow's order
        sizes = [(out_h, w), (out_h, out_w)] if vertical_first((h, w), (out_h, out_w)) else [(h, out_w), (out_h, out_w)]
        for size in sizes:
            if size != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    top, left = center_crop_offsets(out_h, out_w, s)
    x = x[:, :, top : top + s, left : left + s]
    mean = torch.tensor(config.pixel_mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(config.pixel_std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def score_pixels(
    model: ImageRewardModel, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """ImageReward scores ``[B]`` float32 from preprocessed inputs (the original's ``score``, batched).

    Args:
      pixel_values: ``[B, 3, S, S]`` from :func:`preprocess`.
      input_ids, attention_mask: ``[B, T]`` from :func:`tokenize`.

    The image tokens ``[B, 1 + (S/16)^2, vision_width]`` are the keys/values of every text layer's
    cross-attention; the text ``[CLS]`` feature goes through the head; the result is normalised with the
    original's mean/std. Batching changes nothing: each row is padded to the same length and masked.
    """
    import torch

    mods, cfg, dev = model.modules, model.config, model.device
    with torch.inference_mode():
        image_embeds = mods["vision"](pixel_values=pixel_values.to(dev, model.dtype)).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=dev)
        text = mods["text"](
            input_ids=input_ids.to(dev),
            attention_mask=attention_mask.to(dev),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            is_decoder=False,
            return_dict=True,
        )
        features = text.last_hidden_state[:, 0, :].float()  # [B, hidden]
        head = mods["head"](features)[:, 0]
        return (head - cfg.score_mean) / cfg.score_std


def score(model: ImageRewardModel, images: Any, prompts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """ImageReward of ``images: [B, H, W, 3]`` in [0, 1] (``jax.Array``, numpy or torch) for ``prompts``.

    JAX arrays reach torch through DLPack (no copy) and must live on the model's device (else
    ``DeviceMismatchError``); preprocessing runs there. Returns ``[B]`` float32 numpy.
    """
    import torch

    from reward_models.bridge import jax_to_torch

    prompts = list(prompts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    # Same device as the model or a clear DeviceMismatchError: the bridge never copies across devices.
    x = images if isinstance(images, torch.Tensor) else jax_to_torch(images, model.device)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3]; got shape {tuple(x.shape)}")
    if x.shape[0] != len(prompts):
        raise ValueError(f"{x.shape[0]} images but {len(prompts)} prompts: give one prompt per image")
    input_ids, attention_mask = tokenize(model.tokenizer, prompts, model.config.max_prompt_tokens)
    out = []
    for start in range(0, len(prompts), batch_size):
        sl = slice(start, start + batch_size)
        with torch.inference_mode():
            pixels = preprocess(x[sl], model.config)
        out.append(score_pixels(model, pixels, input_ids[sl], attention_mask[sl]).cpu())
    return torch.cat(out).numpy().astype(np.float32)


@register(
    "imagereward",
    description="ImageReward human-preference score (BLIP ViT-L + BERT cross-attention + MLP), the paper's",
    weights=(
        f"{CHECKPOINT_FILE} + {MED_CONFIG_FILE} from {hub_url(IMAGEREWARD_HUB_ID)} (path=DIR, default "
        f"{IMAGEREWARD_CACHE}) and bert-base-uncased vocab.txt (tokenizer_path=DIR, default: hub cache)"
    ),
)
def make_imagereward(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer_path: str | os.PathLike[str] | None = None,
    config: ImageRewardConfig | Mapping[str, Any] | None = None,
    device: Any = None,
    dtype: str = "float32",
    batch_size: int = 32,
) -> Any:
    """Builds ``reward_fn(images [B, H, W, 3] in [0, 1], prompts) -> [B] float32`` (weights loaded once).

    Options as :func:`load_imagereward`; ``batch_size`` bounds how many images go through the model at once.
    The loaded :class:`ImageRewardModel` is ``reward_fn.model``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    model = load_imagereward(path, tokenizer_path=tokenizer_path, config=config, device=device, dtype=dtype)

    def reward_fn(images: Any, prompts: Sequence[str]) -> np.ndarray:
        return score(model, images, prompts, batch_size=batch_size)

    reward_fn.model = model  # type: ignore[attr-defined]
    return reward_fn


__all__ = [
    "BERT_HUB_IDS",
    "VOCAB_FILE",
    "CHECKPOINT_FILE",
    "IMAGEREWARD_CACHE",
    "IMAGEREWARD_HUB_ID",
    "MED_CONFIG_FILE",
    "UNUSED_KEYS",
    "ImageRewardConfig",
    "ImageRewardModel",
    "MissingWeightsError",
    "build_modules",
    "center_crop_offsets",
    "checkpoint_files",
    "load_imagereward",
    "load_state_dict",
    "make_config",
    "make_imagereward",
    "make_tokenizer",
    "map_checkpoint",
    "map_key",
    "preprocess",
    "read_med_config",
    "resolve_checkpoint_dir",
    "resolve_vocab_file",
    "resized_size",
    "score",
    "score_pixels",
    "tokenize",
]
