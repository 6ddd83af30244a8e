"""ViCLIP-L/14 (InternVid; Wang et al., 2023) in PyTorch: the network, its config and its strict loader.

The architecture, as in the original (VBench's ``third_party/ViCLIP``), with the same parameter names so the
released ``ViClip-InternVid-10M-FLT.pth`` (``torch.load(f)["model"]``, 427.6 M parameters) loads as it is:

* ``vision_encoder``: ``conv1`` = ``Conv3d(3, W, (1, P, P))`` patchifies each frame; every frame's patches
  get the spatial ``positional_embedding[1:]`` (``[(S/P)^2 + 1, W]``) and their frame's
  ``temporal_positional_embedding`` (``[1, T, W]``); one CLS token (``class_embedding + positional_embedding[0]``)
  goes in front of all ``T (S/P)^2`` patch tokens (joint space-time attention); ``ln_pre``, pre-LN blocks
  (``nn.MultiheadAttention``, MLP ``c_fc``/``c_proj`` with QuickGELU), ``ln_post``, ``CLS @ proj``. Scoring uses
  the unmasked path (the original masks 90% of the tokens only in training).
* ``text_encoder``: CLIP's text transformer (causal mask, QuickGELU), ``ln_final``, the end-of-text token's
  feature (the largest id) ``@ text_projection``.
* ``temp``: the contrastive temperature (``1/temp`` ~ 100); kept in the checkpoint, not used for the cosine.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class ViCLIPConfig:
    """Sizes of a ViCLIP model; the defaults are the released ViCLIP-L/14 (InternVid-10M-FLT)."""

    image_size: int = 224  # frames are resized (short edge) and centre-cropped to image_size x image_size
    patch_size: int = 14  # ViT patch side in pixels
    num_frames: int = 8  # frames per video (the temporal embedding's length)
    vision_width: int = 1024  # ViT-L width
    vision_layers: int = 24  # ViT blocks
    vision_heads: int = 16  # ViT attention heads
    text_width: int = 768  # text transformer width
    text_layers: int = 12  # text blocks
    text_heads: int = 12  # text attention heads
    embed_dim: int = 768  # joint embedding size (vision proj and text_projection outputs)
    context_length: int = 32  # text tokens, [SOT] and [EOT] included (ViCLIP's max_txt_l)
    vocab_size: int = 49408  # BPE vocabulary (byte symbols + 48894 merges + SOT/EOT)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, what in (
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
        ):
            if width % heads:
                raise ValueError(f"{what}_width {width} is not a multiple of {what}_heads {heads}")
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2 ([SOT] and [EOT]); got {self.context_length}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1; got {self.num_frames}")


def make_config(config: ViCLIPConfig | Mapping[str, Any] | None) -> ViCLIPConfig:
    """A :class:`ViCLIPConfig` from a config, a dict of overrides of the defaults, or ``None``."""
    if config is None:
        return ViCLIPConfig()
    if isinstance(config, ViCLIPConfig):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a ViCLIPConfig or a dict; got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(ViCLIPConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown ViCLIPConfig field(s) {unknown}; valid fields: {sorted(fields)}")
    return ViCLIPConfig(**config)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (the original's text LayerNorm; exact in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.float(), self.bias.float()
        return nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, CLIP's GELU approximation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``; ``x: [B, L, width]``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width))
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` blocks under ``resblocks.N`` (the original's names)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionEncoder(nn.Module):
    """Joint space-time ViT: ``[B, 3, T, S, S]`` normalised frames -> ``[B, embed_dim]`` (not normalised)."""

    def __init__(self, cfg: ViCLIPConfig) -> None:
        super().__init__()
        w, p = cfg.vision_width, cfg.patch_size
        grid = cfg.image_size // p
        self.conv1 = nn.Conv3d(3, w, (1, p, p), (1, p, p), bias=False)
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, w))
        self.temporal_positional_embedding = nn.Parameter(torch.empty(1, cfg.num_frames, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(torch.empty(w, cfg.embed_dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.conv1(frames.to(self.conv1.weight.dtype))  # [B, W, T, g, g]
        b, w, t = x.shape[:3]
        if t != self.temporal_positional_embedding.shape[1]:
            raise ValueError(f"expected {self.temporal_positional_embedding.shape[1]} frames, got {t}")
        x = x.flatten(3).permute(0, 2, 3, 1)  # [B, T, N, W]
        x = x + self.positional_embedding[1:].to(x.dtype)  # spatial position, per frame
        x = x + self.temporal_positional_embedding[0, :, None, :].to(x.dtype)  # frame index, patches only
        x = x.transpose(1, 2).reshape(b, -1, w)  # [B, N * T, W], patch-major like the original
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, w)
        x = self.ln_pre(torch.cat([cls, x], dim=1))  # [B, 1 + N T, W]
        x = self.ln_post(self.transformer(x))
        return x[:, 0] @ self.proj.to(x.dtype)


class TextEncoder(nn.Module):
    """CLIP text tower: ``[B, L]`` ids (EOT has the largest id) -> ``[B, embed_dim]`` (not normalised)."""

    def __init__(self, cfg: ViCLIPConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.ln_final = LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).triu(1)  # True: may not attend
        x = self.ln_final(self.transformer(x, causal))
        eot = x[torch.arange(x.shape[0], device=ids.device), ids.argmax(dim=-1)]
        return eot @ self.text_projection.to(x.dtype)


class ViCLIP(nn.Module):
    """The two towers and the temperature, named as the checkpoint's ``"model"`` entries."""

    def __init__(self, cfg: ViCLIPConfig) -> None:
        super().__init__()
        self.vision_encoder = VisionEncoder(cfg)
        self.text_encoder = TextEncoder(cfg)
        self.temp = nn.Parameter(torch.empty(()))


def read_checkpoint(file: str | os.PathLike[str], *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The ``"model"`` state dict of a ViCLIP checkpoint (``torch.load(f)["model"]``), checked to be tensors.

    ``allow_pickle=False`` (default) reads with ``weights_only=True``; a file holding other Python objects is
    then refused with the reason, and ``allow_pickle=True`` (only for a file you trust) reads it anyway.
    """
    try:
        ckpt = torch.load(os.fspath(file), map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt or unexpected file
        hint = "" if allow_pickle else " (if the file is trusted and holds other objects, pass allow_pickle=True)"
        raise ValueError(f"{file}: cannot read the ViCLIP checkpoint ({type(err).__name__}: {err}){hint}") from err
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or not isinstance(ckpt["model"], Mapping):
        what = sorted(ckpt)[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f'{file}: expected {{"model": state_dict}} (ViClip-InternVid-10M-FLT.pth); got {what}')
    sd = ckpt["model"]
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{file}: the 'model' entry is not a state dict of tensors (e.g. {bad[0]!r})")
    return dict(sd)


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Refuses a state dict that is not exactly ``expected`` (names -> shapes), naming what does not fit."""
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k])
    ]
    problems = []
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected entr{'y' if len(unexpected) == 1 else 'ies'}: {_few(unexpected)}"
        )
    if missing:
        problems.append(f"{len(missing)} missing weight(s): {_few(missing)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
    if problems:
        raise ValueError(
            "the ViCLIP checkpoint does not match the model ("
            + "; ".join(problems)
            + "). Check that config matches the checkpoint (the defaults are the released ViCLIP-L/14: 224 px, "
            "patch 14, 8 frames, context 32) and that the file is ViClip-InternVid-10M-FLT.pth."
        )


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def build_viclip(cfg: ViCLIPConfig, state: Mapping[str, torch.Tensor], *, device: Any, dtype: Any) -> ViCLIP:
    """A :class:`ViCLIP` holding ``state`` (checked strictly first), in eval mode on ``device``/``dtype``."""
    with torch.device("meta"):
        model = ViCLIP(cfg)
    check_state_dict(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


__all__ = [
    "ViCLIP",
    "ViCLIPConfig",
    "build_viclip",
    "check_state_dict",
    "make_config",
    "read_checkpoint",
]
