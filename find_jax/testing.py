"""Tiny random Stable-Diffusion-shaped models, written offline in diffusers' layout.

Used by the tests, the sampler benchmark and the parity oracle: no weights can be downloaded here, so every
check runs on a model built from a small config with seeded random weights. The same weights are written as
PyTorch ``.safetensors`` (what most checkpoints ship), PyTorch ``.bin`` and/or Flax msgpack.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

# Small configs with every block type SD1.5 uses (CrossAttn down/up blocks, the cross-attention mid block).
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=32,
    norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=16,
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    projection_dim=32,
)
# Stable Diffusion v1.5's scheduler config (DDIM keys).
SD15_SCHEDULER = dict(
    _class_name="DDIMScheduler",
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)


def write_clip_tokenizer(folder: Path, words: list[str] = (), *, max_length: int = 77) -> Path:
    """Writes a CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``) offline.

    The vocabulary holds every printable ASCII character (bare and with CLIP's end-of-word mark ``</w>``), so
    any text tokenizes, plus one token per word in ``words`` (merges build each word left to right).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left = left + right
            vocab.setdefault(left, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": max_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    return folder


def make_tiny_sd(
    folder: str | Path,
    *,
    seed: int = 0,
    formats: tuple[str, ...] = ("safetensors",),
    unet: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
) -> Path:
    """Writes a tiny random SD-shaped model to ``folder`` (diffusers layout); returns the folder.

    ``formats``: any of ``"safetensors"``, ``"bin"`` (PyTorch) and ``"flax"`` (msgpack). Weights are drawn
    with PyTorch's initialisers under ``torch.manual_seed(seed)``, then written in each format, so every
    format holds the same numbers. Needs torch (the ``test`` extra).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet_pt = UNet2DConditionModel(**{**TINY_UNET, **(unet or {})})
    vae_pt = AutoencoderKL(**{**TINY_VAE, **(vae or {})})
    text_cfg = CLIPTextConfig(**{**TINY_TEXT, **(text or {})})
    tok_dir = write_clip_tokenizer(folder / "tokenizer", ["a", "photo", "of", "red", "blue", "cat", "dog"])
    text_cfg.vocab_size = len(json.loads((tok_dir / "vocab.json").read_text()))
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    text_cfg.eos_token_id = tokenizer.eos_token_id
    text_cfg.bos_token_id = tokenizer.bos_token_id
    text_cfg.pad_token_id = tokenizer.pad_token_id
    text_pt = CLIPTextModel(text_cfg).eval()
    # Random init leaves biases at 0 and norms at 1: perturb every weight so parity tests see all of them.
    with torch.no_grad():
        for m in (unet_pt, vae_pt, text_pt):
            for p in m.parameters():
                p.add_(0.02 * torch.randn_like(p))
    for fmt in formats:
        if fmt not in ("safetensors", "bin", "flax"):
            raise ValueError(f"unknown weight format {fmt!r}")
        if fmt in ("safetensors", "bin"):
            safe = fmt == "safetensors"
            unet_pt.save_pretrained(folder / "unet", safe_serialization=safe)
            vae_pt.save_pretrained(folder / "vae", safe_serialization=safe)
            text_pt.save_pretrained(folder / "text_encoder", safe_serialization=safe)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
            }
        )
    )
    if "flax" in formats:
        _write_flax_weights(folder, unet_pt, vae_pt, text_pt)
    return folder


def _write_flax_weights(folder: Path, unet_pt: Any, vae_pt: Any, text_pt: Any) -> None:
    """Converts the PyTorch weights in memory and writes Flax msgpack beside the configs."""
    import jax
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from diffusers.models.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
    from flax.serialization import to_bytes
    from transformers import FlaxCLIPTextModel
    from transformers.modeling_flax_pytorch_utils import (
        convert_pytorch_state_dict_to_flax as convert_transformers,
    )

    from find_jax.envs.loading import ShapeOnly, ShapeTree

    for name, pt, cls in (("unet", unet_pt, FlaxUNet2DConditionModel), ("vae", vae_pt, FlaxAutoencoderKL)):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(dict(pt.config)))
        model = cls.from_config(dict(pt.config))
        sd = {k: v.detach() for k, v in pt.state_dict().items()}
        params = convert_pytorch_state_dict_to_flax(sd, ShapeOnly(model))
        (folder / name / "diffusion_flax_model.msgpack").write_bytes(to_bytes(jax.device_get(params)))
    text_dir = folder / "text_encoder"
    text_pt.config.save_pretrained(text_dir)
    flax_text = FlaxCLIPTextModel(text_pt.config, _do_init=False)
    sd = {k: v.detach().numpy() for k, v in text_pt.state_dict().items()}
    params = convert_transformers(sd, ShapeTree(flax_text))
    flax_text.save_pretrained(text_dir, params=params)


class FunctionEnvironment:
    """An :class:`~find_jax.envs.base.Environment` around a per-prompt function, for tests and toy problems.

    ``env_fn(latents [N, *latent_shape], rng [2]) -> media [N, ...]`` is vmapped over the prompt axis (every
    prompt sees the same function); prompt embeddings are ``embed_fn(prompt) -> [E]`` (default: none).
    """

    kind = "image"

    def __init__(self, env_fn, latent_shape, *, embed_fn=None, source: str = "test", fingerprint: str = ""):
        import jax

        self.latent_shape = tuple(int(d) for d in latent_shape)
        self.source, self.fingerprint = source, fingerprint
        self._embed_fn = embed_fn
        self._batched = jax.vmap(env_fn)
        self.calls = 0  # batched calls made (tests count them)

    def bind(self, prompts):
        import jax.numpy as jnp

        def env_fn(latents, rngs):
            self.calls += 1
            return self._batched(jnp.asarray(latents), jnp.asarray(rngs))

        return env_fn

    def prompt_embeddings(self, prompts):
        import numpy as np

        if self._embed_fn is None:
            raise ValueError("this test environment has no prompt embeddings (give embed_fn)")
        return np.stack([np.asarray(self._embed_fn(p), np.float32).ravel() for p in prompts])
