"""``jf shards encode``: gen shards -> new gen shards that also hold ``latent.npy`` and ``siglip.npy``
(``targets.py`` says what they are), so a run skips the VAE and SigLIP on them.

Launched on several processes (``torchrun --nproc-per-node N -m jf_lightning shards encode ...``),
input shard i goes to rank ``i % WORLD_SIZE``; each rank uses its own GPU (``LOCAL_RANK``) when there
is one. Each output shard keeps its input's file name and sample keys, is written to a hidden temporary
name, read back through the reader, renamed, and then marked done (``<name>.done.json``), so a rerun
encodes only the unfinished shards. Input shards are only read.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from jf_lightning.data.sources import decode, expand_urls, iter_members
from jf_lightning.data.writing.targets import GenTargetEncoder, ModelSource
from jf_lightning.data.writing.writer import (
    ShardResult,
    Skip,
    Summary,
    claim,
    json_normal,
    note_skip,
    read_marker,
    write_json_atomic,
)
from jf_lightning.inputs import UserInputError

PRE_ENCODED = ("latent.npy", "siglip.npy")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _marker(out: Path, name: str) -> Path:
    return out / (name.removesuffix(".tar") + ".done.json")


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


class ShardEncoder:
    """Writes one pre-encoded shard per call, batch by batch (a shard's SigLIP targets may not fit in
    memory at once: 2.4 MB a sample at 384 px)."""

    def __init__(
        self,
        encoder: GenTargetEncoder,
        out: Path,
        params: dict,
        batch_size: int,
        siglip_dtype: str,
        keep_images: bool,
        decode_threads: int = 4,
    ):
        self.encoder, self.out, self.params, self.batch_size = encoder, out, params, batch_size
        self.pool = ThreadPoolExecutor(max(1, decode_threads))
        self.siglip_dtype, self.keep_images = np.dtype(siglip_dtype), keep_images
        self.latent_shape, self.target_shape = encoder.expected_shapes()

    def __call__(self, url: str, index: int) -> ShardResult:
        name = os.path.basename(url)
        marker = _marker(self.out, name)
        if read_marker(marker) is not None:
            return ShardResult(index, written=False)
        for stale in self.out.glob(f".{name}.partial-*"):  # left by an interrupted run
            stale.unlink()
        tmp = self.out / f".{name}.partial-{os.getpid()}"
        result, keys, batch = ShardResult(index, written=True), [], []
        with wds.TarWriter(str(tmp), encoder=False, mtime=0) as sink:  # bytes as given; reproducible headers
            for sample in self._samples(url, result):
                batch.append(sample)
                if len(batch) == self.batch_size:
                    keys += self._write(sink, self._prepared(batch, result))
                    batch = []
            keys += self._write(sink, self._prepared(batch, result))
        if keys:
            self._verify(str(tmp), keys)
            os.replace(tmp, self.out / name)
        else:
            tmp.unlink()  # the reader refuses a shard without samples
        result.count = len(keys)
        write_json_atomic(
            marker,
            {
                "params": self.params,
                "input": url,
                "shard": name if keys else None,
                "count": len(keys),
                "samples": [[k, k] for k in keys],
                "skipped": dict(result.skipped),
                "examples": result.examples,
            },
        )
        return result

    @staticmethod
    def _samples(url: str, result: ShardResult) -> Iterator[dict[str, Any]]:
        """The input shard's member groups; a shard that breaks off (truncated, not a tar) ends there,
        its samples before the break kept and the break counted."""
        try:
            for sample in iter_members(url, "gen"):
                if "__error__" in sample:  # a reader that reports a broken shard as a record
                    note_skip(result, Skip(f"input shard {sample['__error__']}", url))
                    return
                yield sample
        except (OSError, EOFError, tarfile.TarError, ValueError) as err:
            note_skip(result, Skip("input shard unreadable or truncated", f"{url}: {err}"))

    def _prepare(self, sample: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor] | Skip:
        # decoded without its pre-encoded members (if any), so the image is decoded and checked too
        members = {k: v for k, v in sample.items() if k not in PRE_ENCODED}
        try:
            raw = decode(members, "gen")
        except Exception as err:  # noqa: BLE001 (a refusal by the reader: the sample could never train)
            return Skip(f"refused by the reader ({getattr(err, 'reason', type(err).__name__)})", str(err))
        return members, self.encoder.pixels(raw.image)

    def _prepared(self, batch: list[dict[str, Any]], result: ShardResult) -> list[tuple[dict, torch.Tensor]]:
        """Decode and transform a batch on the thread pool (PIL releases the GIL while it decodes and
        resizes, so the threads overlap); refusals are counted in ``result``."""
        ready = []
        for item in self.pool.map(self._prepare, batch):
            if isinstance(item, Skip):
                note_skip(result, item)
            else:
                ready.append(item)
        return ready

    def _write(self, sink: wds.TarWriter, batch: list[tuple[dict, torch.Tensor]]) -> list[str]:
        if not batch:
            return []
        latents, targets = self.encoder.encode(
            torch.stack([pixels for _, pixels in batch])
        )  # (N, 3, S, S) in
        for i, (members, _) in enumerate(batch):
            record = {k: v for k, v in members.items() if k != "__url__"}
            if not self.keep_images:
                record = {k: v for k, v in record.items() if k.startswith("__") or k in ("txt", "json")}
            record["latent.npy"] = npy_bytes(latents[i])
            if targets is not None:
                record["siglip.npy"] = npy_bytes(targets[i].astype(self.siglip_dtype))
            sink.write(record)
        return [members["__key__"] for members, _ in batch]

    def _verify(self, path: str, keys: list[str]) -> None:
        """Read back through the reader: every key once, in order, with latents (and targets) of the
        model's shapes."""
        read = []
        for sample in iter_members(path, "gen"):
            raw = decode(sample, "gen")
            if (
                raw.latent is None
                or raw.latent.shape != self.latent_shape
                or (
                    self.target_shape is not None
                    and (raw.siglip is None or raw.siglip.shape != self.target_shape)
                )
            ):
                raise RuntimeError(
                    f"{path}: sample {raw.key!r} reads back without the expected latent/target shapes"
                )
            read.append(raw.key)
        if read != keys:
            raise RuntimeError(f"{path}: read back {len(read)} samples, wrote {len(keys)} (keys differ)")


def _claim_as_rank(out: Path, params: dict, rank: int, timeout_s: float = 600.0) -> None:
    """Rank 0 claims the folder; the others wait until it has (a folder one rank claims is theirs)."""
    if rank == 0:
        claim(out, params, "gen")
        return
    deadline = time.monotonic() + timeout_s
    while (found := read_marker(out / "manifest.json")) is None:
        if time.monotonic() > deadline:
            raise UserInputError(f"rank {rank}: rank 0 has not claimed {out} in {timeout_s:.0f} s")
        time.sleep(0.5)
    if found.get("params") != params:
        raise UserInputError(f"{out} holds shards written with other settings: give a new folder")


def run_encode(
    inputs: list[str],
    out: str | Path,
    model: ModelSource,
    batch_size: int = 32,
    device: str | None = None,
    siglip_dtype: str = "float32",
    keep_images: bool = True,
    decode_threads: int = 4,
) -> Summary:
    """Pre-encode the gen shards ``inputs`` into ``out`` for ``model``."""
    out = Path(out)
    try:
        urls = expand_urls(list(inputs))
    except (FileNotFoundError, ValueError) as err:
        raise UserInputError(str(err)) from None
    names = Counter(os.path.basename(u) for u in urls)
    if any(n > 1 for n in names.values()):
        twice = [n for n, c in names.items() if c > 1]
        raise UserInputError(f"input shards share file names {twice}: encode each folder into its own")
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
    params = json_normal(
        {
            "tool": "encode",
            "inputs": [os.path.abspath(u) for u in urls],
            **model.params(),
            "siglip_dtype": siglip_dtype,
            "keep_images": keep_images,
        }
    )  # as a marker reads back: tuples as lists
    rank, world = rank_and_world()
    _claim_as_rank(out, params, rank)
    mine = [
        (i, u)
        for i, u in enumerate(urls)
        if i % world == rank and read_marker(_marker(out, os.path.basename(u))) is None
    ]
    written = 0
    if mine:
        encoder = model.encoder(torch.device(device) if device else default_device())
        write = ShardEncoder(encoder, out, params, batch_size, siglip_dtype, keep_images, decode_threads)
        samples = 0
        with tqdm(total=len(mine), unit="shard", desc=f"encode rank {rank}/{world}", position=rank) as bar:
            for i, url in mine:
                result = write(url, i)
                written += result.count > 0
                samples += result.count
                bar.set_postfix(samples=samples, refresh=False)
                bar.update(1)
        write.pool.shutdown()
    return _summary(out, urls, params, written)


def _summary(out: Path, urls: list[str], params: dict, written: int) -> Summary:
    shards, count, skipped, examples, complete = [], 0, Counter(), {}, True
    for url in urls:
        marker = read_marker(_marker(out, os.path.basename(url)))
        if marker is None:
            complete = False  # another rank's shard, still being encoded
            continue
        shards += [marker["shard"]] if marker["shard"] else []
        count += marker["count"]
        skipped.update(marker["skipped"])
        for reason, where in marker["examples"].items():
            examples.setdefault(reason, []).extend(where[: 3 - len(examples.get(reason, []))])
    if complete:
        write_json_atomic(
            out / "manifest.json",
            {
                "kind": "gen",
                "params": params,
                "complete": True,
                "shards": shards,
                "count": count,
                "skipped": dict(skipped),
                "examples": examples,
            },
        )
    return Summary(out, "gen", shards, count, written, skipped, examples)
