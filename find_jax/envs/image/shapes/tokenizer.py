"""An offline ``CLIPTokenizer`` for the shapes world, built without any download.

CLIP's byte-level BPE splits a word into characters (``</w>`` glued to the last one) and repeatedly merges
the adjacent pair of lowest rank in ``merges.txt``. :func:`build_vocab_and_merges` writes a vocabulary
holding the 256 byte characters (alone and with ``</w>``), one token per world word, and the merges that
build each word: words are processed in order, each is run through the merges written so far, and merges
are appended (left to right) until it is one token. Appended merges rank after every earlier one, so they
never change how an earlier word tokenises (BPE always prefers the lower-ranked merges that already finish
it). Any other word still tokenises (into smaller pieces), so the tokenizer never fails on input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from find_jax.envs.image.shapes.world import VOCABULARY

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 16  # tokens per caption incl. BOS/EOS; the longest world caption has 10 words


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP / GPT-2's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one (lower-case ASCII) word with the given merge ranks."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        best = min(r for r, _ in pairs)
        a, b = next((parts[i], parts[i + 1]) for r, i in pairs if r == best)
        merged, i = [], 0
        while i < len(parts):  # merge every occurrence of the pair, left to right (as CLIP does)
            if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def build_vocab_and_merges(words: Iterable[str] = VOCABULARY) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab: token -> id, merges)`` such that each of ``words`` is exactly one token."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        if not word or not word.isascii() or not word.isalpha() or word != word.lower():
            raise ValueError(f"world words must be lower-case ASCII letters; got {word!r}")
        parts = _bpe(word, ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
            parts = [pair[0] + pair[1]] + parts[2:]
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(directory: str, *, max_length: int = MAX_LENGTH):
    """Writes ``vocab.json`` + ``merges.txt`` and returns the saved ``CLIPTokenizer`` (all files written).

    The directory then holds what ``CLIPTokenizer.save_pretrained`` writes (vocab, merges,
    ``tokenizer_config.json``, ``special_tokens_map.json``); pad token = ``<|endoftext|>`` as in SD.
    """
    from transformers import CLIPTokenizer

    os.makedirs(directory, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    vocab_path = os.path.join(directory, "vocab.json")
    merges_path = os.path.join(directory, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    tokenizer = CLIPTokenizer(
        vocab_path, merges_path, model_max_length=max_length, pad_token=EOS, bos_token=BOS, eos_token=EOS
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def encode(tokenizer, captions: list[str], max_length: int | None = None):
    """``[B, max_length]`` int32 ids, padded with EOS and truncated as SD pipelines do."""
    import numpy as np

    out = tokenizer(
        list(captions),
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="np",
    )
    return np.asarray(out["input_ids"], dtype=np.int32)
