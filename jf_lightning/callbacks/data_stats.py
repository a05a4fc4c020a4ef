"""What the data really was: the realised mix, packing efficiency and skipped records, logged.

Per logging interval (``trainer.log_every_n_steps`` optimizer steps), from the batches rank 0 trained on:
- ``data/share/<kind>``: the share of each kind among the samples (the ratio schedule's, less skips);
- ``data/real_token_share``: tokens that belong to a sample, over all tokens of the packed rows (the
  rest is padding).
Run totals, summed over all ranks (the loader workers count per batch, ``PackedBatch.data_stats``):
- ``data/skipped/<reason>``: records skipped, ``reader.SKIP_REASONS`` (plus empty shards left out when
  the run set up); ``data/truncated_text``: texts cut to ``data.seq_len``.
A reason appears once it has happened; the shard and key of the first few of each reason are in the log.
"""

from __future__ import annotations

from collections import Counter

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from jf_lightning.batch import PackedBatch
from jf_lightning.data.reader import SKIP_REASONS
from jf_lightning.data.sources import KINDS

COUNTED = SKIP_REASONS + ("truncated_text",)


def _metric(reason: str) -> str:
    return "data/truncated_text" if reason == "truncated_text" else f"data/skipped/{reason}"


class DataStats(Callback):
    """Logs ``data/share/<kind>``, ``data/real_token_share`` and ``data/skipped/<reason>`` (module
    docstring)."""

    def __init__(self) -> None:
        self._kinds: Counter[str] = Counter()
        self._tokens = [0, 0]  # real, all
        self._counts: Counter[str] = Counter()
        self._logged_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not isinstance(batch, PackedBatch):
            return
        self._kinds.update(key.split(":", 1)[0] for key in batch.sample_keys or [])
        self._tokens[0] += int((batch.segment_ids > 0).sum())
        self._tokens[1] += batch.segment_ids.numel()
        self._counts.update(batch.data_stats or {})
        step = trainer.global_step
        if step % max(1, trainer.log_every_n_steps) == 0 and step != self._logged_step:
            self._logged_step = step
            self._log(trainer, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.global_step != self._logged_step:  # the last steps, after the last interval
            self._log(trainer, trainer.global_step)

    def _log(self, trainer: pl.Trainer, step: int) -> None:
        totals = self._run_totals(trainer)  # a collective: every rank runs it at the same steps
        if not trainer.is_global_zero:
            return
        metrics = {_metric(reason): float(n) for reason, n in totals.items() if n}
        samples = sum(self._kinds.values())
        if samples:
            metrics |= {f"data/share/{kind}": self._kinds[kind] / samples for kind in KINDS}
        if self._tokens[1]:
            metrics["data/real_token_share"] = self._tokens[0] / self._tokens[1]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self._kinds, self._tokens = Counter(), [0, 0]

    def _run_totals(self, trainer: pl.Trainer) -> dict[str, int]:
        counts = torch.tensor([self._counts[r] for r in COUNTED], device=trainer.strategy.root_device)  # (R,)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")  # over the ranks; as is on one
        totals = dict(zip(COUNTED, (int(n) for n in counts.tolist())))
        setup = getattr(trainer.datamodule, "setup_skips", None) or {}  # the same on every rank: added once
        return {reason: totals.get(reason, 0) + setup.get(reason, 0) for reason in COUNTED}
