"""EMA of the weights (decay 0.99, as the paper), used for validation, sampling and the checkpoint.

An exponential moving average of the trainable weights samples and scores better than the live weights
of the same step, so everything that judges the model judges the average:

- after every optimizer step the average moves towards the live weights by ``1 - decay``, exactly as
  ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)`` does (the first update
  copies the live weights, later ones are one ``lerp`` per device and dtype);
- only trainable parameters (``requires_grad`` when fit starts) get an average: frozen ones (the VAE,
  a frozen LLM or SigLIP) average to themselves, so they are neither copied nor swapped;
- the averages live on the training device, where every update and swap stays;
- validation runs on the averages: they are swapped in at ``on_validation_epoch_start`` and out at
  ``on_validation_end``, so every callback's ``on_validation_epoch_end`` (sample grids, GenEval) sees
  them, and ModelCheckpoint, which Lightning runs last, sees the live weights again;
- a checkpoint's ``state_dict`` holds the averages, so ``validate``/``test`` on it score the EMA
  without this callback; the live weights go to ``current_model_state`` and the update counters to
  the callback's state, so resuming a fit restores both exactly. Checkpoints that Lightning's
  ``WeightAveraging`` wrote under this callback's state key (they keep the update count in
  ``averaging_state``) resume the same way;
- at the end of fit the averages are copied into the model.

``decay: null`` turns it off.

Under FSDP2 (``ModelParallelStrategy``, ``jf_lightning.parallel``) every parameter is a DTensor shard and
so is its average (same placements): each rank updates, swaps and copies its own shards with the same
``lerp`` (the full model is never gathered). Such a strategy writes a checkpoint directory through
``torch.distributed.checkpoint`` (DCP) and only the module's ``state_dict`` and the optimizer states go
through DCP (callback states are pickled by rank 0 alone): so the averages are the ``state_dict`` there
too, and the live weights of the trained parameters ride along in it under ``current_model_state``,
which this callback reads back from the directory itself when a fit resumes. Lightning's ``FSDPStrategy``
(FSDP1) is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed.checkpoint as dcp
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import get_ema_multi_avg_fn

LIVE = "current_model_state"  # the live weights' key: top level of a file checkpoint, inside a sharded one's state_dict


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's own shard (shares its storage: in-place ops on it change the DTensor); a tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class EMA(Callback):
    """Exponential moving average of the trainable weights, updated after every optimizer step."""

    def __init__(self, decay: float | None = 0.99, device: str | None = None):
        """
        Args:
            decay: EMA decay per optimizer step (the paper: 0.99); null turns the EMA off.
            device: Where the averages live (default: the training device).
        """
        self.decay = decay
        self.device = torch.device(device) if isinstance(device, str) else device
        # raises for a decay outside [0, 1]
        self._average_fn = get_ema_multi_avg_fn(decay) if decay is not None else None
        # parameter name -> its average; empty while off, and outside a fit
        self._averages: dict[str, torch.Tensor] = {}
        self.n_averaged = 0  # updates so far (AveragedModel's n_averaged): the first one copies
        self.latest_update_step = 0  # trainer.global_step at the last update
        self._swapped = False  # the model holds the averages and the averages the live weights
        self._swapped_for_validation = False

    @property
    def active(self) -> bool:
        """Whether averages are kept (a fit with a decay set up this callback)."""
        return bool(self._averages)

    @property
    def swapped(self) -> bool:
        """Whether the model currently holds the averages (see :meth:`swap`)."""
        return self._swapped

    @property
    def averages(self) -> dict[str, torch.Tensor]:
        """The averaged value of every trainable parameter, by its name in the LightningModule."""
        return self._averages

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._averages, self.n_averaged = {}, 0
        self._swapped = self._swapped_for_validation = False
        if stage != "fit" or self.decay is None:
            return
        if isinstance(trainer.strategy, FSDPStrategy):
            raise NotImplementedError(
                "EMA needs FSDP2: use jf_lightning.parallel.strategy.FSDP2Strategy, not fsdp"
            )
        if (
            isinstance(trainer.strategy, ModelParallelStrategy)
            and not trainer.strategy._save_distributed_checkpoint
        ):
            # (a private attribute: the public argument is not exposed after construction)
            raise NotImplementedError("EMA under FSDP2 needs save_distributed_checkpoint: true (the default)")
        pl_module.configure_model()  # idempotent in our stages; the parameters must exist to be averaged
        device = self.device or trainer.strategy.root_device
        with torch.no_grad():
            self._averages = {
                # a shard's average is a DTensor of the same placements, beside the shard
                name: param.detach().clone() if isinstance(param, DTensor)
                else torch.empty_like(param, device=device).copy_(param)
                for name, param in pl_module.named_parameters()
                if param.requires_grad
            }  # fmt: skip

    def _pairs(self, pl_module: pl.LightningModule) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(average, live parameter) for every averaged parameter, in the module's order; for DTensors
        their local shards, so every update, swap and copy stays on this rank's shards."""
        params = dict(pl_module.named_parameters())
        for name, average in self._averages.items():
            yield _local(average), _local(params[name].detach())

    @torch.no_grad()
    def update(self, pl_module: pl.LightningModule) -> None:
        """Move the averages towards the live weights (the first update copies them)."""
        pairs = list(self._pairs(pl_module))
        if self.n_averaged == 0:
            for average, live in pairs:
                average.copy_(live)
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for average, live in pairs:
                averages, lives = groups.setdefault((average.device, average.dtype), ([], []))
                averages.append(average)
                lives.append(live.to(average.device))
            for averages, lives in groups.values():
                self._average_fn(averages, lives, self.n_averaged)
        self.n_averaged += 1

    @torch.no_grad()
    def swap(self, pl_module: pl.LightningModule) -> None:
        """Exchange the model's trainable weights with the averages; a second call swaps them back."""
        for average, live in self._pairs(pl_module):
            held = average.clone()
            average.copy_(live)
            live.copy_(held)
        self._swapped = not self._swapped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # once per optimizer step (with gradient accumulation, batches between steps do not update)
        if self.active and trainer.global_step > self.latest_update_step:
            if not getattr(pl_module, "skipped_optimizer_step", False):  # a step the module skipped (NaN)
                self.update(pl_module)
            self.latest_update_step = trainer.global_step

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.active and not self._swapped:
            self.swap(pl_module)
            self._swapped_for_validation = True

    def on_validation_end(self, trainer, pl_module) -> None:
        # not at the validation epoch end: every callback's on_validation_epoch_end sees the averages
        if self._swapped_for_validation:
            self.swap(pl_module)
            self._swapped_for_validation = False

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        if self.active and not self._swapped:
            for average, live in self._pairs(pl_module):
                live.copy_(average)

    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self.latest_update_step, "n_averaged": self.n_averaged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.latest_update_step = state_dict["latest_update_step"]
        # WeightAveraging's checkpoints keep n_averaged in "averaging_state", read by on_load_checkpoint
        self.n_averaged = int(state_dict.get("n_averaged", self.n_averaged))

    def _state_dict_keys(self, pl_module: pl.LightningModule) -> dict[str, str]:
        """state_dict key -> averaged parameter name, tied parameters' other names included."""
        averaged = set(self._averages)
        canonical = {id(p): name for name, p in pl_module.named_parameters() if name in averaged}
        return {
            key: canonical[id(p)]
            for key, p in pl_module.named_parameters(remove_duplicate=False)
            if id(p) in canonical
        }

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not self.active:
            return  # off, or outside fit, where the model holds the weights it was loaded with
        module_state = checkpoint["state_dict"]
        other = dict(module_state)  # what the averages hold: normally the EMA, the live weights when swapped
        for key, name in self._state_dict_keys(pl_module).items():
            if key in other:
                other[key] = self._averages[name]
        averaged, live = (module_state, other) if self._swapped else (other, module_state)
        if any(isinstance(v, DTensor) for v in module_state.values()):  # sharded: all of it through DCP
            trained = self._state_dict_keys(pl_module)
            checkpoint["state_dict"] = {**averaged, LIVE: {key: live[key] for key in trained if key in live}}
            return
        checkpoint["state_dict"], checkpoint[LIVE] = averaged, live

    @torch.no_grad()
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Outside fit the checkpoint's state_dict already holds the averages: nothing to do.
        if not self.active:
            return
        if "state_dict" not in checkpoint:  # a sharded checkpoint: the strategy took it from the directory
            self._load_sharded(trainer, pl_module)
            return
        # Lightning has loaded the checkpoint's state_dict (the averages, if it had an EMA) into the model
        averaged = checkpoint["state_dict"]
        with_ema = "current_model_state" in checkpoint
        keys = self._state_dict_keys(pl_module)
        missing = [key for key, name in keys.items() if key not in averaged] if with_ema else []
        if missing:
            raise RuntimeError(f"the checkpoint's EMA lacks trained parameters: {missing[:5]}")
        for key, name in keys.items():
            if key in averaged:
                self._averages[name].copy_(averaged[key])
        if with_ema:
            pl_module.load_state_dict(checkpoint["current_model_state"])
            if "averaging_state" in checkpoint:  # written by Lightning's WeightAveraging
                self.n_averaged = int(checkpoint["averaging_state"]["n_averaged"])
        # A checkpoint without an EMA starts the averages at its weights; the first update copies anyway.

    @torch.no_grad()
    def _load_sharded(self, trainer, pl_module: pl.LightningModule) -> None:
        """The model holds the directory's averages (its state_dict): they become the averages, and the
        live weights are read from the directory into the model's shards (DCP reshards if the world
        size changed). A directory without them (written without an EMA) starts the averages at its weights."""
        keys = self._state_dict_keys(pl_module)
        params = dict(pl_module.named_parameters())
        stored = dcp.FileSystemReader(trainer.ckpt_path).read_metadata().state_dict_metadata
        with_ema = any(f"state_dict.{LIVE}." in key for key in stored)
        missing = [key for key in keys if f"state_dict.{LIVE}.{key}" not in stored] if with_ema else []
        if missing:
            raise RuntimeError(f"the checkpoint's live weights lack trained parameters: {missing[:5]}")
        live = {key: torch.empty_like(params[name]) for key, name in keys.items()} if with_ema else {}
        if live:
            dcp.load({"state_dict": {LIVE: live}}, checkpoint_id=trainer.ckpt_path)
        for key, name in keys.items():
            _local(self._averages[name]).copy_(_local(params[name]))
            if live:
                _local(params[name]).copy_(_local(live[key]))


@contextlib.contextmanager
def averaged_weights(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
    """The EMA weights in the model for the duration, and the live ones back after.

    During validation the EMA callback has already swapped them in (and keeps them until
    ``on_validation_end``, after every callback's ``on_validation_epoch_end``): then nothing changes."""
    swappers = [cb for cb in trainer.callbacks if isinstance(cb, EMA) and cb.active and not cb.swapped]
    for cb in swappers:
        cb.swap(pl_module)
    try:
        yield
    finally:
        for cb in reversed(swappers):
            cb.swap(pl_module)
