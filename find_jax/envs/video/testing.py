"""Tiny random ModelScope-shaped UNet3D written in diffusers' layout, for tests (needs torch; no network)."""

from __future__ import annotations

import json
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


# ali-vilab/text-to-video-ms-1.7b's scheduler/scheduler_config.json (DDIM keys; "leading" spacing by default).
MODELSCOPE_SCHEDULER: dict[str, Any] = dict(
    _class_name="DDIMScheduler",
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    prediction_type="epsilon",
    trained_betas=None,
)
TINY_VIDEO_WORDS = ["a", "video", "of", "red", "blue", "cat", "dog", "running"]


def make_tiny_video_model(
    folder: str | Path, *, seed: int = 0, unet_formats: tuple[str, ...] = ("safetensors",)
) -> Path:
    """Writes a tiny random ModelScope-shaped text-to-video model to ``folder`` (diffusers layout, torch weights).

    ``unet/`` (:func:`make_tiny_video_unet`, 8x8 latents), ``vae/`` (``find_jax.testing.TINY_VAE``: downscale 2,
    so 16x16 px frames), ``text_encoder/`` (``TINY_TEXT``, width 32 = the UNet's cross-attention width),
    ``tokenizer/``, ``scheduler/`` (:data:`MODELSCOPE_SCHEDULER`) and ``model_index.json`` naming
    ``TextToVideoSDPipeline``, so diffusers' ``TextToVideoSDPipeline.from_pretrained(folder)`` reads it too.
    Every weight is perturbed (std 0.02-0.05) so parity tests see biases and norms. Returns ``folder``.
    """
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from find_jax.testing import TINY_TEXT, TINY_VAE, write_clip_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_video_unet(folder, seed=seed, formats=unet_formats)
    torch.manual_seed(seed + 100)
    vae = AutoencoderKL(**TINY_VAE).eval()
    tok_dir = write_clip_tokenizer(folder / "tokenizer", TINY_VIDEO_WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    text_cfg = CLIPTextConfig(**TINY_TEXT)
    text_cfg.vocab_size = len(tokenizer.get_vocab())
    text_cfg.eos_token_id, text_cfg.bos_token_id = tokenizer.eos_token_id, tokenizer.bos_token_id
    text_cfg.pad_token_id = tokenizer.pad_token_id
    text = CLIPTextModel(text_cfg).eval()
    with torch.no_grad():
        for m in (vae, text):
            for p in m.parameters():
                p.add_(0.02 * torch.randn_like(p))
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text.save_pretrained(folder / "text_encoder", safe_serialization=True)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(MODELSCOPE_SCHEDULER))
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "unet": ["diffusers", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
