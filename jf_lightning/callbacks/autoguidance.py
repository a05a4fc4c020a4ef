"""Autoguidance for the sampling callbacks: a frozen snapshot of the model taken early in training,
which the sample grid and GenEval steer away from (Karras et al. 2024, "Guiding a Diffusion Model with
a Bad Version of Itself"; the sampler side is ``flow.sampler.Autoguide``).

The guide must be the same model, less trained. The snapshot copies the weights sampling uses (the
EMA's, when the EMA callback runs) after ``snapshot_step`` optimizer steps; validations up to then
sample without a guide. It is kept in the checkpoint, so ``validate --ckpt_path`` samples as fit did.
Memory: one more copy of the trainable weights; frozen ones (SigLIP, the VAE) are shared with the live
model. Under FSDP (sharded strategies) it refuses to run, in one line.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from jf_lightning.callbacks.ema import averaged_weights
from jf_lightning.flow.sampler import Autoguide


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` that never trains; its frozen parameters are ``model``'s own (not copied)."""
    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    guide = copy.deepcopy(model, memo=shared)
    return guide.requires_grad_(False).eval()


class Autoguidance(Callback):
    """Snapshots the model at ``snapshot_step``; the sampling callbacks then add
    ``weight * (v_cond - v_guide)`` to every guided velocity."""

    def __init__(self, snapshot_step: int, weight: float = 1.0):
        """
        Args:
            snapshot_step: Optimizer step whose weights (the EMA's when it runs) become the guide.
            weight: Autoguidance weight k (0 keeps the snapshot but samples without it).
        """
        if snapshot_step < 1:
            raise ValueError(f"Autoguidance needs snapshot_step >= 1, got {snapshot_step}")
        self.snapshot_step, self.weight = snapshot_step, weight
        self.guide: torch.nn.Module | None = None
        self._trained_names: list[str] = []  # the guide's own (not shared) parameters, for the checkpoint
        self._pending: dict[str, torch.Tensor] | None = None  # read from a checkpoint, built on first use

    @property
    def state_key(self) -> str:
        # the format of Lightning's own keys (e.g. ModelCheckpoint's), as in the checkpoints written so far
        return type(self).__qualname__ + repr({"snapshot_step": self.snapshot_step})

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
            # the snapshot is a deep copy of the model, which FSDP's sharded modules do not support
            raise NotImplementedError(
                "Autoguidance keeps a whole copy of the model and does not run under FSDP: drop the callback "
                "or train with DDP"
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # At the start of the step after the snapshot step: every callback's end-of-step hook (the EMA
        # update among them) has run, whatever the callbacks' order.
        taken = self.guide is not None or self._pending is not None  # a resumed run has its snapshot
        if trainer.global_step == self.snapshot_step and not taken:
            with averaged_weights(trainer, pl_module):
                self._take(pl_module.model)

    def _take(self, model: torch.nn.Module) -> None:
        self._trained_names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.guide = frozen_copy(model)

    def autoguide(self, pl_module: pl.LightningModule) -> Autoguide | None:
        """What the sampler needs, or None before the snapshot (or with weight 0)."""
        if self.guide is None and self._pending is not None:
            self._take(pl_module.model)
            result = self.guide.load_state_dict(self._pending, strict=False)
            # every trained parameter must come from the checkpoint; frozen ones are the live model's
            if result.unexpected_keys or set(result.missing_keys) & set(self._trained_names):
                raise RuntimeError(f"checkpoint's autoguidance snapshot does not fit the model: {result}")
            self._pending = None
        if self.guide is None or not self.weight:
            return None
        return Autoguide(self.guide, self.weight)

    def state_dict(self) -> dict[str, Any]:
        if self.guide is None:
            return {"guide": self._pending}
        own = dict(self.guide.named_parameters())
        return {"guide": {name: own[name].detach().clone() for name in self._trained_names}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.guide, self._pending = None, state_dict.get("guide")


def autoguide_for(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Autoguide | None:
    """The trainer's autoguide, if an :class:`Autoguidance` callback runs and has its snapshot."""
    for callback in trainer.callbacks:
        if isinstance(callback, Autoguidance):
            return callback.autoguide(pl_module)
    return None
