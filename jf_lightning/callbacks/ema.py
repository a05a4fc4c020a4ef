"""EMA of the weights (decay 0.99, as the paper), used for validation, sampling and the checkpoint.

Built on Lightning's ``WeightAveraging`` rather than an own callback: it already swaps the averaged
weights in for validation, writes them as the checkpoint's ``state_dict`` (the live weights go to
``current_model_state``) and restores both on resume, which is the part that is easy to get wrong.
This subclass changes four things:

- only trainable parameters are averaged and stored twice: frozen ones (the VAE, a frozen LLM or
  SigLIP) are shared with the live model, since their average is themselves;
- the copy lives on the training device (the base class picks the module's device at ``setup``,
  which is still the CPU, so every update would cross the bus);
- the averaged weights stay swapped in until ``on_validation_end``, so every callback's
  ``on_validation_epoch_end`` (sample grids, GenEval) sees them; ModelCheckpoint, which Lightning always
  runs last, still saves the live weights as the live ones;
- ``decay: null`` turns it off, and sharded strategies are refused (WeightAveraging deep-copies the
  whole module; a sharded EMA is future work).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def _skip_shared(update):
    """Wrap a multi-tensor average so it ignores pairs that are one tensor (shared frozen params)."""

    def average(ema: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        pairs = [(e, c) for e, c in zip(ema, current) if e.data_ptr() != c.data_ptr()]
        if pairs:
            update([e for e, _ in pairs], [c for _, c in pairs], n)

    return average


def share_frozen_parameters(copy: torch.nn.Module, live: torch.nn.Module) -> None:
    """Point every frozen parameter of ``copy`` at the same Parameter of ``live`` (same structure)."""
    for name, param in live.named_parameters():
        if not param.requires_grad:
            owner, _, leaf = name.rpartition(".")
            setattr(copy.get_submodule(owner), leaf, param)


class EMA(WeightAveraging):
    """Exponential moving average of the trainable weights, updated after every optimizer step."""

    def __init__(self, decay: float | None = 0.99, device: str | None = None):
        """
        Args:
            decay: EMA decay per optimizer step (the paper: 0.99); null turns the EMA off.
            device: Where the averaged copy lives (default: the training device).
        """
        ema = get_ema_multi_avg_fn(decay) if decay is not None else None
        super().__init__(device=device, use_buffers=False, multi_avg_fn=_skip_shared(ema) if ema else None)
        self.decay = decay
        self._swapped = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.decay is None:
            return
        if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
            raise NotImplementedError(
                "EMA cannot average sharded parameters yet: set ema.decay: null with FSDP"
            )
        pl_module.configure_model()  # idempotent in our stages; the model must exist to be copied
        self._average_model = AveragedModel(pl_module, use_buffers=False, **self._kwargs)
        share_frozen_parameters(self._average_model.module, pl_module)
        device = self._device or trainer.strategy.root_device
        for name, param in self._average_model.module.named_parameters():
            if param.requires_grad:  # the copy's own (trainable) tensors; shared ones move with the model
                param.data = param.data.to(device)
                param.requires_grad_(False)  # the copy never receives gradients

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return self.decay is not None and step_idx is not None

    def on_train_end(self, trainer, pl_module) -> None:
        if self._average_model is not None:
            super().on_train_end(trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._average_model is not None and not self._swapped:
            self._swap_models(pl_module)
            self._swapped = True

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pass  # swapped back in on_validation_end, after every callback's epoch-end hook

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Outside fit the checkpoint's state_dict already holds the averaged weights: nothing to do.
        if self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


@contextlib.contextmanager
def averaged_weights(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
    """Outside validation: swap the weight-averaging callbacks' averages in, and back out after.

    (During validation the EMA callback has already swapped them in, and keeps them in until
    ``on_validation_end``, after every callback's ``on_validation_epoch_end``.)"""
    swappers = [
        cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging) and cb._average_model is not None
    ]
    for cb in swappers:
        cb._swap_models(pl_module)  # swapping twice restores: the only public-free way in
    try:
        yield
    finally:
        for cb in reversed(swappers):
            cb._swap_models(pl_module)
