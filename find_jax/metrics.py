"""Structured run logs: one JSON object per iteration in ``metrics.jsonl`` (flat, stable keys)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        value = arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan" / "inf": strict JSON has no NaN literal
    return value


class MetricsWriter:
    """Appends metric dicts (``{"step": 3, "reward/mean": ..., ...}``) as JSON lines to ``path``.

    Each line is flushed at once so a crash loses at most the line being written.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, metrics: dict[str, Any]) -> None:
        """Appends one line; values may be numpy/JAX scalars; NaN/inf are written as strings."""
        line = json.dumps({k: _jsonable(v) for k, v in metrics.items()}, sort_keys=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a ``metrics.jsonl`` (a torn last line from a crash is ignored); [] if missing."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
    return records


def truncate_after(path: str | Path, step: int) -> int:
    """Drops records whose ``step`` is > ``step`` (iterations a resumed run will redo); returns how many."""
    path = Path(path)
    records = read_metrics(path)
    keep = [r for r in records if int(r.get("step", 0)) <= step]
    if len(keep) != len(records) or (path.exists() and not path.read_text().endswith("\n")):
        tmp = path.with_name(f".{path.name}.tmp")  # atomic: a kill mid-write leaves the old file whole
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
        tmp.replace(path)
    return len(records) - len(keep)
