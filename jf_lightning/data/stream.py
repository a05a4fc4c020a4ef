"""The loader workers' dataset: global batch index -> one whole ``PackedBatch``, a pure function of
(seed, origin, batch index, number of readers).

Numbering: loader worker ``w`` of ``W`` on rank ``r`` of ``N`` builds global batches
``b = start + r + N * (w + W * i)``, i = 0, 1, ... (the DataLoader hands its workers' batches out round
robin, so rank ``r`` trains on ``start + r, start + r + N, ...`` in order). Batch ``b`` is built by
reader slot ``b mod S`` (``S = N x W``): the worker that builds it plays that slot, whichever worker it
is, so a run restarted at any batch (a multiple of ``N``) reads exactly what an unbroken run reads.

What batch ``b`` holds:
- how many samples of each kind: the ratio schedule at ``count_index(b)`` (the ``N`` batches of one
  micro-step share their counts, so no rank waits at the all-reduce for another's extra samples);
- which records: kind ``k`` of slot ``s`` is at position ``P_k`` = the samples of kind ``k`` in the
  slot's earlier batches since ``origin``; the batch takes records ``P_k .. P_k + count_k - 1`` of the
  slot's kind reader (``split.py`` says which records a slot reads, in which order);
- crops and prompt drops: an RNG seeded by (seed, b).
No state is carried from batch to batch (the packer keeps no leftovers: every batch packs exactly its
own samples), so restoring ``start`` restores the stream.

Skipped records leave their batch shorter; a batch whose every record was skipped is refused (it
could not train). Samples longer than ``seq_len``: a text is cut to ``seq_len`` tokens (it loses its
EOS) and counted as ``truncated_text``; an understanding or generation sample is skipped as
``too_long`` (cutting would drop its answer or its image). Each batch carries the counts of the
records skipped while building it (``data_stats``) and its samples' keys (``sample_keys``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jf_lightning.batch import PackedBatch
from jf_lightning.data.mixing import RatioSchedule, apportion
from jf_lightning.data.packing import normalise_pixels, pack
from jf_lightning.data.reader import DataStop, SkipLog
from jf_lightning.data.sources import KINDS, Kind, RawSample, SourceConfig
from jf_lightning.data.split import KindReader, SlotReader, decode_or_skip
from jf_lightning.data.templates import Templater
from jf_lightning.data.transforms import gen_square, und_square
from jf_lightning.inputs import UserInputError

_TRAIN, _VAL = 0, 1  # RNG stream tags: validation never shares random numbers with training


class PackedBatchStream(IterableDataset):
    """Builds whole packed batches. ``num_batches=None``: the infinite training stream (module
    docstring); otherwise the finite validation stream of batches ``0 .. num_batches - 1`` read in a
    fixed order (every source's shards in turn, the same batches whatever the worker count), without
    prompt drop."""

    def __init__(
        self,
        sources: dict[Kind, list[SourceConfig]],
        schedule: RatioSchedule,
        templater: Templater,
        batch_size: int,
        seq_len: int,
        image_size: int,
        prompt_drop_prob: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        num_batches: int | None = None,
        origin: int = 0,
        max_consecutive_bad_samples: int = 100,
    ):
        self.sources, self.schedule, self.templater = sources, schedule, templater
        self.batch_size, self.seq_len, self.image_size = batch_size, seq_len, image_size
        self.prompt_drop_prob, self.seed = prompt_drop_prob, seed
        self.rank, self.world_size, self.start, self.num_batches = rank, world_size, start, num_batches
        self.origin, self.max_consecutive_bad_samples = origin, max_consecutive_bad_samples

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skips = SkipLog(self.max_consecutive_bad_samples)
        step = self.world_size * num_workers
        b = self.start + self.rank + self.world_size * worker
        if self.num_batches is not None:
            urls = {k: [u for s in srcs for u in s.urls] for k, srcs in self.sources.items()}
            readers = {k: SlotReader(u, k, 0, 1, "val", shuffle=False) for k, u in urls.items()}
            for index in range(b, self.start + self.num_batches, step):
                yield self._build(index, self._val_records(index, readers, skips), skips, train=False)
            return
        slot, key = b % step, f"{self.seed}/{self.origin}"
        kinds = {k: KindReader(s, slot, step, key, skips, self.image_size) for k, s in self.sources.items()}
        positions = self.positions(b, step)
        while True:
            counts = self.schedule.kind_counts(self.count_index(b), self.batch_size)
            raws = {k: kinds[k].take(positions[k], counts[k]) for k in KINDS if counts[k]}
            yield self._build(b, raws, skips, train=True)
            positions = {k: positions[k] + counts[k] for k in KINDS}
            b += step

    def positions(self, b: int, num_slots: int) -> dict[Kind, int]:
        """Samples of each kind that slot ``b mod num_slots`` took in its batches before ``b``."""
        totals = dict.fromkeys(KINDS, 0)
        for earlier in range(self.origin + (b - self.origin) % num_slots, b, num_slots):
            for kind, n in self.schedule.kind_counts(self.count_index(earlier), self.batch_size).items():
                totals[kind] += n
        return totals

    def count_index(self, b: int) -> int:
        """Which entry of the schedule's count sequence batch ``b`` takes. Training: the ``world_size``
        batches that ranks train side by side (``b // world_size``, one micro-step) take the same kind
        counts, so no rank waits at the gradient all-reduce for another's extra generation samples (a
        generation sample costs about three understanding samples); the schedule then counts in
        micro-steps. Validation counts its fixed sequence batch by batch (its offsets do)."""
        return b // self.world_size if self.num_batches is None else b

    def _val_records(
        self, b: int, readers: dict[Kind, SlotReader], skips: SkipLog
    ) -> dict[Kind, list[RawSample]]:
        counts = self.schedule.kind_counts(b, self.batch_size)
        out = {}
        for kind in KINDS:
            if counts[kind]:  # offset of batch b in this kind's fixed order = its samples before b
                offset = apportion(b * self.batch_size, self.schedule.ratios[0])[KINDS.index(kind)]
                records = readers[kind].read(offset, counts[kind])
                out[kind] = [r for r in (decode_or_skip(x, kind, f"val {kind}", skips) for x in records) if r]
        return out

    def _build(self, b: int, raws: dict[Kind, list[RawSample]], skips: SkipLog, train: bool) -> PackedBatch:
        """Batch ``b`` from its decoded samples; every random choice from the (seed, b) RNG."""
        rng = np.random.default_rng([self.seed, _TRAIN if train else _VAL, b])
        crops = torch.Generator().manual_seed(int(rng.integers(2**62)))
        samples, keys = [], []
        for kind in KINDS:
            for raw in raws.get(kind, []):
                sample = self._sample(raw, rng, crops, train, skips)
                if sample is not None:
                    samples.append(sample)
                    keys.append(f"{raw.kind}:{raw.url}#{raw.key}")
        if not samples:
            raise DataStop(f"data: every sample of batch {b} was skipped (see the warnings above): check the shards")
        batch = pack(samples, self.seq_len, self.templater.pad, b, self.image_size, normalise=False)
        batch.sample_keys, batch.data_stats = keys, skips.take()
        return batch

    def _sample(
        self, raw: RawSample, rng: np.random.Generator, crops: torch.Generator, train: bool, skips: SkipLog
    ):
        pixels = None
        if raw.image is not None and raw.kind == "und":
            pixels = und_square(raw.image, self.image_size)  # uint8: pack normalises
        elif raw.image is not None:
            pixels = gen_square(raw.image, self.image_size, crops)
        drop = train and raw.kind == "gen" and bool(rng.random() < self.prompt_drop_prob)
        sample = self.templater.from_raw(raw, pixels, drop_prompt=drop)
        if len(sample) <= self.seq_len:
            return sample
        if raw.kind == "text":
            skips.count("truncated_text")
            return self.templater.text(raw.text or "", max_len=self.seq_len)
        detail = f"has {len(sample)} tokens, more than data.seq_len={self.seq_len}"
        skips.skip(f"{raw.kind} samples", "too_long", raw.url, raw.key, detail, streak=False)
        return None


class StreamLoader(DataLoader):
    """Hands out the workers' batches, their images normalised to [-1, 1] floats unless ``normalise``
    is False (workers ship uint8 pixels, a quarter of the bytes; under a Lightning Trainer the
    DataModule normalises them on the device, after the copy), and turns a worker's ``DataStop`` (too
    many bad samples in a row) into its one line. ``start_fn`` (training) points the dataset at the
    next batch each time iteration begins (a new epoch after ``limit_train_batches`` continues the
    stream instead of replaying it)."""

    def __init__(self, dataset: PackedBatchStream, start_fn=None, normalise: bool = True, **kwargs):
        super().__init__(dataset, **kwargs)
        self._start_fn, self._normalise = start_fn, normalise

    def __iter__(self):
        if self._start_fn is not None:
            self._start_fn(self.dataset)  # sets start and origin; workers are forked after this and copy them
        return _handed_out(super().__iter__(), self._normalise)


def _handed_out(batches, normalise: bool):
    try:
        for batch in batches:
            yield normalise_pixels(batch) if normalise else batch
    except DataStop as err:  # from a worker, the message holds its traceback: keep the last line
        raise UserInputError(str(err).strip().splitlines()[-1].split("DataStop: ")[-1]) from None
