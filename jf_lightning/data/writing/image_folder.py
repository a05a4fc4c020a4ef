"""An image folder with captions -> ``gen`` (caption = prompt, ``txt``) or ``und`` (caption, ``txt``)
shards. Captions come from side-car files (``cat.jpg`` + ``cat.txt``) or from one JSONL / CSV file of
(file, caption) rows, files relative to the image folder."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jf_lightning.data.sources import Kind
from jf_lightning.data.writing.members import image_member, text_member
from jf_lightning.data.writing.writer import BadInput, Record, Skip
from jf_lightning.inputs import UserInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    if size < 1:
        raise UserInputError(f"--samples-per-shard must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def caption_rows(path: str, file_column: str, caption_column: str) -> Iterator[tuple[str, str] | Skip]:
    """(file, caption) rows of a JSONL or CSV file (by extension), or a Skip per broken row. Read with
    surrogateescape, so a caption that is not UTF-8 is one skipped row, not a failed run."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as err:
        raise UserInputError(f"captions file {path}: {err.strerror}") from None
    if path.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {file_column, caption_column} - set(reader.fieldnames or [])
        if missing:
            raise UserInputError(
                f"captions file {path} has no column {sorted(missing)} (header: {reader.fieldnames})"
            )
        rows = ((f"{path}:{reader.line_num}", row) for row in reader)
    elif path.lower().endswith((".jsonl", ".json")):
        rows = ((f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip())
    else:
        raise UserInputError(f"captions file {path}: give a .jsonl or .csv file of file,caption rows")
    for where, row in rows:
        if isinstance(row, str):
            try:
                row = json.loads(row)
            except json.JSONDecodeError as err:
                yield Skip("captions row not JSON", f"{where} ({err.msg})")
                continue
        if (
            not isinstance(row, dict)
            or not isinstance(row.get(file_column), str)
            or row.get(caption_column) is None
        ):
            yield Skip(f"captions row without {file_column!r} and {caption_column!r}", where)
            continue
        yield row[file_column], row[caption_column]


@dataclass
class ImageFolderJob:
    """Images under ``root`` with their captions; one sample per image that has one."""

    root: str
    kind: Kind
    captions: str | None = None
    """JSONL / CSV of (file, caption) rows; None: a side-car ``.txt`` beside each image."""
    file_column: str = "file"
    caption_column: str = "caption"
    samples_per_shard: int = 1000

    def params(self) -> dict[str, Any]:
        return {"tool": "image-folder", **asdict(self)}

    def plan(self) -> list[list[Any]]:
        if self.kind not in ("gen", "und"):
            raise UserInputError(f"image-folder writes gen or und shards, not {self.kind!r}")
        if not os.path.isdir(self.root):
            raise UserInputError(f"image folder {self.root} does not exist or is not a folder")
        items: list[Any] = []
        if self.captions is None:
            items = self._side_car_items()
        else:
            for row in caption_rows(self.captions, self.file_column, self.caption_column):
                items.append(row if isinstance(row, Skip) else (row[0], row[1], f"{self.captions}: {row[0]}"))
        return chunks(items, self.samples_per_shard)

    def _side_car_items(self) -> list[Any]:
        images, texts = set(), set()
        for folder, _, files in os.walk(self.root):
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), self.root)
                stem, ext = os.path.splitext(rel)
                if ext.lower() in IMAGE_EXTENSIONS:
                    images.add(rel)
                elif ext == ".txt":
                    texts.add(stem)
        stems = {os.path.splitext(rel)[0] for rel in images}
        orphans = [
            Skip("caption without an image", f"{self.root}/{stem}.txt") for stem in sorted(texts - stems)
        ]
        return sorted(images) + orphans

    def records(self, item: Any) -> Iterator[Record | Skip]:
        if isinstance(item, Skip):
            yield item
            return
        try:
            yield self._record(item)
        except BadInput as bad:
            yield Skip(bad.reason, bad.where)

    def _record(self, item: str | tuple[str, str, str]) -> Record:
        if isinstance(item, str):  # side-car
            rel, where = item, os.path.join(self.root, item)
            caption_path = os.path.join(self.root, os.path.splitext(item)[0] + ".txt")
            if not os.path.isfile(caption_path):
                raise BadInput("image without a caption (no side-car .txt)", where)
            caption = Path(caption_path).read_bytes()
        else:
            rel, caption, where = item
        path = os.path.join(self.root, rel)
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise BadInput("image file missing or unreadable", f"{where} ({err.strerror})") from None
        suffix, image = image_member(data, where)
        return {"__source__": rel, suffix: image, "txt": text_member(caption, where, "caption")}
