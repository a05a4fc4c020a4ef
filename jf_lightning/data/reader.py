"""Reading one tar shard into records (the members of one sample), with its failures made data.

A record is the run of consecutive members sharing a key (webdataset's grouping, by its own
``base_plus_ext``). Records are numbered in tar order, and the numbering is the same whether a record's
bytes are read or not: a stream positions itself by record numbers without reading the records it
skips (local shards are read through ``tarfile``'s seeking mode, so a skipped member costs a header
read). Only members the layout names are ever read (never a ``.pyd`` / ``.pickle``).

A shard that cannot be read to its end yields, in place of the rest, one *error record*
(``{"__error__": reason, ...}``), numbered like any record, so that counting a shard's records and
reading them agree even on broken shards:
- ``empty_shard``: a zero-byte file, or a tar holding no record of the kind;
- ``unreadable_shard``: not a tar, or a remote stream that fails to open;
- ``truncated_shard``: the file ends inside a member (the records before it are read as usual).
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

log = logging.getLogger(__name__)

SKIP_REASONS = (
    "missing_member",
    "bad_image",
    "bad_json",
    "bad_text",
    "empty_text",
    "bad_array",
    "too_long",
    "empty_shard",
    "unreadable_shard",
    "truncated_shard",
)
"""Why a record was skipped: logged as ``data/skipped/<reason>``."""
WARN_FIRST = 3
"""Records of each reason named in a warning (shard and key), per loader worker."""


class BadSample(ValueError):
    """A record that cannot become a training sample; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, url: str, key: str, message: str):
        super().__init__(f"shard {url}: sample {key!r} {message}")
        self.reason, self.url, self.key, self.detail = reason, url, key, message


def local_path(url: str) -> str | None:
    """The file path of a local shard URL, None for a remote one."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return parsed.path
    return url if parsed.scheme == "" else None


def _error(url: str, reason: str, detail: str) -> dict[str, Any]:
    return {"__key__": "", "__url__": url, "__error__": reason, "__detail__": detail}


def _open(url: str) -> tuple[tarfile.TarFile, int | None, Any] | dict[str, Any]:
    """(tar, file size or None for a remote stream, the remote stream to close) or an error record."""
    path = local_path(url)
    try:
        if path is None:
            stream = gopen(url, "rb")  # tarfile leaves a stream it was given open: closed by the caller
            return tarfile.open(fileobj=stream, mode="r|*"), None, stream  # remote: read through
        size = os.path.getsize(path)
        if size == 0:
            return _error(url, "empty_shard", "is a zero-byte file")
        return tarfile.open(path, mode="r:"), size, None  # seekable: unread members are skipped by seeking
    except (tarfile.TarError, OSError, EOFError) as exc:
        return _error(url, "unreadable_shard", f"is not a readable tar ({exc})")


def iter_records(
    url: str, wanted: frozenset[str], read: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(index, record)`` for each record of the shard, in order; ``record`` is None where ``read``
    says the record at that index is not wanted (its bytes are then not read from a local shard).

    A record is ``{"__key__", "__url__", suffix: bytes, ...}`` holding only the ``wanted`` suffixes
    (lower-cased); an error record (module docstring) ends the shard.
    """
    opened = _open(url)
    if isinstance(opened, dict):
        yield 0, opened
        return
    tar, size, stream = opened
    index, key, record = -1, None, None
    try:
        for info in tar:
            if not info.isfile():
                continue
            prefix, suffix = base_plus_ext(info.name)
            if suffix is None or suffix.lower() not in wanted:
                continue
            if prefix != key:
                if index >= 0:
                    yield index, record
                index, key = index + 1, prefix
                record = {"__key__": prefix, "__url__": url} if read is None or read(index) else None
            if size is not None and info.offset_data + info.size > size:
                yield (
                    index,
                    _error(url, "truncated_shard", f"ends inside member {info.name!r}") | {"__key__": prefix},
                )
                return
            data = tar.extractfile(info).read() if record is not None or size is None else None
            if record is not None:
                record.setdefault(suffix.lower(), data)
    except (tarfile.TarError, OSError, EOFError) as exc:
        detail = f"cannot be read past record {index} ({exc})"
        yield max(index, 0), _error(url, "truncated_shard", detail) | {"__key__": key or ""}
        return
    finally:
        tar.close()
        if stream is not None:
            stream.close()
    if index >= 0:
        yield index, record
    else:
        yield 0, _error(url, "empty_shard", "holds no member of this kind")


def count_records(url: str, wanted: frozenset[str]) -> int:
    """Records of the shard as ``iter_records`` numbers them (error records included)."""
    return sum(1 for _ in iter_records(url, wanted, read=lambda i: False))


def shard_is_empty(path: str) -> bool:
    """True for a zero-byte local file or a tar that ends before its first member (cheap: one block)."""
    if os.path.getsize(path) == 0:
        return True
    with open(path, "rb") as f:
        return f.read(512).count(0) == 512


class SkipLog:
    """Skipped records of one loader worker: counts by reason (``take`` hands the counts since the
    last call to the batch being built), the first few of each reason named in a warning, and a stop
    once one source fails ``max_in_a_row`` records in a row."""

    def __init__(self, max_in_a_row: int = 100):
        self.max_in_a_row = max_in_a_row
        self._counts: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._in_a_row: Counter[str] = Counter()

    def ok(self, source: str) -> None:
        self._in_a_row[source] = 0

    def skip(self, source: str, reason: str, url: str, key: str, detail: str, streak: bool = True) -> None:
        """Count a skipped record; ``streak=False`` for a sample that is well formed but unusable
        here (too long): it never counts towards a run of failures."""
        self._counts[reason] += 1
        self._seen[reason] += 1
        if self._seen[reason] <= WARN_FIRST:
            log.warning("data: %s: skipped sample %r of shard %s (%s): %s", source, key, url, reason, detail)
        if not streak:
            return
        self._in_a_row[source] += 1
        if self._in_a_row[source] > self.max_in_a_row:
            raise DataStop(
                f"data: {self._in_a_row[source]} samples in a row of {source} failed (last: {reason}, shard {url} "
                f"sample {key!r} {detail}); fix or remove the shards, or raise data.max_consecutive_bad_samples"
            )

    def count(self, reason: str, n: int = 1) -> None:
        """A record that is not skipped but altered (a truncated text)."""
        self._counts[reason] += n

    def take(self) -> dict[str, int]:
        counts, self._counts = dict(self._counts), Counter()
        return counts


class DataStop(RuntimeError):
    """Too many failures in a row: the run stops with this one line."""
