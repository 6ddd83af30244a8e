"""Tiny random ModelScope-shaped UNet3D written in diffusers' layout, for tests (needs torch; no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The real block types at tiny widths: CrossAttn at the top level, plain at the bottom, as ModelScope.
TINY_UNET3D_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=8,
    cross_attention_dim=32,
)

WEIGHT_FORMATS = ("safetensors", "fp16", "bin")


def make_tiny_torch_unet3d(*, seed: int = 0, noise: float = 0.05, **overrides: Any) -> Any:
    """A seeded random torch ``UNet3DConditionModel`` (eval mode, float32).

    diffusers zero-initialises the last conv of every ``TemporalConvLayer`` and GroupNorms start at (1, 0);
    ``noise`` (std) is added to every parameter so each weight, scale and bias reaches the output, and a wrong
    mapping of any of them shows in a parity test. ``overrides`` replace fields of ``TINY_UNET3D_CONFIG``.
    """
    import torch
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    model = UNet3DConditionModel(**{**TINY_UNET3D_CONFIG, **overrides}).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    return model


def make_tiny_video_unet(
    folder: str | Path, *, seed: int = 0, formats: tuple[str, ...] = ("safetensors",), **overrides: Any
) -> Path:
    """Writes ``folder/unet/`` (``config.json`` + weights) of a tiny random UNet3D; returns ``folder/unet``.

    ``formats``: any of ``"safetensors"`` (``diffusion_pytorch_model.safetensors``, fp32), ``"fp16"``
    (``diffusion_pytorch_model.fp16.safetensors``) and ``"bin"`` (``diffusion_pytorch_model.bin``, fp32).
    ``folder`` can be the root of a whole diffusers model directory (other components written beside it).
    """
    import torch
    from safetensors.torch import save_file

    bad = [f for f in formats if f not in WEIGHT_FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty subset of {WEIGHT_FORMATS}, got {formats}")
    unet_dir = Path(folder) / "unet"
    unet_dir.mkdir(parents=True, exist_ok=True)
    model = make_tiny_torch_unet3d(seed=seed, **overrides)
    model.save_config(str(unet_dir))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if "safetensors" in formats:
        save_file(state, str(unet_dir / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    if "fp16" in formats:
        half = {k: v.half() for k, v in state.items()}
        save_file(half, str(unet_dir / "diffusion_pytorch_model.fp16.safetensors"), metadata={"format": "pt"})
    if "bin" in formats:
        torch.save(state, str(unet_dir / "diffusion_pytorch_model.bin"))
    return unet_dir
