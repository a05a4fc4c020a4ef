"""Skip optimizer steps whose loss or gradient norm is not finite; stop after too many in a row.

Lightning's automatic optimization runs the training step and its backward inside ``optimizer.step``,
so the one public place between the gradients and the update is ``on_before_optimizer_step``. There a
bad step's gradients are set to None: the optimizer leaves every parameter (and its moments and step
count) as it was, and the stage's ``skipped_optimizer_step`` tells the EMA callback not to move its
averages. Under a GradScaler (fp16) the gradients are left alone: the scaler itself skips the update
of non-finite gradients. Lightning still counts the step in ``global_step`` (and the lr schedule moves on).

Every rank takes the same decision: the flags are reduced (max) over the ranks before it.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

from jf_lightning.inputs import UserInputError

LOSS_TERMS = ("ar_loss", "rf_loss", "repa_loss")


class NonFiniteGuard:
    """Counts of skipped steps and the non-finite loss terms seen since the last optimizer step."""

    def __init__(self, max_in_row: int):
        self.max_in_row = max_in_row
        self.skipped = 0  # skipped optimizer steps so far (logged as train/skipped_nonfinite)
        self.in_row = 0
        self._loss_flags: torch.Tensor | None = None  # (len(LOSS_TERMS),) bool, on the loss device

    def note_losses(self, losses: dict) -> None:
        """Remember which loss terms of this (micro-)batch are not finite; no host sync."""
        device = losses["loss"].device
        flags = torch.stack([
            ~torch.isfinite(v.detach()).all() if (v := losses.get(k)) is not None
            else torch.zeros((), dtype=torch.bool, device=device)
            for k in LOSS_TERMS
        ])  # fmt: skip
        self._loss_flags = (
            flags if self._loss_flags is None else self._loss_flags | flags.to(self._loss_flags.device)
        )

    def check(self, stage, optimizer) -> bool:
        """Decide, the same on every rank, whether this optimizer step is skipped; drop its gradients if so.
        Raises UserInputError after ``max_in_row`` skips in a row."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        device = grads[0].device if grads else stage.device
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
        if isinstance(norm, DTensor):  # FSDP2's sharded gradients: the norm over all ranks' shards
            norm = norm.full_tensor()
        loss_flags = (
            self._loss_flags
            if self._loss_flags is not None
            else torch.zeros(len(LOSS_TERMS), dtype=torch.bool)
        )
        self._loss_flags = None
        flags = torch.cat([loss_flags.to(device), (~torch.isfinite(norm)).reshape(1)]).float()
        flags = stage.trainer.strategy.reduce(flags, reduce_op="max")
        bad = [name for name, flag in zip((*LOSS_TERMS, "gradient norm"), flags.tolist()) if flag]
        if not bad:
            self.in_row = 0
            return False
        if getattr(stage.trainer.precision_plugin, "scaler", None) is None:
            optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        self.in_row += 1
        if self.in_row >= self.max_in_row:
            raise UserInputError(
                f"{', '.join(bad)} not finite at step {stage.trainer.global_step}: {self.in_row} optimizer steps "
                f"in a row skipped (model.init_args.max_nonfinite_steps {self.max_in_row}); lower the lr or check "
                "the data"
            )
        return True
