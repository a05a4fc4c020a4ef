"""Wall time per phase of a fit: how long training and validation took, and the time per step.

Lightning's ``Timer`` keeps only the last interval of each stage, and validation runs many times inside
one fit, so this callback sums the validation intervals itself. The figures go into the run's closing
line (``cli.run_summary``) and to the loggers as ``time/*`` metrics, so runs compare on cost too.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


def format_seconds(seconds: float) -> str:
    """``"9 min 33 s"``, or ``"41 s"`` under a minute."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class PhaseTimer(Callback):
    """Sums the wall time of fit and of every validation run (sanity check and the evaluation
    callbacks included: they run inside the validation loop)."""

    def __init__(self) -> None:
        self.fit_seconds = 0.0
        self.validation_seconds = 0.0
        self.steps = 0
        self._start_step = 0
        self._fit_start: float | None = None
        self._validation_start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self.validation_seconds = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed fit restores its step count after on_fit_start: count only the steps run here.
        self._start_step = trainer.global_step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_start is not None:
            self.validation_seconds += time.perf_counter() - self._validation_start
            self._validation_start = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fit_start is None:
            return
        self.fit_seconds = time.perf_counter() - self._fit_start
        self.steps = trainer.global_step - self._start_step
        for logger in trainer.loggers:
            logger.log_metrics(
                {
                    "time/fit_s": self.fit_seconds,
                    "time/validation_s": self.validation_seconds,
                    "time/train_step_ms": self.step_ms,
                },
                step=trainer.global_step,
            )

    @property
    def training_seconds(self) -> float:
        """Fit time outside validation: the optimisation steps, data loading and checkpointing."""
        return max(0.0, self.fit_seconds - self.validation_seconds)

    @property
    def step_ms(self) -> float:
        return 1000.0 * self.training_seconds / self.steps if self.steps else 0.0

    def summary(self) -> str:
        """``"fit 11 min 14 s: 3000 steps in 9 min 33 s (191 ms/step), validation 1 min 41 s"``."""
        return (
            f"fit {format_seconds(self.fit_seconds)}: {self.steps} steps in "
            f"{format_seconds(self.training_seconds)} ({self.step_ms:.0f} ms/step), "
            f"validation {format_seconds(self.validation_seconds)}"
        )
