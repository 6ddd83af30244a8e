"""Finding reward-model weights on the local disk, never downloading.

Every weight-loading reward takes a ``path`` option (``find-jax optimize --reward-path DIR``): a directory
holding the files, or a Hugging Face hub id looked up in the local hub cache only (what ``HF_HUB_OFFLINE=1``
allows). When a file is missing, :class:`MissingWeightsError` names every expected file, whether it was
found, and where it comes from, so the user knows exactly what to fetch on a machine with network access.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class MissingWeightsError(FileNotFoundError):
    """Weights a reward needs are not on the local disk (the message says which and where from)."""


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """One expected file of a weights directory."""

    names: tuple[str, ...]  # accepted file names relative to the directory; any one of them suffices
    source: str  # where the file comes from (URL or hub repo), quoted in the missing-weights error

    def label(self) -> str:
        return " or ".join(self.names)


def weight_file(*names: str, source: str) -> WeightFile:
    """A :class:`WeightFile` accepting any of ``names``."""
    if not names:
        raise ValueError("weight_file needs at least one file name")
    return WeightFile(tuple(names), source)


def hub_url(repo_id: str) -> str:
    return f"https://huggingface.co/{repo_id}"


def transformers_files(repo_id: str, *, flax: bool = False) -> tuple[WeightFile, ...]:
    """``config.json`` + weights of a transformers model (safetensors or .bin; Flax msgpack if ``flax``)."""
    names = ("model.safetensors", "pytorch_model.bin")
    if flax:
        names = ("flax_model.msgpack", *names)
    return (
        weight_file("config.json", source=hub_url(repo_id)),
        weight_file(*names, source=hub_url(repo_id)),
    )


def clip_tokenizer_files(repo_id: str) -> tuple[WeightFile, ...]:
    """The CLIP BPE tokenizer files (``vocab.json``, ``merges.txt``)."""
    return (
        weight_file("vocab.json", source=hub_url(repo_id)),
        weight_file("merges.txt", source=hub_url(repo_id)),
    )


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME`` aware)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_hub_id(path: str | os.PathLike[str]) -> bool:
    """``org/name`` that is not an existing local path."""
    s = os.fspath(path)
    return bool(_HUB_ID.match(s)) and not Path(s).exists()


def find_file(directory: str | Path, wf: WeightFile) -> Path | None:
    """The first of ``wf.names`` present in ``directory``, or ``None``."""
    for name in wf.names:
        p = Path(directory) / name
        if p.is_file():
            return p
    return None


def missing_files(directory: str | Path, files: Sequence[WeightFile]) -> list[WeightFile]:
    """The expected files that ``directory`` lacks."""
    return [wf for wf in files if find_file(directory, wf) is None]


def find_in_hub_cache(repo_id: str, files: Sequence[WeightFile], cache_dir: str | Path | None = None) -> Path | None:
    """The cached snapshot directory of ``repo_id`` holding every file in ``files``, or ``None``.

    Looks at the snapshot ``refs/main`` points to first, then every other cached snapshot. Never touches the
    network.
    """
    root = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates: list[Path] = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidates.append(snapshots / ref.read_text().strip())
    candidates += sorted(p for p in snapshots.iterdir() if p.is_dir() and p not in candidates)
    for snap in candidates:
        if snap.is_dir() and not missing_files(snap, files):
            return snap
    return None


def _error(
    what: str,
    where: str,
    files: Sequence[WeightFile],
    directory: Path | None,
    option: str,
    hub_id: str | None,
) -> MissingWeightsError:
    lines = [f"{what}: weights not found ({where}). Expected files:"]
    for wf in files:
        if directory is not None and find_file(directory, wf) is not None:
            state = "found"
        else:
            state = "MISSING"
        lines.append(f"  - {wf.label()} [{state}] (from {wf.source})")
    lines.append(
        f"Nothing is downloaded. Give a directory holding these files with the reward option {option}=DIR "
        "(CLI: --reward-path DIR)"
        + (
            f", or put the hub repo {hub_id!r} in the local Hugging Face cache ({hub_cache_dir()}), e.g. "
            f"`huggingface-cli download {hub_id}` on a machine with network access and copy the cache over."
            if hub_id
            else "."
        )
    )
    return MissingWeightsError("\n".join(lines))


def resolve_weights(
    what: str,
    *,
    path: str | os.PathLike[str] | None,
    files: Sequence[WeightFile],
    hub_id: str | None = None,
    option: str = "path",
    cache_dir: str | Path | None = None,
) -> Path:
    """The local directory holding every file in ``files``.

    Args:
      what: the reward/model named in errors (e.g. ``"aesthetic: CLIP ViT-L/14"``).
      path: a local directory, or a hub id looked up in the local hub cache; ``None`` uses ``hub_id``.
      files: the expected files.
      hub_id: the default hub repo, used when ``path`` is ``None``.
      option: the factory option that sets ``path`` (named in the error).
      cache_dir: the hub cache to search (default: the Hugging Face default).

    Raises:
      MissingWeightsError: a file is missing; the message names each expected file and its source.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            if missing_files(p, files):
                raise _error(what, f"in {p}", files, p, option, hub_id)
            return p
        if p.is_file():
            raise MissingWeightsError(
                f"{what}: {option}={os.fspath(path)!r} is a file; give the directory that holds "
                + ", ".join(wf.label() for wf in files)
            )
        if not looks_like_hub_id(path):
            raise _error(what, f"{os.fspath(path)!r} does not exist", files, None, option, hub_id)
        hub_id = os.fspath(path)
    if hub_id is None:
        raise _error(what, "no path given", files, None, option, None)
    snap = find_in_hub_cache(hub_id, files, cache_dir)
    if snap is None:
        root = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
        repo_dir = root / ("models--" + hub_id.replace("/", "--"))
        partial = None
        snapshots = repo_dir / "snapshots"
        if snapshots.is_dir():
            partial = next((s for s in sorted(snapshots.iterdir()) if s.is_dir()), None)
        raise _error(what, f"hub repo {hub_id!r} is not in the local cache {root}", files, partial, option, hub_id)
    return snap


def load_transformers_model(
    cls: type, directory: str | Path, *, what: str, device: str = "cpu", dtype: str = "float32", **kwargs: Any
) -> Any:
    """``cls.from_pretrained(directory)`` offline, in eval mode on ``device``, refusing partial checkpoints.

    transformers fills weights missing from a checkpoint with random values and only logs it; a reward
    built that way would score silently wrong, so any missing weight raises here.
    """
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    model, info = cls.from_pretrained(
        directory, local_files_only=True, output_loading_info=True, dtype=dtypes[dtype], **kwargs
    )
    missing = list(info.get("missing_keys", []))
    if missing:
        raise ValueError(
            f"{what}: the checkpoint in {directory} lacks {len(missing)} weights of {cls.__name__}, "
            f"e.g. {missing[:5]}; it is not a checkpoint of this model"
        )
    return model.to(device).eval()
