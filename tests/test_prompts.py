"""Prompt files: DrawBench-style CSV, DPOK JSON, plain text; category filters; clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from find_jax.prompts import (
    PromptItem,
    categories,
    prompt_dir_name,
    prompts_to_json,
    read_prompts,
    slugify,
)

SHARED = Path("/work/shared/data")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_drawbench_style_csv_with_categories(tmp_path):
    f = write(
        tmp_path / "p.csv",
        'Prompts,Category\nA red colored car.,Colors\n"A cat, sitting.",Positional\n'
        "A tree.,Gary Marcus et al. \n\nTwo dogs.,Colors\n",
    )
    items = read_prompts(f)
    assert [it.text for it in items] == ["A red colored car.", "A cat, sitting.", "A tree.", "Two dogs."]
    assert items[2].category == "Gary Marcus et al."  # DrawBench's trailing space is stripped
    assert categories(items) == {"Colors": 2, "Positional": 1, "Gary Marcus et al.": 1}
    colors = read_prompts(f, category=" colors ")  # case and surrounding spaces ignored
    assert [it.text for it in colors] == ["A red colored car.", "Two dogs."]
    assert [it.text for it in read_prompts(f, category="gary marcus et al. ")] == ["A tree."]


def test_csv_without_category_column_and_other_header_names(tmp_path):
    f = write(tmp_path / "p.csv", "prompt,seed\nA red car.,3\nA blue car.,4\n")
    items = read_prompts(f)
    assert items == [PromptItem("A red car.", ""), PromptItem("A blue car.", "")]
    with pytest.raises(ValueError, match="no categories"):
        read_prompts(f, category="Colors")


def test_bad_csv_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"no prompt column.*\['Text', 'Category'\]"):
        read_prompts(write(tmp_path / "a.csv", "Text,Category\nA car.,Colors\n"))
    with pytest.raises(ValueError, match="is empty"):
        read_prompts(write(tmp_path / "b.csv", ""))
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(write(tmp_path / "c.csv", "Prompts,Category\n"))
    with pytest.raises(ValueError, match=r"c2.csv:3: empty prompt"):
        read_prompts(write(tmp_path / "c2.csv", "Prompts,Category\nA car.,Colors\n  ,Colors\n"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(tmp_path / "missing.csv")


def test_unknown_category_lists_the_categories_found(tmp_path):
    f = write(tmp_path / "p.csv", "Prompts,Category\nA car.,Colors\nA dog.,Counting\nA cat.,Colors\n")
    with pytest.raises(ValueError, match=r"no prompt of category 'Colour'.*'Colors' \(2\), 'Counting' \(1\)"):
        read_prompts(f, category="Colour")


def test_text_file_one_prompt_a_line(tmp_path):
    f = write(tmp_path / "p.txt", "# my prompts\na red cat\n\n  a   blue dog  \n")
    assert read_prompts(f) == [PromptItem("a red cat"), PromptItem("a blue dog")]
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(write(tmp_path / "e.txt", "\n# nothing\n"))


def test_json_formats(tmp_path):
    dpok = {"A red colored car.": {"category": "Colors"}, "A tree.": {"category": "Gary Marcus et al. "}}
    items = read_prompts(write(tmp_path / "m.json", json.dumps(dpok)), category="Colors")
    assert items == [PromptItem("A red colored car.", "Colors")]
    listed = read_prompts(write(tmp_path / "l.json", json.dumps(["a cat", {"prompt": "a dog", "category": "X"}])))
    assert listed == [PromptItem("a cat"), PromptItem("a dog", "X")]
    with pytest.raises(ValueError, match="not valid JSON"):
        read_prompts(write(tmp_path / "bad.json", "{"))
    with pytest.raises(ValueError, match="entry 0"):
        read_prompts(write(tmp_path / "bad2.json", "[3]"))
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(write(tmp_path / "empty.json", "{}"))


def test_workdir_records_roundtrip_through_the_json_reader(tmp_path):
    items = [PromptItem("A red car!", "Colors"), PromptItem("a cat", "")]
    records = prompts_to_json(items)
    assert records[0] == {"index": 0, "prompt": "A red car!", "category": "Colors", "dir": "000-a-red-car"}
    assert records[1]["dir"] == "001-a-cat"
    assert read_prompts(write(tmp_path / "prompts.json", json.dumps(records))) == items


def test_slugs_are_file_name_safe():
    assert slugify("A cat/dog: 100% \u00fcber!") == "a-cat-dog-100-ber"
    assert slugify("???") == "prompt"
    assert len(slugify("x" * 200)) == 40
    assert prompt_dir_name(7, "Two  dogs.") == "007-two-dogs"


@pytest.mark.skipif(not (SHARED / "drawbench.csv").is_file(), reason="DrawBench CSV not present on this machine")
def test_shared_drawbench_csv():
    items = read_prompts(SHARED / "drawbench.csv")
    assert len(items) == 200 and len(categories(items)) == 11
    assert len(read_prompts(SHARED / "drawbench.csv", category="Colors")) == 25


@pytest.mark.skipif(not (SHARED / "drawbench_dpok_meta.json").is_file(), reason="DPOK meta JSON not present")
def test_shared_dpok_meta_json():
    items = read_prompts(SHARED / "drawbench_dpok_meta.json")
    assert len(items) == 183
    assert len(read_prompts(SHARED / "drawbench_dpok_meta.json", category="gary marcus et al.")) == 10
