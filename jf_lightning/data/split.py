"""Each source's records split over the readers of a run, and found again by number.

A run has ``S`` readers ("slots": processes x loader workers, ``stream.py`` says which slot builds which
batch). For each source, one of two rules, by shard count ``n``:
- dealt (``n >= S``): a permutation of the shards seeded by (seed, kind, source) is dealt round robin;
  slot ``s`` reads shards ``s, s + S, ...`` of it, each epoch in its own seeded order;
- strided (``n < S``): every slot reads every shard, in one seeded order per epoch shared by all slots,
  and takes the records whose number within the epoch is ``s`` modulo ``S`` (the others are skipped
  unread: a header read each on a local shard).
Under both, each record of an epoch is read by exactly one slot. A slot's epoch is its own pass over
what it reads, so slots holding more records turn over later.

A slot's records are numbered from the run's origin (position 0, 1, ...). ``SlotReader.read(p, c)``
returns records ``p .. p + c - 1``; a position not reached by reading is found by counting the shards'
records (``reader.count_records``, header reads on local shards, cached), so a resumed run starts where
the interrupted one stood without reading what came before. Error records (a broken shard) take a
number like any record, so counting and reading agree.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from jf_lightning.data.mixing import apportion, integer_ratio
from jf_lightning.data.reader import BadSample, SkipLog, count_records, iter_records
from jf_lightning.data.sources import MEMBERS, Kind, RawSample, SourceConfig, decode


class SlotReader:
    """The records of one source that one slot reads, epoch after epoch (module docstring).

    ``shuffle=False`` keeps the shards in the given order every epoch (validation's fixed order).
    """

    def __init__(
        self, urls: list[str], kind: Kind, slot: int, num_slots: int, seed_key: str, shuffle: bool = True
    ):
        self.kind, self.slot, self.num_slots = kind, slot, num_slots
        self.wanted = MEMBERS[kind]
        self.strided = len(urls) < num_slots
        shards = list(urls)
        if not self.strided:
            if shuffle:
                random.Random(f"{seed_key}/deal").shuffle(shards)  # str seeds hash the same everywhere
            shards = shards[slot::num_slots]
        self.shards, self.shuffle, self._seed_key = shards, shuffle, seed_key
        self._counts: dict[str, int] = {}
        self._records: Iterator[dict[str, Any]] | None = None
        self._pos = -1

    def order(self, epoch: int) -> list[str]:
        """The slot's shards in the order epoch ``epoch`` reads them."""
        order = list(self.shards)
        if self.shuffle:
            salt = "all" if self.strided else str(self.slot)  # strided slots share the order
            random.Random(f"{self._seed_key}/{epoch}/{salt}").shuffle(order)
        return order

    def _count(self, url: str) -> int:
        if url not in self._counts:
            self._counts[url] = count_records(url, self.wanted)
        return self._counts[url]

    def _too_few(self, total: int) -> ValueError:
        return ValueError(
            f"{self.kind} shards {self.shards[0]} ... ({len(self.shards)}) hold {total} samples, fewer than the "
            f"{self.num_slots} readers (processes x loader workers) that split them: use fewer data.num_workers"
        )

    def locate(self, position: int) -> tuple[int, int, int]:
        """(epoch, shard index in that epoch's order, record number in the shard) of ``position``."""
        if position == 0:
            return 0, 0, 0
        total = sum(self._count(url) for url in self.shards)
        if self.strided:
            per_epoch = len(range(self.slot, total, self.num_slots))
            if per_epoch == 0:
                raise self._too_few(total)
            epoch, within = divmod(position, per_epoch)
            number = self.slot + self.num_slots * within  # the record's number within the epoch
        else:
            if total == 0:
                raise self._too_few(total)
            epoch, number = divmod(position, total)
        for index, url in enumerate(self.order(epoch)):
            if number < self._count(url):
                return epoch, index, number
            number -= self._count(url)
        raise AssertionError("unreachable: the epoch holds the position")

    def _stream(self, epoch: int, shard: int, first: int) -> Iterator[dict[str, Any]]:
        """Records from record ``first`` of shard ``shard`` of epoch ``epoch`` on, forever."""
        while True:
            order, took = self.order(epoch), 0
            base = sum(self._count(url) for url in order[:shard]) if self.strided and shard else 0
            for url in order[shard:]:

                def wanted(number: int, offset: int = base, start: int = first) -> bool:
                    mine = not self.strided or (offset + number) % self.num_slots == self.slot
                    return number >= start and mine

                last = -1
                for number, record in iter_records(url, self.wanted, read=wanted):
                    last = number
                    if wanted(number):
                        took += 1
                        yield record
                self._counts.setdefault(url, last + 1)
                base, first = base + last + 1, 0
            if took == 0 and shard == 0:
                raise self._too_few(base)
            epoch, shard = epoch + 1, 0

    def read(self, position: int, count: int) -> list[dict[str, Any]]:
        """Records ``position .. position + count - 1`` of the slot's stream."""
        if self._records is None or position != self._pos:
            self._records = self._stream(*self.locate(position))
        self._pos = position + count
        return [next(self._records) for _ in range(count)]


def source_label(source: SourceConfig, index: int) -> str:
    urls = list(source.urls)
    return f"{source.kind} source {index} ({urls[0]}" + (
        f" + {len(urls) - 1} shards)" if len(urls) > 1 else ")"
    )


class KindReader:
    """The decoded samples of one kind that one slot reads, its sources interleaved by weight.

    Position ``p`` of the kind is split over the sources by the same sequential apportionment as the
    ratio schedule (``mixing.apportion`` of ``p`` by the weights), so source ``i`` is at position
    ``apportion(p, weights)[i]``: a function of ``p`` alone. Records that fail to decode are dropped
    and counted in ``skips``; the batch is then that much shorter (not refilled, so that every batch
    stays a function of its index).
    """

    def __init__(
        self,
        sources: list[SourceConfig],
        slot: int,
        num_slots: int,
        seed_key: str,
        skips: SkipLog,
        draft_size: int | None = None,
    ):
        self.kind, self.skips, self.draft_size = sources[0].kind, skips, draft_size
        self.readers = [
            SlotReader(list(s.urls), s.kind, slot, num_slots, f"{seed_key}/{s.kind}/{i}")
            for i, s in enumerate(sources)
        ]
        self.labels = [source_label(s, i) for i, s in enumerate(sources)]
        self.weights = integer_ratio([s.weight for s in sources])

    def take(self, position: int, count: int) -> list[RawSample]:
        """The usable samples among records ``position .. position + count - 1`` of the kind."""
        before, after = apportion(position, self.weights), apportion(position + count, self.weights)
        out = []
        for reader, label, lo, hi in zip(self.readers, self.labels, before, after):
            for record in reader.read(lo, hi - lo):
                raw = decode_or_skip(record, self.kind, label, self.skips, self.draft_size)
                if raw is not None:
                    out.append(raw)
        return out


def decode_or_skip(
    record: dict[str, Any], kind: Kind, label: str, skips: SkipLog, draft_size: int | None = None
) -> RawSample | None:
    """The decoded record, or None after counting why it cannot be used."""
    if "__error__" in record:
        skips.skip(label, record["__error__"], record["__url__"], record["__key__"], record["__detail__"])
        return None
    try:
        raw = decode(record, kind, draft_size)
    except BadSample as bad:
        skips.skip(label, bad.reason, bad.url, bad.key, bad.detail)
        return None
    skips.ok(label)
    return raw
