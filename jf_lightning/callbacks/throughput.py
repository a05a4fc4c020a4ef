"""Throughput and MFU of training: samples/s, tokens/s (real and padded) and model FLOPs utilisation.

Every ``trainer.log_every_n_steps`` optimizer steps, rank 0 logs over the steps since its last log:

- ``throughput/samples_per_s``, ``throughput/tokens_per_s`` (sample tokens), ``throughput/padded_tokens_per_s``
  (every position of the packed rows, padding included): the whole job's rates, rank 0's figures times
  the world size (the data module gives the ranks of a micro-step the same kind counts);
- ``throughput/tflops_per_device``: the analytic model FLOPs of the steps (``models/flops.py``: packed
  per-sample attention, sample tokens only, frozen parts forward only) per second on one device;
- ``throughput/mfu``: that over the device's peak, ``peak_flops`` or, by ``torch.cuda.get_device_name``,
  the dense bf16 peak of common accelerators (``PEAK_BF16``). On CPU, or an unknown GPU, without
  ``peak_flops`` no MFU is logged (a CPU's peak depends on its cores and vector units).

The counts are summed on the device and read once per log, so the callback adds no host sync per step.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from jf_lightning.models.flops import FlopModel, batch_counts

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s; the first name
# contained in the device name wins, so specific models come before their family.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("MI300X", 1307e12),
)


def default_peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device`` if it is a GPU this table knows, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


class Throughput(pl.Callback):
    def __init__(self, peak_flops: float | None = None):
        """
        Args:
            peak_flops: The device's peak FLOP/s for MFU; None: ``PEAK_BF16`` by device name (no MFU on
                CPU or an unknown accelerator).
        """
        self.peak_flops = peak_flops
        self.flop_model: FlopModel | None = None
        self.peak: float | None = None
        self.window: dict = {}
        self.window_start: float | None = None
        self.last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flop_model = FlopModel.from_model(pl_module.model)
        self.peak = self.peak_flops or default_peak_flops(pl_module.device)
        if self.peak is None and trainer.is_global_zero:
            rank_zero_info(
                f"Throughput: no peak FLOP/s known for {pl_module.device}; set peak_flops to log MFU"
            )
        self.window, self.window_start, self.last_step = {}, None, trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.window_start is None:
            self._sync(pl_module)
            self.window_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for key, value in batch_counts(batch).items():
            self.window[key] = self.window.get(key, 0) + value
        if trainer.global_step == self.last_step:  # a micro-batch inside an accumulation
            return
        self.last_step = trainer.global_step
        if trainer.global_step % max(1, trainer.log_every_n_steps):
            return
        self._sync(pl_module)
        elapsed = time.perf_counter() - self.window_start
        counts = {key: float(value) for key, value in self.window.items()}
        self.window, self.window_start = {}, time.perf_counter()
        if trainer.is_global_zero and elapsed > 0:
            self._log(trainer, counts, elapsed)

    def _log(self, trainer: pl.Trainer, counts: dict[str, float], elapsed: float) -> None:
        world = trainer.world_size
        flops = self.flop_model.flops(counts)["total"] / elapsed  # this device's model FLOP/s
        metrics = {
            "throughput/samples_per_s": counts["samples"] * world / elapsed,
            "throughput/tokens_per_s": counts["real_tokens"] * world / elapsed,
            "throughput/padded_tokens_per_s": counts["all_tokens"] * world / elapsed,
            "throughput/tflops_per_device": flops / 1e12,
        }
        if self.peak:
            metrics["throughput/mfu"] = flops / self.peak
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":  # queued kernels count in the window they were queued in
            torch.cuda.synchronize(pl_module.device)
