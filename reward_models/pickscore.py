"""PickScore (Kirstain et al., 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic human preferences.

``pickscore(image, prompt) = exp(logit_scale) * cos(E_img(image), E_txt(prompt))``, the logit the original
code feeds to its softmax over images (``model.logit_scale.exp() * text_embs @ image_embs.T``); with the
released ``logit_scale`` (exp = 100) scores land roughly in 15..25. Each image is scored against its own
prompt.

Runs in PyTorch (transformers ``CLIPModel``) on the images' device: images come in through DLPack without a
copy, the processor's conventions (bicubic shortest-edge resize to 224 on 8-bit images, PIL's resample bit
for bit; centre crop, CLIP mean/std; prompts padded/truncated to 77 tokens) are reproduced on tensors, and
the scores go back through DLPack.

Weights (never downloaded): the model ``yuvalkirstain/PickScore_v1`` and the processor (tokenizer +
``preprocessor_config.json``) ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, from directories or the local hub
cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward_models.bridge import (
    clip_preprocess,
    jax_to_torch,
    preprocess_with,
    read_preprocess_config,
    torch_device,
    torch_to_jax,
)
from reward_models.clip_score import PromptTokenizer, load_clip_tokenizer
from reward_models.registry import RewardFn, register
from reward_models.weights import clip_tokenizer_files, load_transformers_model, resolve_weights, transformers_files

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@register(
    "pickscore",
    description="PickScore: exp(logit_scale) x cosine of CLIP-H image/text embeddings (human preference)",
    weights=f"{DEFAULT_MODEL} + processor {DEFAULT_PROCESSOR} (path=DIR, processor_path=DIR or hub cache)",
)
def make_pickscore(
    path: str | None = None,
    *,
    processor_path: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
) -> RewardFn:
    """Builds the PickScore reward.

    Args:
      path: model directory (``config.json`` + weights) or hub id in the local cache; default
        ``yuvalkirstain/PickScore_v1``.
      processor_path: directory or hub id with the tokenizer (``vocab.json``, ``merges.txt``; optional
        ``preprocessor_config.json``); default: the model directory if it holds a tokenizer, else
        ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` from the local hub cache.
      device: torch device of the model; must be where the images live (default: JAX's default device).
      dtype: compute dtype (``float32``, ``float16`` or ``bfloat16``); the final cosine is float32.
    """
    import torch
    from transformers import CLIPModel

    model_dir = resolve_weights(
        "pickscore: model", path=path, files=transformers_files(DEFAULT_MODEL), hub_id=DEFAULT_MODEL
    )
    tok_files = clip_tokenizer_files(DEFAULT_PROCESSOR)
    if processor_path is None and all((Path(model_dir) / wf.names[0]).is_file() for wf in tok_files):
        processor_path = str(model_dir)
    proc_dir = resolve_weights(
        "pickscore: processor",
        path=processor_path,
        files=tok_files,
        hub_id=DEFAULT_PROCESSOR,
        option="processor_path",
    )
    dev = torch_device(device)
    model = load_transformers_model(CLIPModel, model_dir, what="pickscore", device=str(dev), dtype=dtype)
    cfg = read_preprocess_config(proc_dir, clip_preprocess(model.config.vision_config.image_size))
    tokenize = PromptTokenizer(
        load_clip_tokenizer(proc_dir), model.config.text_config.max_position_embeddings, "pickscore"
    )
    model_dtype = model.dtype

    @torch.inference_mode()
    def reward_fn(images: Any, prompts: Sequence[str]) -> Any:
        input_ids, mask = tokenize(prompts)
        pixels = preprocess_with(jax_to_torch(images, dev), cfg, model_dtype)  # [B, 3, S, S]
        img = model.get_image_features(pixel_values=pixels).float()  # [B, D]
        txt = model.get_text_features(
            input_ids=torch.from_numpy(input_ids).long().to(dev), attention_mask=torch.from_numpy(mask).to(dev)
        ).float()  # [B, D]
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return torch_to_jax(model.logit_scale.exp().float() * (img * txt).sum(-1))  # [B]

    reward_fn.model = model  # type: ignore[attr-defined]
    reward_fn.preprocess = cfg  # type: ignore[attr-defined]
    return reward_fn
