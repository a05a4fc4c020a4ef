"""The shard-writing engine every ``jf shards`` tool shares: one output shard per task, in parallel
processes, resumable, each sample checked by the reader before it is written and the whole shard read
back after.

A tool (``ShardJob``) says which inputs go to which shard (``plan``) and turns one input item into
records (``records``): ``{suffix: bytes}`` members plus ``__source__``, the input it came from, or a
``Skip`` naming a bad input. The engine gives every record its key, writes the shard to a hidden
temporary name, reads it back through ``jf_lightning.data.sources`` (exactly what training reads),
renames it into place and only then writes its done-marker (``<shard>.done.json``). A shard counts as
finished only when its marker is there, so a rerun after an interruption rewrites just the unfinished
shards, and partial files of an interrupted run are removed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import webdataset as wds
from tqdm import tqdm

from jf_lightning.data.sources import Kind, decode, iter_members
from jf_lightning.inputs import UserInputError

Record = dict[str, Any]
"""Members of one sample: suffix -> bytes, plus ``__source__`` (str, the input it came from)."""
MAX_EXAMPLES = 3
"""Inputs named per kind of bad input in the markers, the manifest and the summary."""


@dataclass
class Skip:
    """A bad input, left out of the shards and counted: ``reason`` is its kind (one summary line per
    kind), ``where`` names the input (a file, a row, a line)."""

    reason: str
    where: str


class BadInput(Exception):
    """Raised by the tools' helpers for an input that cannot become a sample; becomes a ``Skip``."""

    def __init__(self, reason: str, where: str = ""):
        super().__init__(f"{reason}: {where}")
        self.reason, self.where = reason, where


class ShardJob(Protocol):
    """What a tool gives the engine. Instances are pickled into the worker processes."""

    kind: Kind

    def params(self) -> dict[str, Any]:
        """Everything that decides the output (inputs and settings): a folder written with other
        params is refused rather than mixed."""

    def plan(self) -> list[list[Any]]:
        """The input items of each output shard, in order (picklable, small: paths, offsets, rows)."""

    def records(self, item: Any) -> Iterator[Record | Skip]:
        """The records (or skips) one input item makes."""


@dataclass
class ShardResult:
    """What one task did."""

    index: int
    written: bool
    count: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def marker_path(out: Path, prefix: str, index: int) -> Path:
    return out / f"{prefix}-{index:06d}.done.json"


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # no marker, or one cut short: the shard is not finished


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def check_record(record: Record, kind: Kind, where: str) -> Skip | None:
    """Decode ``record`` exactly as the reader decodes a shard member group; a refusal is a ``Skip``."""
    sample = {
        "__key__": "check",
        "__url__": where,
        **{k: v for k, v in record.items() if not k.startswith("__")},
    }
    try:
        decode(sample, kind)
    except Exception as err:  # noqa: BLE001 (any refusal by the reader: not trainable)
        return Skip(
            f"refused by the reader ({getattr(err, 'reason', type(err).__name__)})", f"{where}: {err}"
        )
    return None


def digest(members: dict[str, Any]) -> str:
    """A hash of a sample's members (suffix and bytes), to compare what was read back with what was
    checked."""
    h = hashlib.sha1()
    for suffix in sorted(k for k in members if not k.startswith("__")):
        h.update(suffix.encode() + b"\0" + len(members[suffix]).to_bytes(8, "little") + members[suffix])
    return h.hexdigest()


def verify_shard(path: str, kind: Kind, expected: list[tuple[str, str]]) -> None:
    """Read a written shard back through the reader's tar reading: every (key, member digest) once, in
    order. The members were decoded by ``check_record`` before they were written, so equal bytes
    read back are samples the reader decodes (a second decode would only repeat the first)."""
    read = [(sample["__key__"], digest(sample)) for sample in iter_members(path, kind)]
    if read != expected:
        raise RuntimeError(
            f"{path}: read back {len(read)} samples, wrote {len(expected)} (keys or bytes differ)"
        )


def note_skip(result: ShardResult, skip: Skip) -> None:
    result.skipped[skip.reason] += 1
    examples = result.examples.setdefault(skip.reason, [])
    if len(examples) < MAX_EXAMPLES:
        examples.append(skip.where)


def _good_records(job: ShardJob, items: list[Any], result: ShardResult) -> Iterator[Record]:
    """The records of ``items`` that the reader accepts; the rest are counted in ``result``."""
    for item in items:
        for record in job.records(item):
            skip = (
                record if isinstance(record, Skip) else check_record(record, job.kind, record["__source__"])
            )
            if skip is None:
                yield record
            else:
                note_skip(result, skip)


def run_task(job: ShardJob, out: Path, prefix: str, index: int, items: list[Any]) -> ShardResult:
    """Write shard ``index`` from ``items`` (tar first, then its marker), unless its marker says done."""
    marker = marker_path(out, prefix, index)
    if read_marker(marker) is not None:
        return ShardResult(index, written=False)
    name = shard_name(prefix, index)
    for stale in glob.glob(str(out / f".{name}.partial-*")):  # left by an interrupted run
        os.remove(stale)
    tmp = out / f".{name}.partial-{os.getpid()}"
    result, keys, sources = ShardResult(index, written=True), [], []
    with wds.TarWriter(str(tmp), encoder=False, mtime=0) as sink:  # bytes as given; reproducible headers
        for record in _good_records(job, items, result):
            key = f"{index:06d}-{len(keys):06d}"  # dot-free: webdataset splits key and suffix at a dot
            members = {k: v for k, v in record.items() if not k.startswith("__")}
            sink.write({"__key__": key, **members})
            keys.append((key, digest(members)))
            sources.append(record["__source__"])
    if keys:
        verify_shard(str(tmp), job.kind, keys)
        os.replace(tmp, out / name)
    else:
        os.remove(tmp)  # the reader refuses a shard without samples: none is written
    result.count = len(keys)
    write_json_atomic(
        marker,
        {
            "params": job.params(),
            "shard": name if keys else None,
            "count": len(keys),
            "samples": [[k, s] for (k, _), s in zip(keys, sources)],
            "skipped": dict(result.skipped),
            "examples": result.examples,
        },
    )
    return result


# ------------------------------------------------------------------------------------- driver


@dataclass
class Summary:
    """A folder's shards after a run: totals over every finished shard, this run's and earlier ones'."""

    out: Path
    kind: Kind
    shards: list[str]
    count: int
    written: int
    """Shards this run wrote (the rest were finished before, or held no good sample)."""
    skipped: Counter
    examples: dict[str, list[str]]

    def lines(self) -> list[str]:
        head = f"{self.count} {self.kind} samples in {len(self.shards)} shards in {self.out} "
        out = [head + f"({self.written} written by this run); read them with urls: {self.out}/*.tar"]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            out.append(f"skipped {n}: {reason} (e.g. {'; '.join(self.examples.get(reason, []))})")
        return out


def json_normal(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params))  # tuples -> lists, as a marker reads back


def claim(out: Path, params: dict[str, Any], kind: Kind) -> None:
    """``out`` must be new, empty, or this tool's own output with the same params: nothing else that
    lives there is overwritten, and two settings never mix in one folder."""
    manifest = out / "manifest.json"
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} exists and is not a folder: give a new folder to write the shards to")
    if out.is_dir() and any(out.iterdir()):
        found = read_marker(manifest)
        if found is None or "params" not in found:
            raise UserInputError(
                f"{out} is not empty and holds no manifest.json of `jf shards`: give a new folder"
            )
        if found["params"] != params:
            raise UserInputError(
                f"{out} holds shards written with other settings ({manifest}: {found['params']}); "
                "give a new folder, or delete this one to rewrite it"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest, {"kind": kind, "params": params, "complete": False})


def _task(args: tuple) -> ShardResult:
    return run_task(*args)


def summarise(out: Path, prefix: str, kind: Kind, num_shards: int, written: int) -> Summary:
    shards, count, skipped, examples = [], 0, Counter(), {}
    for index in range(num_shards):
        marker = read_marker(marker_path(out, prefix, index)) or {}
        if marker.get("shard"):
            shards.append(marker["shard"])
        count += marker.get("count", 0)
        skipped.update(marker.get("skipped", {}))
        for reason, where in marker.get("examples", {}).items():
            examples.setdefault(reason, [])
            examples[reason] += where[: MAX_EXAMPLES - len(examples[reason])]
    return Summary(out, kind, shards, count, written, skipped, examples)


def write_shards(job: ShardJob, out: str | Path, processes: int = 1, prefix: str = "shard") -> Summary:
    """Write ``job``'s shards into ``out`` (``<prefix>-000000.tar`` ...) with ``processes`` worker
    processes, one shard per task; finished shards (done-marker present) are kept as they are."""
    out, params = Path(out), json_normal(job.params())
    plan = job.plan()  # before the folder is claimed: a mistake in the inputs leaves no folder behind
    if not plan:
        raise UserInputError(f"found no input samples for {out} (params: {params})")
    claim(out, params, job.kind)
    todo = [
        (job, out, prefix, i, items)
        for i, items in enumerate(plan)
        if read_marker(marker_path(out, prefix, i)) is None
    ]
    written = 0
    with tqdm(total=len(todo), unit="shard", desc=f"{job.kind} shards -> {out.name}") as bar:
        if processes > 1 and len(todo) > 1:
            with multiprocessing.Pool(min(processes, len(todo))) as pool:
                results = list(_progress(pool.imap_unordered(_task, todo), bar))
        else:
            results = list(_progress(map(_task, todo), bar))
    written = sum(r.written and r.count > 0 for r in results)
    summary = summarise(out, prefix, job.kind, len(plan), written)
    write_json_atomic(
        out / "manifest.json",
        {
            "kind": job.kind,
            "params": params,
            "complete": True,
            "shards": summary.shards,
            "count": summary.count,
            "skipped": dict(summary.skipped),
            "examples": summary.examples,
        },
    )
    return summary


def _progress(results: Iterator[ShardResult], bar: tqdm) -> Iterator[ShardResult]:
    samples = skipped = 0
    for result in results:
        samples, skipped = samples + result.count, skipped + sum(result.skipped.values())
        bar.set_postfix(samples=samples, skipped=skipped, refresh=False)
        bar.update(1)
        yield result
