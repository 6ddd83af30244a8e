"""Text conditioning shared by the environments: CLIP tokenisation and the jitted Flax text encoder.

Every environment's model carries ``tokenizer`` (a transformers CLIP tokenizer), ``max_tokens``,
``text_encoder`` (a transformers Flax CLIP text model made with ``_do_init=False``) and
``params["text_encoder"]``; these functions need nothing else of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)


def tokenize(model: Any, prompts: Sequence[str], *, allow_empty: bool = False) -> np.ndarray:
    """Prompts -> ``[B, L]`` int32 token ids, padded to the tokenizer's max length (77 for SD).

    Over-long prompts are truncated with a logged warning naming the model's limit (DESIGN §8); empty prompts
    are refused unless ``allow_empty`` (the unconditional / negative prompt may be empty).
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompt given")
    for p in prompts:
        if not isinstance(p, str):
            raise ValueError(f"prompts must be strings; got {type(p).__name__}")
        if not allow_empty and not p.strip():
            raise ValueError("the prompt is empty: give a text prompt (--prompt TEXT)")
    tok = model.tokenizer
    limit = model.max_tokens
    for p in prompts:
        n = len(tok(p, truncation=False).input_ids)
        if n > limit:
            log.warning(
                "the prompt has %d tokens, more than this model's text encoder takes (%d); truncated: %r",
                n,
                limit,
                p[:60],
            )
    ids = tok(prompts, padding="max_length", max_length=limit, truncation=True, return_tensors="np").input_ids
    return ids.astype(np.int32)


def make_text_encoder(model: Any, *, pooled: bool = False):
    """Returns ``encode_fn(text_params, ids [B, L])``, jitted once: the last hidden state ``[B, L, D]``, or with
    ``pooled`` the pooled (EOS-token) embedding ``[B, D]``."""
    module = model.text_encoder.module
    index = 1 if pooled else 0

    @jax.jit
    def encode_fn(text_params: Any, ids: jax.Array) -> jax.Array:
        pos = jnp.broadcast_to(jnp.arange(ids.shape[-1])[None], ids.shape)
        out = module.apply({"params": text_params}, ids, jnp.ones_like(ids), pos, deterministic=True)
        return out[index]

    return encode_fn


def encode_prompts(model: Any, prompts: Sequence[str], *, allow_empty: bool = False, encode_fn=None) -> jax.Array:
    """Prompts -> text embeddings ``[B, L, D]`` (the UNet's cross-attention context)."""
    encode_fn = encode_fn or make_text_encoder(model)
    return encode_fn(model.params["text_encoder"], jnp.asarray(tokenize(model, prompts, allow_empty=allow_empty)))


def pooled_embedding(model: Any, prompt: str) -> np.ndarray:
    """``[D]`` pooled (EOS-token) text embedding of one prompt: the DRCM's text condition (official preset)."""
    return pooled_embeddings(model, [prompt])[0]


EMBED_CHUNK = 64  # prompts per text-encoder call in pooled_embeddings: one compiled shape for any prompt count


def pooled_embeddings(model: Any, prompts: Sequence[str], *, chunk: int = EMBED_CHUNK) -> np.ndarray:
    """``[B, D]`` pooled text embeddings of ``B`` prompts: :func:`pooled_embedding` batched.

    All prompts are tokenized together and encoded ``chunk`` rows per jitted call (the last chunk padded by
    repeating its last row), so ``B`` prompts cost ``ceil(B / chunk)`` calls of one compiled program. Rows
    are independent: each equals :func:`pooled_embedding` of its prompt to float32 rounding.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    ids = tokenize(model, prompts)
    n = ids.shape[0]
    size = min(chunk, n)
    encode_fn = make_text_encoder(model, pooled=True)
    params = model.params["text_encoder"]
    rows = []
    for start in range(0, n, size):
        part = ids[start : start + size]
        k = part.shape[0]
        if k < size:
            part = np.concatenate([part, np.repeat(part[-1:], size - k, axis=0)])
        rows.append(np.asarray(encode_fn(params, jnp.asarray(part)), dtype=np.float32)[:k])
    return np.concatenate(rows)
