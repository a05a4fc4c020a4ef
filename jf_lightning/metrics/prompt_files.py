"""Prompt files of the generation benchmarks, and which prompt each image of a folder was drawn from.

Three layouts:

- MJHQ-30K's ``meta_data.json``: ``{"<image id>": {"prompt": ..., "category": ...}, ...}`` (an image
  named ``<image id>.png`` or ``.jpg`` belongs to that entry); any JSON object of ``{"<stem>": "prompt"}``
  works the same way;
- GenEval's layout, ``<folder>/<00000>/metadata.jsonl`` with ``<folder>/<00000>/samples/*.png``: every
  image under a numbered folder has that folder's prompt;
- a text file of one prompt per line: line ``i`` is the prompt of the ``i``-th image in sorted order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str | None = None  # MJHQ's category; None where the file has none


def _json_entries(path: Path) -> dict[str, Prompt]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a JSON object of id -> prompt (MJHQ's meta_data.json layout)")
    out = {}
    for key, entry in data.items():
        if isinstance(entry, str):
            out[key] = Prompt(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("prompt"), str):
            out[key] = Prompt(entry["prompt"], entry.get("category"))
        else:
            raise TypeError(f"{path}: entry {key!r} has no string `prompt`")
    return out


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a ``.json`` file (MJHQ layout, in key order) or a text file (one per line, blank
    lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path}: no such file")
    if path.suffix == ".json":
        return [entry for _, entry in sorted(_json_entries(path).items())]
    prompts = [Prompt(line.strip()) for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path}: no prompts in it")
    return prompts


def balanced_subset(prompts: Sequence[Prompt], n: int | None) -> list[Prompt]:
    """The first ``n`` prompts taken in turn from each category (sorted), so every category gets
    ``n / categories`` of them (+-1), in a fixed order; all of them when ``n`` is None."""
    if n is None or n >= len(prompts):
        return list(prompts)
    by_category: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_category.setdefault(p.category or "", []).append(p)
    queues = [by_category[c] for c in sorted(by_category)]
    out: list[Prompt] = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out[:n]


def prompts_for_images(files: Sequence[Path], source: str | Path) -> list[Prompt]:
    """The prompt of each image file, from a JSON file (by file stem), a GenEval folder layout (each
    image's numbered folder's ``metadata.jsonl``; ``source`` is that folder) or a text file (by order)."""
    source = Path(source)
    if source.is_dir():
        out = []
        for f in files:
            folder = next((p for p in f.parents if (p / "metadata.jsonl").is_file()), None)
            if folder is None:
                raise FileNotFoundError(f"{f}: no metadata.jsonl in a folder above it (GenEval's layout)")
            out.append(Prompt(json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])["prompt"]))
        return out
    if source.suffix == ".json":
        entries = _json_entries(source)
        missing = [f.name for f in files if f.stem not in entries]
        if missing:
            raise ValueError(f"{source}: no prompt for {len(missing)} images (e.g. {missing[0]}): "
                             f"images must be named <id>.png by the file's ids")  # fmt: skip
        return [entries[f.stem] for f in files]
    prompts = read_prompts(source)
    if len(prompts) != len(files):
        raise ValueError(f"{source}: {len(prompts)} prompts for {len(files)} images: a text file needs one "
                         f"line per image, in the images' sorted order")  # fmt: skip
    return prompts
