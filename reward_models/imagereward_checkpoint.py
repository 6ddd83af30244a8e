"""ImageReward's files: config, locating the weights, ``med_config.json``, BLIP's tokenizer, the checkpoint.

Everything :mod:`reward_models.imagereward` needs before building the network: the :class:`ImageRewardConfig`
(what ``ImageReward.pt`` does not say), where the files are (local directories or the local hub cache, never
a download), BLIP's tokenizer, reading ``ImageReward.pt`` and renaming its entries to transformers' BLIP
modules (:func:`map_checkpoint`), refusing anything that does not fit with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reward_models.weights import (
    MissingWeightsError,
    find_in_hub_cache,
    hub_url,
    missing_files,
    resolve_weights,
    weight_file,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGEREWARD_HUB_ID = "THUDM/ImageReward"  # where ImageReward.pt and med_config.json are published
IMAGEREWARD_CACHE = "~/.cache/ImageReward"  # the original package's download_root (files lie directly in it)
BERT_HUB_IDS = ("bert-base-uncased", "google-bert/bert-base-uncased")  # BLIP's tokenizer vocabulary
CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
VOCAB_FILE = "vocab.txt"

# Checkpoint entries the score does not use: BLIP's image-text contrastive projections (kept by the
# original's BLIP_Pretrain, never called by ImageReward.score) and BERT's position_ids buffer (checked to
# be 0..n-1, the only value the original ever uses, then dropped: transformers rebuilds it).
UNUSED_KEYS = (
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
    "blip.text_encoder.embeddings.position_ids",
)

# The original MLP is nn.Sequential(Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear): its
# Linear layers sit at these indices of ``mlp.layers`` (no activations between them).
_MLP_LINEAR_INDICES = (0, 2, 4, 6, 7)

# BLIP's med_config.json fields the text encoder needs.
_MED_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "layer_norm_eps",
    "hidden_act",
)


@dataclasses.dataclass(frozen=True)
class ImageRewardConfig:
    """What ``ImageReward.pt`` does not say about the model (the text encoder comes from med_config.json).

    The defaults are the released model: BLIP ViT-L/16 at 224 px (the original hard-codes ``vit='large'``),
    prompts of at most 35 tokens, the head's normalisation constants and CLIP's pixel statistics.
    """

    image_size: int = 224  # side of the square ViT input; images are resized (short edge) + centre-cropped to it
    patch_size: int = 16  # ViT patch side in pixels
    vision_width: int = 1024  # ViT hidden size (ViT-L); also the width the text cross-attention reads
    vision_layers: int = 24  # number of ViT blocks
    vision_heads: int = 16  # ViT attention heads
    vision_mlp_ratio: float = 4.0  # ViT MLP hidden size / vision_width
    vision_layer_norm_eps: float = 1e-6  # timm ViT LayerNorm epsilon (BLIP uses 1e-6)
    # MLP head widths between the text [CLS] feature and the score (the original's MLP; no activations)
    head_hidden: tuple[int, ...] = (1024, 128, 64, 16)
    max_prompt_tokens: int = 35  # prompts are padded/truncated to this many tokens ([CLS] and [SEP] included)
    score_mean: float = 0.16717362830052426  # subtracted from the head output (the original's self.mean)
    score_std: float = 1.0333394966054072  # the head output is divided by it after (the original's self.std)
    pixel_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP per-channel mean
    pixel_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)  # CLIP per-channel std
    match_pil_uint8: bool = True  # 8-bit images resized bit for bit as PIL does (not differentiable)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_heads:
            raise ValueError(f"vision_width {self.vision_width} is not a multiple of vision_heads {self.vision_heads}")
        if self.max_prompt_tokens < 2:
            raise ValueError(f"max_prompt_tokens must be >= 2 ([CLS] and [SEP]); got {self.max_prompt_tokens}")
        if self.score_std == 0:
            raise ValueError("score_std must be non-zero")


def make_config(config: ImageRewardConfig | Mapping[str, Any] | None) -> ImageRewardConfig:
    """An :class:`ImageRewardConfig` from a config, a dict of overrides of the defaults, or ``None``."""
    if config is None:
        return ImageRewardConfig()
    if isinstance(config, ImageRewardConfig):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be an ImageRewardConfig or a dict; got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(ImageRewardConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown ImageRewardConfig field(s) {unknown}; valid fields: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return ImageRewardConfig(**values)


# ----------------------------------------------------------------------------------------------------------
# Locating files


def checkpoint_files() -> tuple[Any, ...]:
    """The expected files of an ImageReward weights directory (for the missing-weights error)."""
    src = hub_url(IMAGEREWARD_HUB_ID)
    return (weight_file(CHECKPOINT_FILE, source=src), weight_file(MED_CONFIG_FILE, source=src))


def resolve_checkpoint_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding ``ImageReward.pt`` and ``med_config.json``.

    ``path`` is a directory, or a hub id looked up in the local hub cache only. ``None`` tries where the
    original ``image-reward`` package keeps the files (``~/.cache/ImageReward``), then the local Hugging Face
    cache of ``THUDM/ImageReward``. Nothing is downloaded.

    Raises:
      MissingWeightsError: naming each expected file, whether it was found, and where it comes from.
    """
    files = checkpoint_files()
    what = "imagereward: ImageReward checkpoint"
    if path is None:
        default = Path(IMAGEREWARD_CACHE).expanduser()
        if default.is_dir() and not missing_files(default, files):
            return default
        snap = find_in_hub_cache(IMAGEREWARD_HUB_ID, files)
        if snap is not None:
            return snap
        # Neither: let the shared helper raise its error about the original's default directory.
        return resolve_weights(what, path=default, files=files, hub_id=IMAGEREWARD_HUB_ID, option="path")
    return resolve_weights(what, path=path, files=files, hub_id=IMAGEREWARD_HUB_ID, option="path")


def resolve_vocab_file(tokenizer_path: str | os.PathLike[str] | None = None) -> Path:
    """BLIP's tokenizer vocabulary: ``bert-base-uncased``'s ``vocab.txt``.

    ``tokenizer_path`` is a directory holding ``vocab.txt``, the file itself, or a hub id in the local hub
    cache; ``None`` looks for ``bert-base-uncased`` (either hub id) in the local Hugging Face cache. The
    ImageReward checkpoint does not contain the tokenizer (the original downloads it at load time).
    """
    files = (weight_file(VOCAB_FILE, source=hub_url(BERT_HUB_IDS[1])),)
    what = "imagereward: BLIP text tokenizer (bert-base-uncased vocab.txt)"
    if tokenizer_path is not None:
        p = Path(tokenizer_path).expanduser()
        if p.is_file():
            return p
        found = resolve_weights(what, path=tokenizer_path, files=files, hub_id=BERT_HUB_IDS[0], option="tokenizer_path")
        return found / VOCAB_FILE
    for hub_id in BERT_HUB_IDS:
        snap = find_in_hub_cache(hub_id, files)
        if snap is not None:
            return snap / VOCAB_FILE
    return resolve_weights(what, path=None, files=files, hub_id=BERT_HUB_IDS[0], option="tokenizer_path") / VOCAB_FILE


# ----------------------------------------------------------------------------------------------------------
# Config, tokenizer, checkpoint


def read_med_config(file: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and checks BLIP's ``med_config.json`` (BERT-base with cross-attention in the released model)."""
    try:
        med = json.loads(Path(file).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a readable JSON med_config ({err})") from err
    if not isinstance(med, dict):
        raise ValueError(f"{file}: med_config must be a JSON object")
    missing = [k for k in _MED_REQUIRED if k not in med]
    if missing:
        raise ValueError(f"{file}: med_config lacks {missing} (expected BLIP's BERT config, e.g. hidden_size 768)")
    if not med.get("add_cross_attention", False):
        raise ValueError(
            f"{file}: add_cross_attention is not true; ImageReward's text encoder cross-attends to the image "
            "(the original would fail on it too)"
        )
    if med["hidden_size"] % med["num_attention_heads"]:
        raise ValueError(f"{file}: hidden_size is not a multiple of num_attention_heads")
    return med


def make_tokenizer(vocab_file: str | os.PathLike[str]) -> Any:
    """BLIP's tokenizer: uncased ``BertTokenizer``, ``[DEC]`` as bos token, ``[ENC]`` as extra special token.

    The same steps as BLIP's ``init_tokenizer``, on a local ``vocab.txt`` instead of a download.
    """
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab_file=os.fspath(vocab_file), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def tokenize(tokenizer: Any, prompts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> ``(input_ids, attention_mask)``, both ``[B, max_tokens]`` int64, as the original tokenizes.

    ``[CLS] prompt [SEP]`` padded to ``max_tokens`` (35); a longer prompt is truncated to ``max_tokens``
    tokens (its last kept token becomes ``[SEP]``) with a warning naming it (DESIGN.md §8).
    """
    prompts = list(prompts)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True, truncation=False)["input_ids"]]
    for prompt, n in zip(prompts, lengths, strict=True):
        if n > max_tokens:
            shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            warnings.warn(
                f"imagereward: prompt {shown!r} has {n} tokens; truncated to {max_tokens} as the original does",
                stacklevel=3,
            )
    enc = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def load_state_dict(file: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Reads ``ImageReward.pt`` (a flat state dict of tensors), refusing anything else with the reason."""
    import torch

    try:
        sd = torch.load(os.fspath(file), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt/incompatible file
        raise ValueError(f"{file}: cannot read the ImageReward checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"{file}: expected a non-empty state dict (name -> tensor); got {type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{file}: not a flat state dict of tensors (e.g. entry {bad[0]!r}); ImageReward.pt holds "
            "ImageReward.state_dict() directly"
        )
    return dict(sd)


_VISION_RULES = (
    (re.compile(r"^cls_token$"), "embeddings.class_embedding"),
    (re.compile(r"^pos_embed$"), "embeddings.position_embedding"),
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"embeddings.patch_embedding.\1"),
    (re.compile(r"^blocks\.(\d+)\.norm1\.(weight|bias)$"), r"encoder.layers.\1.layer_norm1.\2"),
    (re.compile(r"^blocks\.(\d+)\.norm2\.(weight|bias)$"), r"encoder.layers.\1.layer_norm2.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"), r"encoder.layers.\1.self_attn.qkv.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"encoder.layers.\1.self_attn.projection.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$"), r"encoder.layers.\1.mlp.\2.\3"),
    (re.compile(r"^norm\.(weight|bias)$"), r"post_layernorm.\1"),
)
_HEAD_RULE = re.compile(r"^mlp\.layers\.(\d+)\.(weight|bias)$")


def map_key(key: str) -> str | None:
    """The name of checkpoint entry ``key`` in :func:`build_modules`' ModuleDict, or ``None`` if unknown.

    ``blip.visual_encoder.*`` (timm ViT names) -> ``vision.*`` (``BlipVisionModel``),
    ``blip.text_encoder.*`` -> ``text.*`` (``BlipTextModel`` uses BLIP's own BERT names),
    ``mlp.layers.{0,2,4,6,7}`` -> ``head.{0..4}``.
    """
    if key.startswith("blip.visual_encoder."):
        rest = key[len("blip.visual_encoder.") :]
        for pattern, repl in _VISION_RULES:
            if pattern.match(rest):
                return "vision." + pattern.sub(repl, rest)
        return None
    if key.startswith("blip.text_encoder."):
        rest = key[len("blip.text_encoder.") :]
        return None if rest.startswith("pooler.") else "text." + rest
    m = _HEAD_RULE.match(key)
    if m and int(m.group(1)) in _MLP_LINEAR_INDICES:
        return f"head.{_MLP_LINEAR_INDICES.index(int(m.group(1)))}.{m.group(2)}"
    return None


def map_checkpoint(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Renames an ``ImageReward.pt`` state dict to the modules' names, accounting for every entry.

    Args:
      state_dict: the checkpoint (the original's ``ImageReward.state_dict()`` names).
      expected: the modules' parameter names -> shapes (``{k: tuple(v.shape)}`` of their state dict).

    Returns:
      ``(mapped, unused)``: ``mapped`` has exactly the keys of ``expected``; ``unused`` lists the checkpoint
      entries in :data:`UNUSED_KEYS` that were present (and checked) but are not needed for the score.

    Raises:
      ValueError: an unexpected entry, a missing weight, a shape mismatch, or a position_ids buffer that is
        not ``0..n-1``; the message names the entries.
    """
    import torch

    mapped: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key in UNUSED_KEYS:
            if key.endswith("position_ids"):
                ids = value.reshape(-1)
                if not torch.equal(ids.long(), torch.arange(ids.numel())):
                    raise ValueError(f"checkpoint entry {key} is not 0..{ids.numel() - 1}; refusing to ignore it")
            unused.append(key)
            continue
        name = map_key(key)
        if name is None or name not in expected:
            unexpected.append(key)
            continue
        mapped[name] = value
    missing = sorted(set(expected) - set(mapped))
    problems = []
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected entr{'y' if len(unexpected) == 1 else 'ies'}: {_few(unexpected)}"
        )
    if missing:
        problems.append(f"{len(missing)} missing weight(s): {_few(missing)}")
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in mapped.items()
        if tuple(v.shape) != tuple(expected[k])
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
    if problems:
        raise ValueError(
            "the ImageReward checkpoint does not match the model ("
            + "; ".join(problems)
            + "). Check that config matches the checkpoint (the defaults are the released ViT-L/16, 224 px) "
            "and that med_config.json is the one released with it."
        )
    return mapped, tuple(unused)


def _few(items: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


__all__ = [
    "BERT_HUB_IDS",
    "CHECKPOINT_FILE",
    "IMAGEREWARD_CACHE",
    "IMAGEREWARD_HUB_ID",
    "MED_CONFIG_FILE",
    "UNUSED_KEYS",
    "VOCAB_FILE",
    "ImageRewardConfig",
    "MissingWeightsError",
    "checkpoint_files",
    "load_state_dict",
    "make_config",
    "make_tokenizer",
    "map_checkpoint",
    "map_key",
    "read_med_config",
    "resolve_checkpoint_dir",
    "resolve_vocab_file",
    "tokenize",
]
