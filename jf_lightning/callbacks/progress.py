"""The training progress bar's label for runs bounded by steps rather than epochs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepBudgetProgressBar(RichProgressBar):
    """Lightning's rich bar, labelled ``Training (N steps)`` when only ``max_steps`` bounds the run.

    Our data streams are endless and training stops at ``max_steps``; Lightning then sets
    ``max_epochs`` to -1 at fit time and labels the bar "Epoch 0/-2" (``max_epochs - 1``). Only the
    label changes, through rich's own task update once Lightning has created or reset the task; the bar
    and its counts are Lightning's.
    """

    def step_budget_description(self) -> str | None:
        """The label for a run bounded only by ``max_steps``; None where Lightning's epoch label fits."""
        trainer = self.trainer
        if trainer.max_epochs not in (None, -1) or trainer.max_steps < 0:
            return None
        description = f"Training ({trainer.max_steps:,} steps)"
        description = f"{description:{len(self.validation_description)}}"  # padded like Lightning's
        return f"[{self.theme.description}]{description}" if self.theme.description else description

    def _relabel(self) -> None:
        description = self.step_budget_description()
        if description is None or self.progress is None or self.train_progress_bar_id is None:
            return
        if self.train_progress_bar.description != description:
            self.progress.update(self.train_progress_bar_id, description=description)
            self.refresh()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._relabel()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning creates the task here instead when a fit resumes mid-epoch
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._relabel()


def relabel_default_progress_bar(trainer) -> None:
    """Give the trainer's rich progress bar (Lightning's default one included) the step-budget label,
    keeping the instance and every setting it was built with."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        bar.__class__ = StepBudgetProgressBar
