"""Directories a run generates for itself (the shapes world, a pretrained SigLIP): written once and
atomically, reused as they are when their record holds the same parameters, and never written over
anything else."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_record(out: str | os.PathLike, record_name: str) -> dict[str, Any] | None:
    path = Path(out) / record_name
    return json.loads(path.read_text()) if path.is_file() else None


def check_output_dir(
    out: Path, record_name: str, params_key: str, params: dict[str, Any], what: str
) -> dict[str, Any] | None:
    """The existing record when ``out`` already holds ``what`` made with ``params`` (its record's
    ``params_key``); None when ``out`` is absent or empty; a one-line ValueError otherwise."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory: pass another output directory")
    record = read_record(out, record_name)
    if record is not None and record.get(params_key) == params:
        return record
    if record is not None:
        raise ValueError(
            f"{out} holds {what} with other parameters ({record.get(params_key)}): "
            "pass another output directory or delete it"
        )
    if any(out.iterdir()):
        raise ValueError(f"{out} is not empty and has no {record_name}: pass an empty or new directory")
    return None


def write_output_dir(
    out: Path, fill: Callable[[Path], dict[str, Any]], recheck: Callable[[], dict[str, Any] | None]
) -> dict[str, Any]:
    """``fill`` a temporary sibling of ``out`` and return its record, then rename it to ``out``. When
    another process (a rank) renamed first, ``recheck`` returns that one's record instead."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        record = fill(tmp)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        os.rename(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        existing = recheck()
        if existing is None:
            raise
        return existing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
