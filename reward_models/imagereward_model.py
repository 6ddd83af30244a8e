"""The ImageReward network on transformers' BLIP classes: building it and loading ``ImageReward.pt`` into it.

:func:`build_modules` makes ``BlipVisionModel`` (the original's timm ViT-L/16) + ``BlipTextModel`` (BLIP's
``med.py`` BERT with cross-attention) + the linear MLP head; :func:`load_imagereward` fills them from the
checkpoint strictly (:func:`reward_models.imagereward_checkpoint.map_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reward_models.imagereward_checkpoint import (
    CHECKPOINT_FILE,
    MED_CONFIG_FILE,
    ImageRewardConfig,
    load_state_dict,
    make_config,
    make_tokenizer,
    map_checkpoint,
    read_med_config,
    resolve_checkpoint_dir,
    resolve_vocab_file,
)


@dataclasses.dataclass(frozen=True)
class ImageRewardModel:
    """A loaded ImageReward: torch modules on one device, the tokenizer and what loading found."""

    config: ImageRewardConfig  # vision/head/preprocessing settings
    med_config: dict[str, Any]  # the checkpoint's med_config.json (text encoder)
    modules: Any  # torch.nn.ModuleDict: "vision" (BlipVisionModel), "text" (BlipTextModel), "head" (Sequential)
    tokenizer: Any  # transformers.BertTokenizer with [DEC] (bos) and [ENC] added, as BLIP's init_tokenizer
    device: Any  # torch.device of the modules
    dtype: Any  # torch dtype of the encoders (the head always runs in float32, as the original's .float())
    unused_keys: tuple[str, ...]  # checkpoint entries deliberately not loaded (subset of UNUSED_KEYS)
    weights_dir: Path | None  # where ImageReward.pt and med_config.json were read (None: given in memory)


# ----------------------------------------------------------------------------------------------------------
# Modules


def build_modules(config: ImageRewardConfig, med: Mapping[str, Any], *, meta: bool = False) -> Any:
    """The ImageReward network as a ``torch.nn.ModuleDict`` (eval mode): ``vision``, ``text``, ``head``.

    ``vision`` is a ``BlipVisionModel`` (the timm ViT of the original: exact GELU, LayerNorm eps 1e-6,
    qkv bias), ``text`` a ``BlipTextModel`` without pooler whose layers cross-attend to ``vision_width``
    features (BLIP's ``med.py`` BertModel in 'multimodal' mode), ``head`` the linear MLP. ``meta=True``
    allocates no memory (the weights are assigned by :func:`load_imagereward`).
    """
    import torch
    from transformers import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vision_cfg = BlipVisionConfig(
        hidden_size=config.vision_width,
        intermediate_size=int(config.vision_width * config.vision_mlp_ratio),
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_act="gelu",
        layer_norm_eps=config.vision_layer_norm_eps,
        attention_dropout=0.0,
    )
    text_cfg = BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=config.vision_width,  # the original overwrites encoder_width with the ViT width
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med["hidden_act"],
        layer_norm_eps=med["layer_norm_eps"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=med.get("pad_token_id", 0),
        is_decoder=True,  # builds the cross-attention blocks; forward passes is_decoder=False (bidirectional)
    )
    text_cfg.position_embedding_type = med.get("position_embedding_type", "absolute")
    widths = (med["hidden_size"], *config.head_hidden, 1)
    with torch.device("meta" if meta else "cpu"):
        modules = torch.nn.ModuleDict(
            {
                "vision": BlipVisionModel(vision_cfg),
                "text": BlipTextModel(text_cfg, add_pooling_layer=False),
                "head": torch.nn.Sequential(
                    *(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
                ),
            }
        )
    return modules.eval()


def load_imagereward(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer_path: str | os.PathLike[str] | None = None,
    config: ImageRewardConfig | Mapping[str, Any] | None = None,
    device: Any = None,
    dtype: str = "float32",
) -> ImageRewardModel:
    """Loads ImageReward from local files (never downloads).

    Args:
      path: directory with ``ImageReward.pt`` + ``med_config.json`` (or a hub id in the local cache);
        ``None``: ``~/.cache/ImageReward`` (the original package's), then the hub cache of THUDM/ImageReward.
      tokenizer_path: directory with (or path of) ``bert-base-uncased``'s ``vocab.txt``; ``None``: the hub
        cache of ``bert-base-uncased``.
      config: :class:`ImageRewardConfig` or a dict of overrides (tests use a tiny one); default: released.
      device: torch device of the modules; ``None``: where JAX computes (``cuda:N`` or ``cpu``), so the
        DLPack bridge stays copy-free.
      dtype: ``"float32"`` (the original's), ``"float16"`` or ``"bfloat16"`` for the two encoders.

    Raises:
      MissingWeightsError: a file is missing (the message names each file and where it comes from).
      ValueError: a corrupt or mismatched checkpoint / med_config / vocabulary (the message says why).
    """
    import torch

    from reward_models.bridge import default_torch_device

    cfg = make_config(config)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16'; got {dtype!r}")
    weights_dir = resolve_checkpoint_dir(path)
    vocab = resolve_vocab_file(tokenizer_path)
    med = read_med_config(weights_dir / MED_CONFIG_FILE)
    if cfg.max_prompt_tokens > med["max_position_embeddings"]:
        raise ValueError(
            f"max_prompt_tokens {cfg.max_prompt_tokens} exceeds med_config max_position_embeddings "
            f"{med['max_position_embeddings']}"
        )
    tokenizer = make_tokenizer(vocab)
    if len(tokenizer) != med["vocab_size"]:
        raise ValueError(
            f"the tokenizer from {vocab} has {len(tokenizer)} tokens ([DEC] and [ENC] included) but "
            f"med_config.json says vocab_size {med['vocab_size']}: tokenizer_path must hold "
            "bert-base-uncased's vocab.txt (30522 entries) for the released checkpoint"
        )
    state = load_state_dict(weights_dir / CHECKPOINT_FILE)
    modules = build_modules(cfg, med, meta=True)
    expected = {k: tuple(v.shape) for k, v in modules.state_dict().items()}
    mapped, unused = map_checkpoint(state, expected)
    modules.load_state_dict({k: v.to(torch.float32) for k, v in mapped.items()}, strict=True, assign=True)
    # The one buffer outside the state dict (non-persistent): BERT's position ids.
    emb = modules["text"].embeddings
    emb.position_ids = torch.arange(med["max_position_embeddings"]).expand((1, -1))
    leftover = [n for n, t in (*modules.named_parameters(), *modules.named_buffers()) if t.is_meta]
    if leftover:  # pragma: no cover - would be a transformers change adding state outside the state dict
        raise RuntimeError(f"imagereward: tensors left unset after loading: {leftover}")
    dev = torch.device(default_torch_device() if device is None else device)
    modules["vision"].to(device=dev, dtype=torch_dtype)
    modules["text"].to(device=dev, dtype=torch_dtype)
    modules["head"].to(device=dev, dtype=torch.float32)
    modules.eval().requires_grad_(False)
    return ImageRewardModel(
        config=cfg,
        med_config=dict(med),
        modules=modules,
        tokenizer=tokenizer,
        device=dev,
        dtype=torch_dtype,
        unused_keys=unused,
        weights_dir=weights_dir,
    )


__all__ = ["ImageRewardModel", "build_modules", "load_imagereward"]
