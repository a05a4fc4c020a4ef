"""Text corpora -> ``text`` shards (``txt``): plain text files, one document per file or per line, or
JSONL with the document in a named field. Blank lines are separators, not documents."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from jf_lightning.data.writing.image_folder import chunks
from jf_lightning.data.writing.members import text_member
from jf_lightning.data.writing.writer import BadInput, Record, Skip
from jf_lightning.inputs import UserInputError

TextMode = Literal["file", "line", "jsonl"]


def input_files(patterns: list[str]) -> list[str]:
    """Files named, globbed, or under named folders (recursively), sorted and without repeats."""
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(d, f) for d, _, names in os.walk(pattern) for f in names]
        else:
            found = glob.glob(pattern) if any(c in pattern for c in "*?[") else [pattern]
        if not found or not all(os.path.isfile(f) for f in found):
            raise UserInputError(f"text input {pattern!r} matches no file")
        files += found
    return sorted(set(files))


def line_spans(path: str, lines_per_span: int) -> list[tuple[str, int, int, int]]:
    """(path, byte start, byte end, first line number) of consecutive runs of ``lines_per_span``
    lines, found in one pass over the file without holding it."""
    spans, start, line_no, first = [], 0, 0, 1
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            offset += len(line)
            line_no += 1
            if line_no - first + 1 == lines_per_span:
                spans.append((path, start, offset, first))
                start, first = offset, line_no + 1
    if offset > start:
        spans.append((path, start, offset, first))
    return spans


@dataclass
class TextJob:
    """Documents from ``inputs`` (files, globs, folders)."""

    inputs: list[str]
    mode: TextMode = "file"
    text_field: str = "text"
    samples_per_shard: int = 1000
    kind: str = "text"

    def params(self) -> dict[str, Any]:
        return {"tool": "text", **asdict(self)}

    def plan(self) -> list[list[Any]]:
        if self.mode not in ("file", "line", "jsonl"):
            raise UserInputError(f"--mode must be file, line or jsonl, not {self.mode!r}")
        files = input_files(self.inputs)
        if self.mode == "file":
            return chunks(files, self.samples_per_shard)
        chunks(files, self.samples_per_shard)  # the same check of samples_per_shard
        return [[span] for path in files for span in line_spans(path, self.samples_per_shard)]

    def records(self, item: Any) -> Iterator[Record | Skip]:
        if self.mode == "file":
            try:
                yield {"__source__": item, "txt": text_member(Path(item).read_bytes(), item, "document")}
            except BadInput as bad:
                yield Skip(bad.reason, bad.where)
            return
        path, start, end, first = item
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read(end - start).split(b"\n")
        for n, line in enumerate(lines, first):
            line = line.rstrip(b"\r")
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield {"__source__": where, "txt": self._document(line, where)}
            except BadInput as bad:
                yield Skip(bad.reason, bad.where)

    def _document(self, line: bytes, where: str) -> bytes:
        if self.mode == "line":
            return text_member(line, where, "document")
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadInput("JSONL line not JSON", f"{where} ({err})") from None
        if not isinstance(row, dict) or self.text_field not in row:
            raise BadInput(f"JSONL line without {self.text_field!r}", where)
        return text_member(row[self.text_field], where, "document")
