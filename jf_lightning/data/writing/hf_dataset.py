"""A Hugging Face ``datasets`` data set -> shards: a folder written by ``Dataset.save_to_disk`` (read
with ``datasets.load_from_disk``, memory-mapped) or parquet files (read with pyarrow, one row group
range at a time, so no converted copy lands in the datasets cache). The image and text columns are
named; an image cell may be ``datasets.Image``'s ``{"bytes", "path"}``, raw bytes or a path."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from jf_lightning.data.sources import Kind
from jf_lightning.data.writing.members import image_member, text_member
from jf_lightning.data.writing.writer import BadInput, Record, Skip
from jf_lightning.inputs import UserInputError


def is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")
    )


def parquet_files(path: str) -> list[str]:
    """A parquet file, a folder of them (searched recursively) or a glob."""
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    return (
        sorted(glob.glob(path)) if any(c in path for c in "*?[") else ([path] if os.path.isfile(path) else [])
    )


@lru_cache(maxsize=4)
def _saved(path: str, split: str | None):
    """The saved data set (memory-mapped, so opening it once per worker process is cheap)."""
    import datasets  # imported here: only this tool needs it, and it is slow to import

    data = datasets.load_from_disk(path)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UserInputError(f"{path} holds splits {sorted(data)}: choose one with --split")
        data = data[split]
    for name, feature in data.features.items():
        if isinstance(feature, datasets.Image):  # the encoded bytes, as stored: no decode and re-encode
            data = data.cast_column(name, datasets.Image(decode=False))
    return data


@dataclass
class HFDatasetJob:
    """Rows of a saved data set or of parquet files: ``image_column`` + ``text_column`` -> a sample."""

    path: str
    kind: Kind
    text_column: str
    image_column: str | None = None
    split: str | None = None
    image_root: str | None = None
    """Folder that relative image paths in the image column are read under (default: ``path``'s)."""
    samples_per_shard: int = 1000

    def params(self) -> dict[str, Any]:
        return {"tool": "hf-dataset", **asdict(self)}

    def _columns(self) -> list[str]:
        return [self.text_column] + ([self.image_column] if self.kind != "text" else [])

    def plan(self) -> list[list[Any]]:
        if self.kind != "text" and not self.image_column:
            raise UserInputError(f"{self.kind} shards need --image-column")
        if is_saved_dataset(self.path):
            data = _saved(self.path, self.split)
            self._check_columns(data.column_names, self.path)
            spans = [
                (None, start, min(start + self.samples_per_shard, len(data)))
                for start in range(0, len(data), self.samples_per_shard)
            ]
            return [[span] for span in spans]
        files = parquet_files(self.path)
        if not files:
            raise UserInputError(f"{self.path} is neither a save_to_disk folder nor parquet file(s)")
        plan = []
        for file in files:
            meta = pq.ParquetFile(file)
            self._check_columns(meta.schema_arrow.names, file)
            rows = meta.metadata.num_rows
            plan += [
                [(file, s, min(s + self.samples_per_shard, rows))]
                for s in range(0, rows, self.samples_per_shard)
            ]
        return plan

    def _check_columns(self, names: list[str], where: str) -> None:
        missing = [c for c in self._columns() if c not in names]
        if missing:
            raise UserInputError(f"{where} has no column {missing}; its columns are {names}")

    def records(self, item: tuple[str | None, int, int]) -> Iterator[Record | Skip]:
        file, start, end = item
        columns = self._rows(file, start, end)
        for i in range(end - start):
            where = f"{file or self.path} row {start + i}"
            try:
                yield self._record({c: columns[c][i] for c in columns}, where)
            except BadInput as bad:
                yield Skip(bad.reason, bad.where)

    def _rows(self, file: str | None, start: int, end: int) -> dict[str, list[Any]]:
        if file is None:
            return _saved(self.path, self.split).select_columns(self._columns())[start:end]
        pf = pq.ParquetFile(file)
        groups, first, offset = [], None, 0
        for g in range(pf.num_row_groups):  # only the row groups that overlap [start, end)
            n = pf.metadata.row_group(g).num_rows
            if offset < end and offset + n > start:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        table = pf.read_row_groups(groups, columns=self._columns())
        return table.slice(start - first, end - start).to_pydict()

    def _record(self, row: dict[str, Any], where: str) -> Record:
        value = row[self.text_column]
        record: Record = {"__source__": where}
        if self.kind == "und" and isinstance(value, list):  # a conversations column
            record["json"] = json.dumps({"conversations": value}, ensure_ascii=False).encode()
        else:
            record["txt"] = text_member(value, where, "text")
        if self.kind != "text":
            suffix, image = image_member(self._image_bytes(row[self.image_column], where), where)
            record[suffix] = image
        return record

    def _image_bytes(self, cell: Any, where: str) -> bytes:
        if isinstance(cell, dict):
            cell = cell.get("bytes") or cell.get("path")
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell)
        if isinstance(cell, str) and cell:
            root = self.image_root or (self.path if os.path.isdir(self.path) else os.path.dirname(self.path))
            try:
                return Path(root, cell).read_bytes()
            except OSError as err:
                raise BadInput(
                    "image file missing or unreadable", f"{where}: {cell} ({err.strerror})"
                ) from None
        raise BadInput("no image", where)
