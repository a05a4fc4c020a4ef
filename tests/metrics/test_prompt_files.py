"""Benchmark prompt files and the prompt of each image of a folder."""

from __future__ import annotations

import json

import pytest

from jf_lightning.metrics.prompt_files import Prompt, balanced_subset, prompts_for_images, read_prompts


def _mjhq(tmp_path):
    meta = {f"{c}{i}": {"prompt": f"{c} {i}", "category": c} for c in ("food", "animals") for i in range(3)}
    path = tmp_path / "meta_data.json"
    path.write_text(json.dumps(meta))
    return path


def test_mjhq_prompts_in_turn_from_each_category(tmp_path):
    prompts = read_prompts(_mjhq(tmp_path))
    assert prompts[0] == Prompt("animals 0", "animals") and len(prompts) == 6
    subset = balanced_subset(prompts, 3)
    assert [p.text for p in subset] == ["animals 0", "food 0", "animals 1"]
    assert balanced_subset(prompts, None) == prompts


def test_text_prompts_skip_blank_lines(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n a dog \n")
    assert read_prompts(tmp_path / "p.txt") == [Prompt("a cat"), Prompt("a dog")]


def test_each_image_gets_its_prompt_by_stem_folder_or_order(tmp_path):
    meta = _mjhq(tmp_path)
    files = [tmp_path / "img" / "food1.png", tmp_path / "img" / "animals2.jpg"]
    assert [p.category for p in prompts_for_images(files, meta)] == ["food", "animals"]
    with pytest.raises(ValueError, match="no prompt for 1 images"):
        prompts_for_images([tmp_path / "other.png"], meta)
    for i, text in enumerate(["a red cube", "two cats"]):  # GenEval's layout
        (tmp_path / "gen" / f"{i:05d}" / "samples").mkdir(parents=True)
        (tmp_path / "gen" / f"{i:05d}" / "metadata.jsonl").write_text(
            json.dumps({"prompt": text, "tag": "x"})
        )
    gen = [
        tmp_path / "gen" / "00001" / "samples" / "0000.png",
        tmp_path / "gen" / "00000" / "samples" / "0003.png",
    ]
    assert [p.text for p in prompts_for_images(gen, tmp_path / "gen")] == ["two cats", "a red cube"]
    (tmp_path / "lines.txt").write_text("first\nsecond\n")
    assert [p.text for p in prompts_for_images(files, tmp_path / "lines.txt")] == ["first", "second"]
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        prompts_for_images(files[:1], tmp_path / "lines.txt")
