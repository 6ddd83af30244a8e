"""Shared test helpers for the reward models: tiny random CLIP models and an offline CLIP BPE tokenizer.

Nothing here touches the network: the tokenizer's ``vocab.json`` / ``merges.txt`` are generated (all 256
byte symbols, with and without the end-of-word marker ``</w>``, plus merges that make each word of
:data:`WORDS` one token), and models are built from tiny ``CLIPConfig`` s with seeded random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Words that tokenise to one token each in the generated vocabulary. Order matters: BPE applies merges by
# rank, so "green" comes before "red" (whose "r e" merge would otherwise split "green").
WORDS: tuple[str, ...] = (
    "green",
    "a",
    "photo",
    "of",
    "red",
    "blue",
    "cat",
    "dog",
    "circle",
    "square",
    "on",
    "the",
    "left",
    "right",
)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def clip_vocab(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` of a CLIP BPE tokenizer; ``<|endoftext|>`` gets the highest id.

    CLIP pools the text at the end-of-text token, found as the argmax of the ids in the Flax model and
    the legacy torch path, so the end token must have the largest id, as in the real vocabulary (49407).
    """
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1]] + parts[2:]
            if parts[0] not in tokens:
                tokens.append(parts[0])
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(directory: str | Path, words: tuple[str, ...] = WORDS) -> int:
    """Writes ``vocab.json`` + ``merges.txt`` into ``directory``; returns the vocabulary size."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab(words)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def tiny_clip_config(vocab_size: int, *, projection_dim: int = 16, image_size: int = 30, max_text_len: int = 16):
    """A tiny ``CLIPConfig``: hidden 32, 2 layers, 2 heads, ``image_size`` px images in 10 px patches."""
    from transformers import CLIPConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_text_len,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=10,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def write_preprocessor_config(directory: str | Path, size: int, *, resample: int = 3) -> None:
    """A Hugging Face ``CLIPImageProcessor`` config (shortest-edge resize, centre crop, CLIP mean/std)."""
    cfg = {
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": resample,
        "do_convert_rgb": True,
        "image_processor_type": "CLIPImageProcessor",
    }
    (Path(directory) / "preprocessor_config.json").write_text(json.dumps(cfg))


def write_tiny_clip(
    directory: str | Path,
    *,
    seed: int = 0,
    projection_dim: int = 16,
    image_size: int = 30,
    logit_scale: float | None = None,
    tokenizer: bool = True,
    preprocessor: bool = True,
):
    """Saves a seeded random tiny torch ``CLIPModel`` (safetensors) + tokenizer files; returns the model.

    The model is in eval mode. ``logit_scale`` overrides the learnt temperature (log scale).
    """
    import torch
    from transformers import CLIPModel

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab_size = len(clip_vocab()[0])
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(vocab_size, projection_dim=projection_dim, image_size=image_size)).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    model.save_pretrained(d, safe_serialization=True)
    if tokenizer:
        write_clip_tokenizer(d)
    if preprocessor:
        write_preprocessor_config(d, image_size)
    return model


def random_images(seed: int, batch: int, size: int, *, quantised: bool = True) -> np.ndarray:
    """``[B, size, size, 3]`` float32 in [0, 1]; multiples of 1/255 when ``quantised`` (PIL-exact)."""
    rng = np.random.default_rng(seed)
    if quantised:
        return (rng.integers(0, 256, (batch, size, size, 3)) / 255.0).astype(np.float32)
    return rng.random((batch, size, size, 3), dtype=np.float32)
