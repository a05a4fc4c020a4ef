"""The training progress bar's label for runs bounded by steps rather than epochs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepBudgetProgressBar(RichProgressBar):
    """Lightning's rich bar, labelled ``Training (N steps)`` when only ``max_steps`` bounds the run.

    Our data streams are endless and training stops at ``max_steps``; Lightning then sets
    ``max_epochs`` to -1 at fit time and labels the bar "Epoch 0/-2" (``max_epochs - 1``). Only the
    label changes; the bar and its counts are Lightning's.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs not in (None, -1) or trainer.max_steps < 0:
            return super()._get_train_description(current_epoch)
        description = f"Training ({trainer.max_steps:,} steps)"
        return f"{description:{len(self.validation_description)}}"  # padded like Lightning's, no flicker


def relabel_default_progress_bar(trainer) -> None:
    """Give the trainer's rich progress bar (Lightning's default one included) the step-budget label,
    keeping the instance and every setting it was built with."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        bar.__class__ = StepBudgetProgressBar
