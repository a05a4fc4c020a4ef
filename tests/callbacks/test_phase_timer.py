"""The phase timer sums every validation run inside a fit and reports the rest as training time."""

from __future__ import annotations

import time
from types import SimpleNamespace

import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel

from jf_lightning.callbacks.phase_timer import PhaseTimer, format_seconds


class RecordingLogger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((metrics, step))


def test_validation_runs_are_summed_and_excluded_from_the_step_time():
    logger = RecordingLogger()
    trainer = SimpleNamespace(global_step=0, loggers=[logger])
    timer = PhaseTimer()
    timer.on_fit_start(trainer, None)
    for _ in range(2):  # two validation runs of ~50 ms inside the fit
        timer.on_validation_start(trainer, None)
        time.sleep(0.05)
        timer.on_validation_end(trainer, None)
    time.sleep(0.05)  # "training"
    trainer.global_step = 10
    timer.on_fit_end(trainer, None)

    assert timer.steps == 10
    assert 0.1 <= timer.validation_seconds < 1.0  # loose above: a loaded machine sleeps longer
    assert timer.fit_seconds >= timer.validation_seconds + 0.05
    assert abs(timer.step_ms - 1000 * timer.training_seconds / 10) < 1e-9
    (metrics, step), = logger.logged
    assert step == 10 and set(metrics) == {"time/fit_s", "time/validation_s", "time/train_step_ms"}
    assert "10 steps in" in timer.summary()


def test_format_seconds():
    assert format_seconds(41.4) == "41 s"
    assert format_seconds(673) == "11 min 13 s"



def test_a_resumed_fit_counts_only_its_own_steps(tmp_path):
    def fit(max_steps, ckpt_path=None):
        timer = PhaseTimer()
        trainer = pl.Trainer(max_steps=max_steps, callbacks=[timer], logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)  # fmt: skip
        trainer.fit(BoringModel(), ckpt_path=ckpt_path)
        return trainer, timer

    trainer, timer = fit(2)
    assert timer.steps == 2
    ckpt = tmp_path / "two.ckpt"
    trainer.save_checkpoint(ckpt)
    trainer, timer = fit(5, ckpt)
    assert trainer.global_step == 5 and timer.steps == 3 and "3 steps in" in timer.summary()
