"""ModelCheckpoint whose ``last.ckpt`` always holds the step training stopped at."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class FinalStepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus one save of ``last`` when ``max_steps`` ends training unsaved.

    Lightning writes ``last`` only beside a periodic save (and at train end only if it never wrote one),
    so on an endless stream whose ``max_steps`` is not a multiple of ``every_n_train_steps`` the run
    ended with ``last.ckpt`` from the last multiple: the demo's held step 2,500 of 2,800, and validating
    it did not reproduce the run's final scores. The epoch end comes after the final validation and
    before the EMA callback copies the averaged weights into the live model at train end, so the
    checkpoint keeps both, like every periodic one.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._saving = False  # inside this callback's own hooks: a checkpoint written now is ours
        self._saved_step: int | None = None  # global step of this callback's latest save

    @contextlib.contextmanager
    def _own_saves(self) -> Iterator[None]:
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._saving:
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self._own_saves():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        with self._own_saves():
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        with self._own_saves():
            super().on_train_epoch_end(trainer, pl_module)
            # Only where max_steps stops the run: Lightning's saves at other epoch ends are its own.
            stopped_by_steps = 0 < trainer.max_steps <= trainer.global_step
            if self.save_last and stopped_by_steps and self._may_save_final_step(trainer):
                self._save_final_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning saves `last` here if it never did; after the final-step save that would overwrite it
        # with the EMA merged into the live weights.
        if self._saved_step != trainer.global_step:
            with self._own_saves():
                super().on_train_end(trainer, pl_module)

    def _may_save_final_step(self, trainer) -> bool:
        return not (
            trainer.fast_dev_run
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._saved_step == trainer.global_step  # saved at this step already
        )

    def _save_final_last(self, trainer) -> None:
        """Write ``last`` (named as Lightning names it) at this step, on every rank."""
        # what Lightning formats names with, "epoch" and "step" as ints
        metrics = dict(trainer.callback_metrics)
        for key, value in (("epoch", trainer.current_epoch), ("step", trainer.global_step)):
            logged = metrics.get(key)
            metrics[key] = logged.int() if isinstance(logged, torch.Tensor) else torch.tensor(value)
        filepath = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        version = self.STARTING_VERSION
        while filepath != self.last_model_path and self.file_exists(filepath, trainer):
            filepath = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST, ver=version)
            version += 1
        previous, self.last_model_path = self.last_model_path, filepath  # part of the saved state
        trainer.save_checkpoint(filepath, self.save_weights_only)
        self._saved_step = trainer.global_step  # also where on_save_checkpoint is skipped (weights only)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)
        if previous and previous != filepath and self._in_dirpath(previous, trainer):
            trainer.strategy.remove_checkpoint(previous)  # a `last` named by step, e.g. "{step}-last"

    def _in_dirpath(self, path: str, trainer) -> bool:
        """Whether ``path`` is this callback's to remove: in its folder and not the one resumed from."""
        path = Path(path).absolute()
        if trainer.ckpt_path is not None and Path(trainer.ckpt_path).absolute() == path:
            return False
        return Path(os.fspath(self.dirpath)).absolute() in path.parents
