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
short edge to 224 (PIL's separable antialiased filter, rounding to 8 bits between and after its two
passes), torchvision's centre crop, then CLIP mean/std. :func:`preprocess` reproduces that on tensors;
with ``match_pil_uint8=True`` (default) it also reproduces the 8-bit rounding: over 99% of values equal
PIL's, the rest differ by one grey level (two at most, seen when upscaling; PIL computes in fixed point).
Images already 224x224 (or ``config.image_size``) need no resize and match to float rounding.

``torch`` and ``transformers`` are imported inside the functions, so importing this module is cheap.
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

import numpy as np

from reward_models.registry import register
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
    match_pil_uint8: bool = True  # round to 8-bit levels like the PIL images the original scores (not differentiable)

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


def _levels(x: torch.Tensor) -> torch.Tensor:
    """Rounds ``[0, 1]`` floats to the 256 levels of an 8-bit image (clipping first, as PIL does)."""
    import torch

    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def preprocess(images: torch.Tensor, config: ImageRewardConfig) -> torch.Tensor:
    """The original's PIL + torchvision transform on tensors, on the tensors' device.

    ``Resize(S, BICUBIC)`` on the short edge, ``CenterCrop(S)``, ``ToTensor()``, CLIP ``Normalize`` with
    ``S = config.image_size``. The resize is PIL's: separable (width pass, then height pass) antialiased
    bicubic (a = -0.5, which torch's ``antialias=True`` kernel uses), clipped to [0, 1] after each pass. With
    ``config.match_pil_uint8`` the input and each pass are rounded to 8-bit levels, as the PIL image is.

    Args:
      images: ``[B, H, W, 3]`` float in [0, 1].

    Returns:
      ``pixel_values: [B, 3, S, S]`` float32.
    """
    import torch
    import torch.nn.functional as F

    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3]; got shape {tuple(images.shape)}")
    s = config.image_size
    quant = _levels if config.match_pil_uint8 else (lambda t: t.clamp(0.0, 1.0))
    x = images.permute(0, 3, 1, 2).to(torch.float32)  # [B, 3, H, W]
    if config.match_pil_uint8:
        x = _levels(x)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    out_h, out_w = resized_size(h, w, s)
    if out_w != w:
        x = quant(F.interpolate(x, size=(h, out_w), mode="bicubic", antialias=True, align_corners=False))
    if out_h != h:
        x = quant(F.interpolate(x, size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False))
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
    "load_imagereward",
    "load_state_dict",
    "make_config",
    "make_imagereward",
    "make_tokenizer",
    "map_checkpoint",
    "map_key",
    "preprocess",
    "read_med_config",
    "resized_size",
    "score",
    "score_pixels",
    "tokenize",
]
