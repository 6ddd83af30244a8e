"""ViCLIP's text tokenizer: OpenAI CLIP's byte-level BPE, ``[SOT] + bpe + [EOT]`` zero-padded to 32 tokens.

The same rules as the original (VBench's ``third_party/ViCLIP/simple_tokenizer.py`` + ``CLIP_TEXT.tokenize``):
the vocabulary is the 256 byte symbols, the same with ``</w>``, the first 48894 merges of
``bpe_simple_vocab_16e6.txt.gz`` (line 0 is a header) and ``<|startoftext|>``, ``<|endoftext|>`` (49408 in
all). Text is cleaned (``ftfy.fix_text`` when ftfy is installed, HTML unescaped twice, whitespace collapsed),
lower-cased and split with CLIP's regex; a prompt longer than the context is cut and its last token forced to
end-of-text. The merges file is read from a given path or an installed package that ships it (open_clip,
OpenAI's clip) or VBench's cache; it is never downloaded.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # merges the original keeps (its slice [1 : 49152 - 256 - 2 + 1])
VBENCH_CACHE = "~/.cache/vbench/ViCLIP"  # VBench's CACHE_DIR/ViCLIP, where it keeps the file
_PACKAGES = ("open_clip", "clip")  # PyPI packages that ship the file inside their package directory

_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@functools.lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (kept bytes, then the others) is the vocabulary's order


def find_bpe_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The merges file: ``path`` (the file or a directory holding it), else an installed package's copy.

    Raises:
      FileNotFoundError: naming every place looked at and where the file comes from.
    """
    tried: list[str] = []
    if path is not None:
        p = Path(path).expanduser()
        candidate = p / BPE_FILE if p.is_dir() else p
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    else:
        for package in _PACKAGES:
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.submodule_search_locations:
                for loc in spec.submodule_search_locations:
                    candidate = Path(loc) / BPE_FILE
                    if candidate.is_file():
                        return candidate
                    tried.append(str(candidate))
            else:
                tried.append(f"package {package!r} (not installed)")
        candidate = Path(VBENCH_CACHE).expanduser() / BPE_FILE
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    raise FileNotFoundError(
        f"viclip: the BPE vocabulary {BPE_FILE} was not found (looked at: {'; '.join(tried)}). It ships in "
        "PyPI packages such as open_clip_torch (`pip download --no-deps open_clip_torch`, then unzip "
        "open_clip/bpe_simple_vocab_16e6.txt.gz) or OpenAI's clip; give tokenizer_path=FILE or a directory. "
        "Nothing is downloaded."
    )


class BPETokenizer:
    """CLIP's BPE over a merges file; ``tokenizer(prompts, context_length) -> [B, L]`` int64 ids."""

    def __init__(self, bpe_file: str | os.PathLike[str]) -> None:
        import regex

        try:
            with gzip.open(os.fspath(bpe_file)) as f:
                lines = f.read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{bpe_file}: not a gzipped BPE merges file ({err})") from err
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        symbols = list(byte_symbols().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = dict(zip(vocab, range(len(vocab)), strict=True))  # a repeated entry keeps its last id
        self.vocab_size = len(vocab)  # the token embedding's rows (49408 for the released file)
        self.ranks = dict(zip(merges, range(len(merges)), strict=True))
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, str] = {SOT: SOT, EOT: EOT}
        self.file = Path(bpe_file)

    def bpe(self, token: str) -> list[str]:
        """Merges a word (byte symbols) by rank until no known pair remains; the last symbol ends in ``</w>``."""
        if token in self._cache:
            return self._cache[token].split(" ")
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word[:-1], word[1:], strict=True)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = " ".join(word)
        return word

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` (no start/end tokens), cleaned and lower-cased as the original does."""
        import regex

        try:
            import ftfy

            text = ftfy.fix_text(text)
        except ImportError:  # ftfy only repairs mojibake; plain prompts are unchanged by it
            pass
        text = html.unescape(html.unescape(text)).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        table = byte_symbols()
        ids: list[int] = []
        for piece in self._pattern.findall(text):
            symbols = "".join(table[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(symbols))
        return ids

    def __call__(self, prompts: Sequence[str], context_length: int = 32) -> np.ndarray:
        """``[B, context_length]`` int64: ``[SOT] + ids + [EOT]``, zeros after; too long: cut, last = EOT.

        Warns (naming the prompt) when one is truncated (DESIGN.md §8).
        """
        out = np.zeros((len(prompts), context_length), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            tokens = [self.sot, *self.encode(prompt), self.eot]
            if len(tokens) > context_length:
                shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                warnings.warn(
                    f"viclip: prompt {shown!r} has {len(tokens)} tokens; truncated to {context_length} as the "
                    "original does",
                    stacklevel=2,
                )
                tokens = tokens[:context_length]
                tokens[-1] = self.eot
            out[row, : len(tokens)] = tokens
        return out


__all__ = ["BPE_FILE", "BPETokenizer", "EOT", "SOT", "byte_symbols", "find_bpe_file"]
