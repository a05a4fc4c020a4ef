"""The LightningDataModule: WebDataset sources -> whole ``PackedBatch``es built inside loader workers.

Every training batch is a pure function of (seed, origin, global batch index, readers): which batch each
rank and worker builds, which records it reads and every random choice (``stream.py``, ``split.py``).
The data position of a run is therefore one number, the next global batch index, which ``state_dict``
records; a run resumed from a checkpoint (even after ``kill -9``) trains on exactly the batches an
unbroken run would. Resuming with another number of loader workers re-splits the streams: they start
over from the resume batch with a fresh shuffle (``origin``), so samples of the interrupted epochs may
come again or not at all; resuming with another number of processes is refused (the ratio schedule
counts micro-steps of all ranks).

The ratio schedule is written in optimizer steps (as the paper's Table 1); one optimizer step is
``accumulate_grad_batches`` micro-steps of N batches, so the schedule is stretched to micro-steps.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import replace
from typing import Any

import torch.distributed as dist
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader

from jf_lightning.batch import PackedBatch
from jf_lightning.data.mixing import RatioSchedule
from jf_lightning.data.packing import normalise_pixels
from jf_lightning.data.reader import count_records, local_path, shard_is_empty
from jf_lightning.data.sources import KINDS, MEMBERS, Kind, SourceConfig
from jf_lightning.data.stream import PackedBatchStream, StreamLoader
from jf_lightning.data.templates import Templater, TemplateStyle
from jf_lightning.inputs import UserInputError

log = logging.getLogger(__name__)


def _group(
    sources: list[SourceConfig], key: str, root: str | None, dropped: Counter
) -> dict[Kind, list[SourceConfig]]:
    """Sources by kind, their patterns expanded to shard lists (relative local ones under ``root``);
    a missing shard is a one-line error naming the config key, before training starts. Empty shards
    are left out and counted in ``dropped``."""
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
        resolved[-1] = _without_empty_shards(resolved[-1], f"data.{key}[{i}]", dropped)
    return {k: [s for s in resolved if s.kind == k] for k in KINDS if any(s.kind == k for s in resolved)}


def _without_empty_shards(source: SourceConfig, where: str, dropped: Counter) -> SourceConfig:
    """``source`` without its zero-byte or member-less local shards (each named in a warning: they
    would hold up a reader with nothing); a one-line error if none is left."""
    empty = [url for url in source.urls if local_path(url) is not None and shard_is_empty(local_path(url))]
    dropped["empty_shard"] += len(empty)
    for url in empty:
        log.warning("%s: shard %s is empty (a zero-byte file or a tar without members): skipped", where, url)
    if len(empty) == len(source.urls):
        raise UserInputError(f"{where}: every shard is empty (zero-byte or without members), e.g. {empty[0]}")
    return replace(source, urls=[url for url in source.urls if url not in empty]) if empty else source


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
    by Lightning while this one exists. The same hook checks that a resumed run's first batch is the
    one its checkpoint recorded: a Lightning code path that builds the loader before restoring the
    data state (Lightning issue #20550) would otherwise replay the stream from its start unnoticed.
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
        max_consecutive_bad_samples: int = 100,
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
            max_consecutive_bad_samples: Records of one source that may fail in a row (unreadable,
                missing a member, broken shard; each skipped and counted as ``data/skipped/<reason>``)
                before the run stops with one line naming the source and the reason.
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
        self.max_consecutive_bad_samples = max_consecutive_bad_samples
        self.setup_skips: Counter[str] = Counter()  # training shards left out at setup, by reason
        self._start = 0  # first global batch index of the next training iteration
        self._last_index: int | None = None  # last training batch index seen by the training loop
        self._origin = 0  # batch index the streams' positions count from (moves when a resume re-splits)
        self._restored: dict[str, Any] | None = None  # the checkpoint's data state, until a batch proves it

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
            self._train = _group(self.sources, "sources", self.data_root, self.setup_skips)
            missing = sorted(self.schedule.kinds_used() - set(self._train))
            if missing:
                raise ValueError(
                    f"ratio_schedule draws {missing} samples but no training source has that kind"
                )
        if stage in (None, "fit", "validate") and self.val_sources:
            if self._val is None:
                self._val = _group(self.val_sources, "val_sources", self.data_root, Counter())
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
        # Under a Trainer, on_after_batch_transfer normalises the images on the device (a cast there is
        # free; on the CPU it costs as much as decoding the JPEG). Anyone else gets floats as is.
        on_device = isinstance(self.trainer, Trainer)
        return StreamLoader(dataset, batch_size=None, num_workers=self.num_workers, normalise=not on_device, **kwargs)

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
            origin=self._origin,
            max_consecutive_bad_samples=self.max_consecutive_bad_samples,
        )
        self._check_split(world * max(1, self.num_workers))
        return self._loader(dataset, start_fn=self._begin_iteration)

    def _check_split(self, readers: int) -> None:
        """Refuse, before training, a local source whose few shards (fewer than the readers, so
        strided) hold fewer samples than there are readers: some reader would have none."""
        for kind, sources in (self._train or {}).items():
            for source in sources:
                urls = list(source.urls)
                if len(urls) >= readers or any(local_path(u) is None for u in urls):
                    continue
                total = sum(count_records(u, MEMBERS[kind]) for u in urls)
                if total < readers:
                    raise UserInputError(
                        f"data.sources: the {kind} shards {urls[0]} ... ({len(urls)}) hold {total} samples, fewer "
                        f"than the {readers} readers (processes x max(1, data.num_workers)) that split them: use "
                        "fewer data.num_workers or more samples"
                    )

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
            if self._restored is not None:
                expected = int(self._restored["next_batch_index"]) + self._dist()[0]
                if batch.batch_index != expected:
                    raise RuntimeError(
                        f"data: the resumed run's first batch is {batch.batch_index}, but its checkpoint "
                        f"continues at batch {expected}: the loader was built before the data state was "
                        "restored (Lightning issue #20550) and would replay the stream"
                    )
                self._restored = None
            self._last_index = batch.batch_index
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return normalise_pixels(batch) if isinstance(batch, PackedBatch) else batch  # uint8 -> [-1, 1]

    def _begin_iteration(self, dataset: PackedBatchStream) -> None:
        """Point the training stream at the next batch; on the first iteration after a restore, check
        that the checkpoint's split is this run's (module docstring)."""
        dataset.start = self._next_batch_index()
        world = self._dist()[1]
        readers = world * max(1, self.num_workers)
        state = self._restored
        if state is not None and state.get("world_size", world) != world:
            raise UserInputError(
                f"the checkpoint's data stream was split over {state['world_size']} processes and this run has "
                f"{world}: resume on {state['world_size']} processes (trainer.devices x trainer.num_nodes)"
            )
        if state is not None and state.get("readers") != readers and self._origin != dataset.start:
            log.warning(
                "data: the checkpoint's streams were split over %s readers and this run has %d (processes x "
                "max(1, data.num_workers)): they start over at batch %d with a fresh shuffle",
                state.get("readers", "unknown"), readers, dataset.start,
            )  # fmt: skip
            self._origin = dataset.start
        dataset.origin = self._origin

    def _next_batch_index(self) -> int:
        """First batch index not yet trained on by any rank (the start of the next step group)."""
        if self._last_index is None:
            return self._start
        rank, world, _ = self._dist()
        return self._last_index - rank + world

    def state_dict(self) -> dict[str, Any]:
        # The whole data position: every batch is a function of (seed, origin, index, readers), and
        # the packer carries nothing over, so the next index is where every rank's and worker's
        # streams stand (the shard, the record in it, the schedule's counts and the RNGs all follow).
        world = self._dist()[1]
        return {
            "next_batch_index": self._next_batch_index(),
            "origin": self._origin,
            "world_size": world,
            "readers": world * max(1, self.num_workers),
            "seed": self.seed,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._start, self._last_index = int(state_dict["next_batch_index"]), None
        # A checkpoint written before origins were recorded: its streams cannot be found again.
        self._origin = int(state_dict.get("origin", self._start))
        self._restored = dict(state_dict)
