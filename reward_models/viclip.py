"""ViCLIP text-video score (InternVid's ViCLIP-L/14), the paper's video reward (Sec. 5.5) and Tab. 5 metric.

``viclip(video, prompt) = scale * cos(E_vid(8 frames), E_txt(prompt))`` with L2-normalised embeddings
(``scale=1``: the cosine, as VBench's ``overall_consistency`` reports it and as Tab. 5's 0.21 / 0.28 read;
``scale=100``: the logits of the original's ``get_predict_label``).

Input: ``videos: [B, T, H, W, 3]`` float in [0, 1] (``jax.Array``, numpy or torch). Preprocessing follows
VBench's ``overall_consistency``, the public code that runs this model as a metric, on the videos' device:

1. 8 frames: the middle frame of each of 8 equal segments (``get_frame_indices(8, T, "middle")``; for
   T = 16 that is frames 0, 2, ..., 14; fewer than 8 frames repeat the last one) (:func:`frame_indices`);
2. 8-bit frames (``round(255 x)``, as a decoded video), torchvision's tensor ``Resize(224, BICUBIC,
   antialias=False)`` of the short edge (float bicubic, clamped, rounded to uint8), ``CenterCrop(224)``;
3. ``/255`` and CLIP's mean/std (``normalization="clip"``, VBench). InternVid's demo normalises with
   ImageNet's mean/std instead (``normalization="imagenet"``; it also resizes with OpenCV to 224 x 224
   without a crop, not reproduced). The FIND paper does not say; its numbers (cosines ~0.2-0.3) are on the
   scale of VBench's overall consistency, so the VBench recipe is the default.

The model (:mod:`reward_models.viclip_model`) runs in PyTorch; frames reach it through DLPack on their own
device (:mod:`reward_models.bridge`), and it must live there (``DeviceMismatchError`` otherwise).
Weights (never downloaded): ``ViClip-InternVid-10M-FLT.pth`` (1.71 GB, ``torch.load(f)["model"]``) from
``path`` (the file or its directory, or a hub id in the local cache), else VBench's cache
``~/.cache/vbench/ViCLIP/``, else the hub cache of ``OpenGVLab/ViCLIP``; the BPE vocabulary
``bpe_simple_vocab_16e6.txt.gz`` from ``tokenizer_path`` or an installed package that ships it
(:mod:`reward_models.viclip_tokenizer`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reward_models.registry import register
from reward_models.weights import MissingWeightsError, find_in_hub_cache, hub_url, weight_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

CHECKPOINT_FILE = "ViClip-InternVid-10M-FLT.pth"
VICLIP_HUB_ID = "OpenGVLab/ViCLIP"  # a hub repo that publishes the checkpoint
VBENCH_CACHE = "~/.cache/vbench/ViCLIP"  # where VBench keeps it
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclasses.dataclass(frozen=True)
class ViCLIPReward:
    """A loaded ViCLIP: the torch model on one device, its tokenizer and the preprocessing settings."""

    config: Any  # reward_models.viclip_model.ViCLIPConfig
    model: Any  # reward_models.viclip_model.ViCLIP (eval mode, no grad)
    tokenizer: Any  # reward_models.viclip_tokenizer.BPETokenizer
    device: Any  # torch.device of the model
    dtype: Any  # torch dtype of the model
    mean: tuple[float, float, float]  # pixel normalisation (CLIP's by default)
    std: tuple[float, float, float]
    checkpoint: Path | None  # the file the weights came from


def frame_indices(num_video_frames: int, num_frames: int = 8) -> list[int]:
    """VBench's ``get_frame_indices(num_frames, T, sample="middle")``: the middle of each of equal segments.

    The segment bounds are ``int(linspace(0, T, n + 1))``; segment ``[a, b)`` contributes ``(a + b - 1) // 2``;
    with fewer than ``num_frames`` frames every frame is taken once and the last repeats.
    """
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame; got {num_video_frames}")
    n = min(num_frames, num_video_frames)
    bounds = np.linspace(0, num_video_frames, n + 1).astype(int)
    idx = [int((a + b - 1) // 2) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return idx + [idx[-1]] * (num_frames - len(idx))


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the short edge becomes ``size``, the long one ``int(size * long / short)``."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def preprocess(
    videos: torch.Tensor, *, image_size: int, num_frames: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """VBench's ViCLIP input on the videos' device: ``[B, T, H, W, 3]`` in [0, 1] -> ``[B, 3, n, S, S]`` float32.

    Frames :func:`frame_indices`, 8-bit, torchvision's tensor bicubic resize without antialiasing (the
    float result clamped to 0..255 and rounded, as torchvision does for uint8), centre crop (offsets
    ``round((edge - S) / 2)``), ``/255``, ``(x - mean) / std``.
    """
    import torch
    import torch.nn.functional as F

    from reward_models.pil_resize import to_uint8

    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be [B, T, H, W, 3]; got shape {tuple(videos.shape)}")
    b, t, h, w, _ = videos.shape
    idx = torch.tensor(frame_indices(int(t), num_frames), device=videos.device)
    frames = to_uint8(videos.index_select(1, idx))  # [B, n, H, W, 3] uint8
    x = frames.reshape(b * num_frames, h, w, 3).permute(0, 3, 1, 2)  # [B n, 3, H, W]
    out_h, out_w = resized_size(int(h), int(w), image_size)
    if (out_h, out_w) != (h, w):
        y = F.interpolate(x.float(), size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=False)
        x = y.clamp(0.0, 255.0).round().to(torch.uint8)
    top, left = int(round((out_h - image_size) / 2.0)), int(round((out_w - image_size) / 2.0))
    x = x[:, :, top : top + image_size, left : left + image_size].float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.reshape(b, num_frames, 3, image_size, image_size).transpose(1, 2).contiguous()


def resolve_checkpoint(path: str | os.PathLike[str] | None = None) -> Path:
    """``ViClip-InternVid-10M-FLT.pth``: ``path`` (the file, its directory or a hub id in the local cache),
    else VBench's cache, else the local hub cache of ``OpenGVLab/ViCLIP``. Nothing is downloaded.

    Raises:
      MissingWeightsError: saying where it looked and where the file comes from.
    """
    files = (weight_file(CHECKPOINT_FILE, source=hub_url(VICLIP_HUB_ID)),)
    tried: list[str] = []
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        if (p / CHECKPOINT_FILE).is_file():
            return p / CHECKPOINT_FILE
        tried.append(str(p / CHECKPOINT_FILE) if p.is_dir() else str(p))
        hub_ids = [os.fspath(path)] if not p.exists() and "/" in os.fspath(path) else []
    else:
        default = Path(VBENCH_CACHE).expanduser() / CHECKPOINT_FILE
        if default.is_file():
            return default
        tried.append(str(default))
        hub_ids = [VICLIP_HUB_ID]
    for hub_id in hub_ids:
        snap = find_in_hub_cache(hub_id, files)
        if snap is not None:
            return snap / CHECKPOINT_FILE
        tried.append(f"hub cache of {hub_id}")
    raise MissingWeightsError(
        f"viclip: ViCLIP checkpoint {CHECKPOINT_FILE} (1.71 GB) not found (looked at: {'; '.join(tried)}). "
        f"It comes from {hub_url(VICLIP_HUB_ID)}; download it yourself and pass path=FILE or DIR (or put it "
        f"in {VBENCH_CACHE}). Nothing is downloaded."
    )


def load_viclip(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer_path: str | os.PathLike[str] | None = None,
    config: Any = None,
    device: Any = None,
    dtype: str = "float32",
    normalization: str = "clip",
    allow_pickle: bool = False,
) -> ViCLIPReward:
    """Loads ViCLIP from local files, strictly (every entry mapped, shapes checked). Options as
    :func:`make_viclip`."""
    import torch

    from reward_models.bridge import torch_device
    from reward_models.viclip_model import build_viclip, make_config, read_checkpoint
    from reward_models.viclip_tokenizer import BPETokenizer, find_bpe_file

    cfg = make_config(config)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16'; got {dtype!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}; got {normalization!r}")
    file = resolve_checkpoint(path)
    tokenizer = BPETokenizer(find_bpe_file(tokenizer_path))
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"the BPE vocabulary {tokenizer.file} gives {tokenizer.vocab_size} tokens but the model has "
            f"vocab_size {cfg.vocab_size}: give tokenizer_path=bpe_simple_vocab_16e6.txt.gz (49408 tokens) for "
            "the released checkpoint"
        )
    dev = torch_device(device)
    model = build_viclip(cfg, read_checkpoint(file, allow_pickle=allow_pickle), device=dev, dtype=torch_dtype)
    mean, std = NORMALIZATIONS[normalization]
    return ViCLIPReward(cfg, model, tokenizer, dev, torch_dtype, mean, std, file)


def embed_videos(r: ViCLIPReward, videos: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, W, 3]`` in [0, 1] -> L2-normalised video embeddings ``[B, embed_dim]`` float32."""
    import torch

    with torch.inference_mode():
        x = preprocess(videos, image_size=r.config.image_size, num_frames=r.config.num_frames, mean=r.mean, std=r.std)
        feat = r.model.vision_encoder(x.to(r.dtype)).float()
        return feat / feat.norm(dim=-1, keepdim=True)


def embed_prompts(r: ViCLIPReward, prompts: Sequence[str]) -> torch.Tensor:
    """Prompts -> L2-normalised text embeddings ``[B, embed_dim]`` float32."""
    import torch

    ids = torch.from_numpy(r.tokenizer(list(prompts), r.config.context_length)).to(r.device)
    with torch.inference_mode():
        feat = r.model.text_encoder(ids).float()
        return feat / feat.norm(dim=-1, keepdim=True)


def score(
    r: ViCLIPReward, videos: Any, prompts: Sequence[str], *, batch_size: int = 8, scale: float = 1.0
) -> np.ndarray:
    """``scale * cos`` of each video with its prompt: ``videos [B, T, H, W, 3]`` in [0, 1] -> ``[B]`` float32.

    A ``jax.Array`` reaches torch through DLPack (no copy) and must live on the model's device.
    """
    import torch

    from reward_models.bridge import jax_to_torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    prompts = list(prompts)
    x = videos if isinstance(videos, torch.Tensor) else jax_to_torch(videos, r.device)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"videos must be [B, T, H, W, 3]; got shape {tuple(x.shape)}")
    if x.shape[0] != len(prompts):
        raise ValueError(f"{x.shape[0]} videos but {len(prompts)} prompts: give one prompt per video")
    txt = embed_prompts(r, prompts)
    out = []
    for start in range(0, len(prompts), batch_size):
        vid = embed_videos(r, x[start : start + batch_size])
        out.append((vid * txt[start : start + batch_size]).sum(-1).cpu())
    return (float(scale) * torch.cat(out)).numpy().astype(np.float32)


@register(
    "viclip",
    description="ViCLIP-L/14 text-video cosine (InternVid; 8 frames, VBench preprocessing), the paper's video reward",
    weights=(
        f"{CHECKPOINT_FILE} from {hub_url(VICLIP_HUB_ID)} (path=FILE|DIR, default {VBENCH_CACHE}) and "
        "bpe_simple_vocab_16e6.txt.gz (tokenizer_path=FILE, default: an installed open_clip/clip package)"
    ),
    video=True,
)
def make_viclip(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer_path: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | Any = None,
    device: Any = None,
    dtype: str = "float32",
    batch_size: int = 8,
    scale: float = 1.0,
    normalization: str = "clip",
    allow_pickle: bool = False,
) -> Any:
    """Builds ``reward_fn(videos [B, T, H, W, 3] in [0, 1], prompts) -> [B] float32`` (weights loaded once).

    Args:
      path: the checkpoint file, its directory, or a hub id in the local cache; default: VBench's cache,
        then the hub cache of ``OpenGVLab/ViCLIP``.
      tokenizer_path: ``bpe_simple_vocab_16e6.txt.gz`` or its directory; default: an installed package's.
      config: :class:`reward_models.viclip_model.ViCLIPConfig` or a dict of overrides (tests build tiny
        models: widths, layers, heads, patch, image size, frames, context length, vocabulary size).
      device: torch device of the model (default: JAX's default device, so DLPack shares the frames).
      dtype: ``"float32"`` (the original's), ``"float16"`` or ``"bfloat16"``; the cosine is float32.
      batch_size: videos per forward pass.
      scale: multiplies the cosine (1: VBench's score; 100: the original's logit scale).
      normalization: ``"clip"`` (VBench, default) or ``"imagenet"`` (InternVid's demo) mean/std.
      allow_pickle: read a checkpoint that holds non-tensor objects (only for a trusted file).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    r = load_viclip(
        path,
        tokenizer_path=tokenizer_path,
        config=config,
        device=device,
        dtype=dtype,
        normalization=normalization,
        allow_pickle=allow_pickle,
    )

    def reward_fn(videos: Any, prompts: Sequence[str]) -> np.ndarray:
        return score(r, videos, prompts, batch_size=batch_size, scale=scale)

    reward_fn.viclip = r  # type: ignore[attr-defined]
    return reward_fn


__all__ = [
    "CHECKPOINT_FILE",
    "VICLIP_HUB_ID",
    "ViCLIPReward",
    "embed_prompts",
    "embed_videos",
    "frame_indices",
    "load_viclip",
    "make_viclip",
    "preprocess",
    "resolve_checkpoint",
    "score",
]
