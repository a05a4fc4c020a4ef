"""ModelCheckpoint whose ``last.ckpt`` always holds the step training stopped at."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class FinalStepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus one save of ``last`` when ``max_steps`` ends training unsaved.

    Lightning writes ``last`` only beside a periodic save (and at train end only if it never wrote one),
    so on an endless stream whose ``max_steps`` is not a multiple of ``every_n_train_steps`` the run
    ended with ``last.ckpt`` from the last multiple: the demo's held step 2,500 of 2,800, and validating
    it did not reproduce the run's final scores. The epoch end comes after the final validation and
    before the EMA callback copies the averaged weights into the live model at train end, so the
    checkpoint keeps both, like every periodic one.
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Only where max_steps stops the run: at any other epoch end this save would mark the step as
        # saved and could pre-empt a top-k save that Lightning makes after it.
        stopped_by_steps = 0 < trainer.max_steps <= trainer.global_step
        # skipped when this step is already saved, while sanity checking, and outside fit
        if self.save_last and stopped_by_steps and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
