"""Prompt sets: read the prompt files users run FIND over (DrawBench and friends), filter by category.

Three formats, chosen by the file's extension:

* ``.csv``: a header row naming a prompt column (``Prompts`` as DrawBench's ``drawbench.csv``, or ``Prompt``)
  and optionally a category column (``Category``); one prompt per row;
* ``.json``: DPOK's ``drawbench_dpok_meta.json`` layout ``{"prompt": {"category": "Colors"}, ...}``, a list of
  strings, or a list of ``{"prompt": ..., "category": ...}`` objects (the batch workdir's ``prompts.json``);
* anything else: plain text, one prompt per line; blank lines and lines starting with ``#`` are skipped.

Categories are compared after stripping spaces and ignoring case (DrawBench writes ``"Gary Marcus et al. "``
with a trailing space). A file that yields no prompt, a CSV without a prompt column, or a category that
matches nothing is refused with a message that says what was found.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROMPT_COLUMNS = ("prompts", "prompt")  # accepted CSV prompt headers (case-insensitive)
CATEGORY_COLUMNS = ("category", "categories")  # accepted CSV category headers (case-insensitive)


@dataclasses.dataclass(frozen=True)
class PromptItem:
    """One prompt of a prompt set."""

    text: str  # the text prompt
    category: str = ""  # its category in the file ("" when the file has none)


def _norm_category(name: str) -> str:
    return " ".join(str(name).split()).lower()


def _clean(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{where}: a prompt must be a string; got {text!r}")
    text = " ".join(text.split())
    if not text:
        raise ValueError(f"{where}: empty prompt")
    return text


def _read_csv(path: Path) -> list[PromptItem]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"prompt file {path} is empty: expected a header row such as 'Prompts,Category'")
        names = [h.strip().lower() for h in header]
        p_col = next((names.index(c) for c in PROMPT_COLUMNS if c in names), None)
        if p_col is None:
            raise ValueError(
                f"prompt file {path} has no prompt column: its header is {header!r}; expected a column named "
                "'Prompts' (as DrawBench's CSV: 'Prompts,Category')"
            )
        c_col = next((names.index(c) for c in CATEGORY_COLUMNS if c in names), None)
        items = []
        for line_no, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= p_col:
                raise ValueError(f"{path}:{line_no}: the row has {len(row)} cells, no '{header[p_col]}' value")
            category = row[c_col].strip() if c_col is not None and len(row) > c_col else ""
            items.append(PromptItem(_clean(row[p_col], f"{path}:{line_no}"), category))
    return items


def _read_json(path: Path) -> list[PromptItem]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"prompt file {path} is not valid JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        data = data["prompts"]  # {"prompts": [...]} wrapper
    items = []
    if isinstance(data, dict):  # DPOK meta: {prompt: {"category": ...}}
        for text, meta in data.items():
            category = meta.get("category", "") if isinstance(meta, dict) else ""
            items.append(PromptItem(_clean(text, f"{path} key {text!r}"), str(category).strip()))
    elif isinstance(data, list):
        for i, entry in enumerate(data):
            where = f"{path} entry {i}"
            if isinstance(entry, str):
                items.append(PromptItem(_clean(entry, where)))
            elif isinstance(entry, dict) and "prompt" in entry:
                items.append(PromptItem(_clean(entry["prompt"], where), str(entry.get("category", "")).strip()))
            else:
                raise ValueError(f"{where}: expected a string or an object with a 'prompt' key; got {entry!r}")
    else:
        raise ValueError(
            f"prompt file {path}: expected a JSON object {{prompt: {{'category': ...}}}} or a list of prompts; "
            f"got {type(data).__name__}"
        )
    return items


def _read_text(path: Path) -> list[PromptItem]:
    items = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        items.append(PromptItem(_clean(line, f"{path}:{line_no}")))
    return items


def read_prompts(path: str | Path, *, category: str | None = None) -> list[PromptItem]:
    """The prompts of ``path`` (CSV, JSON or text; see the module doc), in file order.

    ``category``: keep only that category (case-insensitive, surrounding spaces ignored). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for an empty file, a CSV without a prompt
    column, an empty prompt, or a category that matches nothing (the message lists the categories found).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        items = _read_csv(path)
    elif suffix == ".json":
        items = _read_json(path)
    else:
        items = _read_text(path)
    if not items:
        raise ValueError(f"prompt file {path} holds no prompts")
    if category is not None:
        items = filter_category(items, category, source=str(path))
    return items


def filter_category(items: Sequence[PromptItem], category: str, *, source: str = "the prompt set") -> list[PromptItem]:
    """The items of ``category`` (case-insensitive); ``ValueError`` listing the categories if none match."""
    want = _norm_category(category)
    kept = [it for it in items if _norm_category(it.category) == want]
    if not kept:
        counts = collections.Counter(it.category for it in items if it.category)
        if not counts:
            raise ValueError(f"{source} has no categories (a CSV 'Category' column), so --category cannot filter it")
        found = ", ".join(f"{name.strip()!r} ({n})" for name, n in sorted(counts.items()))
        raise ValueError(f"no prompt of category {category!r} in {source}; its categories: {found}")
    return kept


def categories(items: Sequence[PromptItem]) -> dict[str, int]:
    """``{category: count}`` in order of first appearance ("" for prompts without one)."""
    return dict(collections.Counter(it.category for it in items))


def slugify(text: str, *, max_len: int = 40) -> str:
    """A file-name-safe slug of ``text``: lower-case ASCII letters and digits joined by ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-")
    return slug or "prompt"


def prompt_dir_name(index: int, text: str) -> str:
    """``NNN-<slug>``: the per-prompt run directory of a batch workdir (``index`` is the prompt's position)."""
    return f"{index:03d}-{slugify(text)}"


def prompts_to_json(items: Sequence[PromptItem]) -> list[dict[str, Any]]:
    """``[{"index", "prompt", "category", "dir"}, ...]``: the batch workdir's ``prompts.json`` records."""
    return [
        {"index": i, "prompt": it.text, "category": it.category, "dir": prompt_dir_name(i, it.text)}
        for i, it in enumerate(items)
    ]


__all__ = [
    "PromptItem",
    "categories",
    "filter_category",
    "prompt_dir_name",
    "prompts_to_json",
    "read_prompts",
    "slugify",
]
