"""LLaVA-format conversations -> ``und`` shards: a JSON list of ``{"id", "image": <path relative to
the image folder>, "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}`` becomes one
sample per entry, the image as it is and a ``json`` member holding ``conversations`` (and ``id``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jf_lightning.data.writing.image_folder import chunks
from jf_lightning.data.writing.members import image_member
from jf_lightning.data.writing.writer import BadInput, Record, Skip
from jf_lightning.inputs import UserInputError


def load_entries(path: str) -> list[Any]:
    """The entries of a LLaVA JSON list (or JSONL, one entry a line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(f"conversations file {path}: {err}") from None
    try:
        if path.lower().endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(f"conversations file {path} is not JSON: {err}") from None
    if not isinstance(data, list):
        raise UserInputError(
            f"conversations file {path} must hold a JSON list of entries, not {type(data).__name__}"
        )
    return data


@dataclass
class LlavaJob:
    """LLaVA conversation entries with images under ``images``."""

    conversations: str
    images: str
    samples_per_shard: int = 1000
    kind: str = "und"

    def params(self) -> dict[str, Any]:
        return {"tool": "llava", **asdict(self)}

    def plan(self) -> list[list[Any]]:
        if not os.path.isdir(self.images):
            raise UserInputError(f"image folder {self.images} does not exist or is not a folder")
        entries = load_entries(self.conversations)
        items = [(n, entry) for n, entry in enumerate(entries)]
        return chunks(items, self.samples_per_shard)

    def records(self, item: tuple[int, Any]) -> Iterator[Record | Skip]:
        n, entry = item
        where = f"{self.conversations}[{n}]"
        try:
            yield self._record(entry, where, n)
        except BadInput as bad:
            yield Skip(bad.reason, bad.where)

    def _record(self, entry: Any, where: str, n: int) -> Record:
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            raise BadInput("entry without a 'conversations' list", where)
        image = entry.get("image")
        if image is None:
            raise BadInput("entry without an image (text-only conversation)", where)
        if not isinstance(image, str):
            raise BadInput("entry whose 'image' is not one path", where)  # e.g. multi-image lists
        where = f"{where} ({image})"
        try:
            data = Path(self.images, image).read_bytes()
        except OSError as err:
            raise BadInput("image file missing or unreadable", f"{where}: {err.strerror}") from None
        suffix, image_bytes = image_member(data, where)
        meta = {"conversations": entry["conversations"]}
        if "id" in entry:
            meta["id"] = entry["id"]
        return {
            "__source__": f"[{n}]",
            suffix: image_bytes,
            "json": json.dumps(meta, ensure_ascii=False).encode(),
        }
