"""The LightningDataModule: WebDataset sources -> whole ``PackedBatch``es built inside loader workers.

Batch numbering: loader worker ``w`` of ``W`` on DDP rank ``r`` of ``N`` builds the global batch indices
``b = start + r + N * (w + W * i)``, i = 0, 1, ... The DataLoader hands out its workers' items round
robin, so rank ``r`` trains on ``start + r, start + r + N, ...`` in order, and every batch is a pure
function of (seed, b) except for which samples the per-worker streams deliver: kind counts (from the
ratio schedule), source choices, crops and prompt drops all come from a per-batch RNG seeded by
(seed, b). The N batches ``b // N = m`` that the ranks train side by side share their kind counts
(equal work per rank at the gradient all-reduce).

The ratio schedule is written in optimizer steps (as the paper's Table 1); one optimizer step is
``accumulate_grad_batches`` micro-steps of N batches, so the schedule is stretched to micro-steps.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jf_lightning.batch import PackedBatch
from jf_lightning.data.mixing import RatioSchedule, apportion
from jf_lightning.data.packing import pack
from jf_lightning.data.sources import KINDS, Kind, OrderedStream, RawSample, ResampledStream, SourceConfig
from jf_lightning.data.templates import Templater, TemplateStyle
from jf_lightning.data.transforms import gen_transform, und_transform
from jf_lightning.inputs import UserInputError

_TRAIN, _VAL = 0, 1  # RNG stream tags: validation never shares random numbers with training


class PackedBatchStream(IterableDataset):
    """Builds whole packed batches. ``num_batches=None``: infinite training stream from resampled
    shards; otherwise a finite validation stream of batches ``0 .. num_batches - 1`` read in a fixed
    order (the same batches whatever the worker count), without prompt drop."""

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
    ):
        self.sources, self.schedule, self.templater = sources, schedule, templater
        self.batch_size, self.seq_len, self.image_size = batch_size, seq_len, image_size
        self.prompt_drop_prob, self.seed = prompt_drop_prob, seed
        self.rank, self.world_size, self.start, self.num_batches = rank, world_size, start, num_batches

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.num_batches is None:
            # The start index is part of the key so a resumed run does not replay the first shards.
            key = f"{self.seed}/{self.start}/{self.rank}/{worker}"
            streams: dict = {k: ResampledStream(s, key) for k, s in self.sources.items()}
        else:
            streams = {k: OrderedStream(s) for k, s in self.sources.items()}
        for i in itertools.count():
            b = self.start + self.rank + self.world_size * (worker + num_workers * i)
            if self.num_batches is not None and b >= self.start + self.num_batches:
                return
            yield self.build(b, streams)

    def build(self, b: int, streams: dict) -> PackedBatch:
        """Batch ``b``: kind counts from the schedule, every random choice from the (seed, b) RNG."""
        train = self.num_batches is None
        counts = self.schedule.kind_counts(self.count_index(b), self.batch_size)
        rng = np.random.default_rng([self.seed, _TRAIN if train else _VAL, b])
        crops = torch.Generator().manual_seed(int(rng.integers(2**62)))
        samples = []
        for kind in KINDS:
            if counts[kind] == 0:
                continue
            if train:
                raws = [streams[kind].next(rng) for _ in range(counts[kind])]
            else:  # offset of batch b in this kind's fixed order = samples of this kind before it
                offset = apportion(b * self.batch_size, self.schedule.ratios[0])[KINDS.index(kind)]
                raws = streams[kind].read(offset, counts[kind])
            samples += [self._sample(raw, rng, crops, train) for raw in raws]
        pad = self.templater.pad
        return pack(samples, self.seq_len, pad, batch_index=b, image_size=self.image_size)

    def count_index(self, b: int) -> int:
        """Which entry of the schedule's count sequence batch ``b`` takes. Training: the ``world_size``
        batches that ranks train side by side (``b // world_size``, one micro-step) take the same kind
        counts, so no rank waits at the gradient all-reduce for another's extra generation samples (a
        generation sample costs about three understanding samples); the schedule then counts in
        micro-steps. Validation counts its fixed sequence batch by batch (its offsets below do)."""
        return b // self.world_size if self.num_batches is None else b

    def _sample(self, raw: RawSample, rng: np.random.Generator, crops: torch.Generator, train: bool):
        pixels = None
        if raw.image is not None and raw.kind == "und":
            pixels = und_transform(raw.image, self.image_size)
        elif raw.image is not None:
            pixels = gen_transform(raw.image, self.image_size, crops)
        drop = train and raw.kind == "gen" and bool(rng.random() < self.prompt_drop_prob)
        return self.templater.from_raw(raw, pixels, drop_prompt=drop, max_text_len=self.seq_len)


class _StreamLoader(DataLoader):
    """Sets the dataset's start index each time iteration begins (a new epoch after
    ``limit_train_batches`` continues the stream instead of replaying it)."""

    def __init__(self, dataset: PackedBatchStream, start_fn, **kwargs):
        super().__init__(dataset, **kwargs)
        self._start_fn = start_fn

    def __iter__(self):
        self.dataset.start = self._start_fn()  # workers are forked after this and copy the new start
        return super().__iter__()


def _group(sources: list[SourceConfig], key: str, root: str | None) -> dict[Kind, list[SourceConfig]]:
    """Sources by kind, their patterns expanded to shard lists (relative local ones under ``root``);
    a missing shard is a one-line error naming the config key, before training starts."""
    resolved = []
    for i, source in enumerate(sources):
        try:
            resolved.append(_under_root(source, root).resolved())
        except (FileNotFoundError, ValueError) as err:
            hint = ""
            if any(_is_relative(u) for u in ([source.urls] if isinstance(source.urls, str) else source.urls)):
                where = f"under data.data_root {root!r}" if root else "in the working directory (data.data_root is unset)"
                hint = (f"; relative patterns are looked up {where}: set data.data_root (the recipes read it "
                        "from $JF_DATA_ROOT) to the folder holding your shards (data/README.md)")  # fmt: skip
            raise UserInputError(f"data.{key}[{i}]: {err}{hint}") from None
    return {k: [s for s in resolved if s.kind == k] for k in KINDS if any(s.kind == k for s in resolved)}


def _is_relative(url: str) -> bool:
    return "://" not in url and not url.startswith(("/", "pipe:", "file:"))


def _under_root(source: SourceConfig, root: str | None) -> SourceConfig:
    """``source`` with its relative local patterns joined to ``root``."""
    if root is None:
        return source
    patterns = [source.urls] if isinstance(source.urls, str) else list(source.urls)
    joined = [os.path.join(root, u) if _is_relative(u) else u for u in patterns]
    return replace(source, urls=joined[0] if isinstance(source.urls, str) else joined)


class JanusFlowDataModule(LightningDataModule):
    """WebDataset sources of three kinds -> mixed, templated, packed ``PackedBatch``es.

    The kinds are mixed by a step schedule; batches are built whole in the loader workers and numbered
    globally (see the module docstring). Hooks ``on_before_batch_transfer`` to learn which batch the
    training loop consumed (for ``state_dict``): a LightningModule override of that hook is ignored
    by Lightning while this one exists.
    """

    def __init__(
        self,
        sources: list[SourceConfig],
        tokenizer: str,
        val_sources: list[SourceConfig] | None = None,
        image_size: int = 384,
        num_und_tokens: int = 576,
        num_gen_tokens: int = 576,
        ratio_schedule: list[tuple[int, tuple[float, float, float]]] = ((0, (30.0, 50.0, 20.0)),),
        batch_size: int = 16,
        seq_len: int = 4096,
        prompt_drop_prob: float = 0.1,
        template: TemplateStyle = "pretrain",
        num_workers: int = 4,
        seed: int = 0,
        val_batches: int = 8,
        data_root: str | None = None,
        global_batch_size: int | None = None,
    ):
        """
        Args:
            sources: Training sources (shard pattern, kind, weight within its kind).
            tokenizer: Hub id or local directory for ``AutoTokenizer.from_pretrained``; it must have
                bos/eos/pad tokens and ``<begin_of_image>``, ``<end_of_image>``, ``<image_placeholder>``.
            val_sources: Validation sources; None = no validation batches.
            image_size: Side of the square images, both tasks (384 for the release, 256 in ablations).
            num_und_tokens: Understanding-encoder tokens per image (576 = (384 / 16)^2).
            num_gen_tokens: Latent tokens per generated image (576 = 48^2 latent / 2x2 patches).
            ratio_schedule: ``[[start_step, [und, gen, text]], ...]`` in optimizer steps, first at 0.
                Validation uses the last ratio (the mix the run settles into), restricted to the
                kinds ``val_sources`` provide.
            batch_size: Samples per batch (per rank and micro-batch), packed into a varying row count.
            seq_len: Tokens per packed row.
            prompt_drop_prob: Chance that a generation prompt is dropped (classifier-free guidance).
            template: ``pretrain`` (paper's pre-training formats) or ``sft`` (User/Assistant chat).
            num_workers: DataLoader workers; each builds whole batches.
            seed: Seeds every random choice (with the batch index) and the per-worker shard streams.
            val_batches: Number of validation batches (a fixed sequence).
            data_root: Folder that relative local shard patterns of ``sources`` and ``val_sources`` are
                looked up in (None: the working directory). The paper's recipes set it from
                ``$JF_DATA_ROOT``.
            global_batch_size: Samples per optimizer step over all processes. Given, the CLI sets
                ``trainer.accumulate_grad_batches`` to ``global_batch_size / (batch_size x world size)``
                and refuses a world size that cannot make it; None: ``batch_size`` per process and
                micro-step, with the trainer's own accumulation.
        """
        super().__init__()
        if not 0.0 <= prompt_drop_prob <= 1.0:
            raise ValueError(f"prompt_drop_prob must be in [0, 1], got {prompt_drop_prob}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        self.sources, self.val_sources, self.tokenizer_source = list(sources), val_sources, tokenizer
        self.image_size, self.num_und_tokens, self.num_gen_tokens = image_size, num_und_tokens, num_gen_tokens
        try:
            self.schedule = RatioSchedule(ratio_schedule)
        except ValueError as err:
            raise UserInputError(f"data.ratio_schedule: {err}") from None
        self.batch_size, self.seq_len, self.prompt_drop_prob = batch_size, seq_len, prompt_drop_prob
        self.template, self.num_workers, self.seed = template, num_workers, seed
        self.val_batches, self.data_root, self.global_batch_size = val_batches, data_root, global_batch_size
        if global_batch_size is not None and global_batch_size % batch_size:
            raise UserInputError(
                f"data.global_batch_size {global_batch_size} is not a multiple of data.batch_size {batch_size} "
                "(the per-device micro-batch): change either"
            )
        self._tokenizer = None
        self._train: dict[Kind, list[SourceConfig]] | None = None
        self._val: dict[Kind, list[SourceConfig]] | None = None
        self._start = 0  # first global batch index of the next training iteration
        self._last_index: int | None = None  # last training batch index seen by the training loop

    @property
    def tokenizer(self):
        """The loaded tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer  # heavy import, only when a tokenizer is needed

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_source)
        return self._tokenizer

    def _dist(self) -> tuple[int, int, int]:
        """(rank, world_size, batches per optimizer step)."""
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size(), dist.get_world_size() * accumulate
        if trainer is not None:
            return trainer.global_rank, trainer.world_size, trainer.world_size * accumulate
        return 0, 1, accumulate

    def accumulation(self, world_size: int) -> int | None:
        """Micro-steps per optimizer step that make ``global_batch_size`` on ``world_size`` processes
        (None without a global batch size); a one-line error when no whole number does."""
        if self.global_batch_size is None:
            return None
        per_micro_step = self.batch_size * world_size
        if self.global_batch_size % per_micro_step:
            raise UserInputError(
                f"data.global_batch_size {self.global_batch_size} cannot be made by {world_size} process(es) of "
                f"data.batch_size {self.batch_size}: it must be a multiple of {per_micro_step}; change "
                "data.batch_size or the number of processes"
            )
        return self.global_batch_size // per_micro_step

    def setup(self, stage: str | None = None) -> None:
        """Check every shard pattern and the tokenizer before any training step."""
        if stage in (None, "fit") and self._train is None:
            self._train = _group(self.sources, "sources", self.data_root)
            missing = sorted(self.schedule.kinds_used() - set(self._train))
            if missing:
                raise ValueError(
                    f"ratio_schedule draws {missing} samples but no training source has that kind"
                )
        if stage in (None, "fit", "validate") and self.val_sources:
            if self._val is None:
                self._val = _group(self.val_sources, "val_sources", self.data_root)
            self._check_val_share()  # every time: the world size is known only once the trainer runs
        self._templater()

    def _check_val_share(self) -> None:
        # Unequal shares of the validation batches would hang DDP: the rank with one batch more waits
        # in a collective of its extra step that the others never join.
        world = self._dist()[1]
        if self.val_batches % world:
            raise ValueError(
                f"data.val_batches={self.val_batches} must be a multiple of the {world} processes: "
                f"set it to {world * -(-self.val_batches // world)}"
            )

    def _templater(self) -> Templater:
        return Templater(self.tokenizer, self.num_und_tokens, self.num_gen_tokens, self.template)

    def _loader(self, dataset: PackedBatchStream, **kwargs) -> DataLoader:
        return (_StreamLoader if "start_fn" in kwargs else DataLoader)(
            dataset, batch_size=None, num_workers=self.num_workers, **kwargs
        )

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            self.setup("fit")
        rank, world, per_step = self._dist()
        dataset = PackedBatchStream(
            self._train,
            self.schedule.scaled(per_step // world),  # in micro-steps: ranks share a micro-step's counts
            self._templater(),
            self.batch_size,
            self.seq_len,
            self.image_size,
            self.prompt_drop_prob,
            self.seed,
            rank,
            world,
            start=self._start,
        )
        return self._loader(dataset, start_fn=self._next_batch_index)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_sources:
            return []
        if self._val is None:
            self.setup("validate")
        # The last ratio: with a warm-up mix first, validation losses then weigh the kinds as most of
        # training does, and compare with a run that trains at that mix throughout.
        ratio = [r if kind in self._val else 0 for kind, r in zip(KINDS, self.schedule.ratios[-1])]
        if sum(ratio) == 0:
            raise ValueError(
                f"val_sources provide {sorted(self._val)} but data.ratio_schedule's last ratio draws "
                "none of them: add a val source of a kind it draws"
            )
        rank, world, _ = self._dist()
        # Ranks split the val_batches between them (setup checked that they split evenly).
        dataset = PackedBatchStream(
            self._val,
            RatioSchedule([(0, ratio)]),
            self._templater(),
            self.batch_size,
            self.seq_len,
            self.image_size,
            0.0,
            self.seed,
            rank,
            world,
            start=0,
            num_batches=self.val_batches,
        )
        return self._loader(dataset)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # The batch the training loop is about to use (the loaders prefetch ahead: what the workers
        # have built says nothing about what was trained on).
        if isinstance(batch, PackedBatch) and self.trainer is not None and self.trainer.training:
            self._last_index = batch.batch_index
        return batch

    def _next_batch_index(self) -> int:
        """First batch index not yet trained on by any rank (the start of the next step group)."""
        if self._last_index is None:
            return self._start
        rank, world, _ = self._dist()
        return self._last_index - rank + world

    def state_dict(self) -> dict[str, Any]:
        # Recorded: the next global batch index, so a resumed run continues the batch numbering (kind
        # counts, source choices, crops and prompt drops are functions of (seed, index) and so resume
        # exactly). Missing for full exact resumption: the position of each worker's shard streams
        # (shard RNG state, offset inside the shard). A resumed run seeds fresh streams (the start
        # index is in their seed), so it sees different, not repeated, samples than an uninterrupted
        # run would. Resuming with another world size or accumulation changes the step<->index map.
        return {
            "next_batch_index": self._next_batch_index(),
            "seed": self.seed,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._start, self._last_index = int(state_dict["next_batch_index"]), None
