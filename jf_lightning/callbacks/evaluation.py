"""What every evaluation callback shares.

These helpers answer the questions each evaluation callback faces: which model and prompt format to use
(``pl_module.model`` and the data's own ``Templater``), which weights (the EMA ones), which mode (eval,
no grad, each submodule's mode restored afterwards) and how to split work across ranks (a disjoint,
equal-sized share per rank, gathered back in order: every rank runs the same number of forward passes,
which sharded (FSDP) models need).

:class:`EvaluationCallback` puts them together for a metric: when to run (every validation, or every
``every_n_steps`` optimizer steps apart from the validation losses), with which weights (the EMA's),
what it cost (``val/time/<name>``) and where its numbers and images go (the loggers, and a grid under
``<run dir>/samples`` logged to MLflow). :class:`GeneratedImagesCallback` adds the generating side:
a prompt list split over the ranks, drawn batch by batch and handed to :class:`ImageScorer` s.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

from jf_lightning.callbacks.autoguidance import autoguide_for
from jf_lightning.callbacks.ema import averaged_weights
from jf_lightning.data.templates import Templater, TemplateStyle
from jf_lightning.inference.generate import generate_images
from jf_lightning.inference.prompts import generation_prompt_ids


def templater_for(
    trainer: pl.Trainer, pl_module: pl.LightningModule, style: TemplateStyle | None
) -> Templater:
    """A Templater like the data's: the datamodule's tokenizer (or the module's) and template style
    (``style`` overrides it; ``pretrain`` when neither says), sized by the model's config."""
    datamodule = getattr(trainer, "datamodule", None)
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is None:
        tokenizer = getattr(pl_module, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError("evaluation callbacks need a tokenizer: expose `.tokenizer` on the datamodule")
    style = style or getattr(datamodule, "template", None) or "pretrain"
    cfg = pl_module.model.cfg
    return Templater(tokenizer, cfg.num_und_tokens, cfg.num_gen_tokens, style)


@contextlib.contextmanager
def evaluation_mode(pl_module: pl.LightningModule) -> Iterator[None]:
    """Eval mode and no grad; each submodule's own mode is restored (a stage keeps frozen parts in eval
    mode, which a blanket ``train()`` would undo)."""
    modes = [(m, m.training) for m in pl_module.modules()]
    pl_module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def run_dir(trainer: pl.Trainer) -> Path:
    """This run's own directory, as the CLI's checkpoints use it: ``<save_dir>/<name>/<version>``
    (MLflow: ``<root>/<experiment id>/<run id>``). Rank 0 only: unlike ``trainer.log_dir`` it runs
    no collective, and unlike it, it is never shared between MLflow runs."""
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return Path(logger.log_dir)
    return Path(logger.save_dir or trainer.default_root_dir, str(logger.name), str(logger.version))


def rank_share(n: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s items among ``n`` (strided), padded with -1 to ceil(n / world_size) entries so
    that every rank does the same amount of work."""
    k = math.ceil(n / world_size)
    return [i if i < n else -1 for i in range(rank, rank + k * world_size, world_size)]


def gather_rows(trainer: pl.Trainer, index: Sequence[int], values: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's ``values`` (k, ...) for its ``index`` (k,) -> (n, ...) in item order, on every rank."""
    device = trainer.strategy.root_device
    idx = trainer.strategy.all_gather(torch.tensor(index, device=device)).reshape(-1)  # (W*k,)
    vals = trainer.strategy.all_gather(values.to(device)).reshape(-1, *values.shape[1:])  # (W*k, ...)
    keep = idx >= 0
    out = torch.empty((n, *values.shape[1:]), dtype=values.dtype, device=device)
    out[idx[keep]] = vals[keep]
    return out.cpu()


def render_prompts(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    templater: Templater,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    cfg_weight: float | None,
    batch_size: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(N, 3, H, W) uint8 images of ``prompts`` on this rank, in the trainer's precision context, with
    the trainer's autoguide when an :class:`Autoguidance` callback has one."""
    ids = [generation_prompt_ids(templater, p) for p in prompts]
    guide = autoguide_for(trainer, pl_module)
    with trainer.precision_plugin.forward_context():
        return generate_images(
            pl_module.model, ids, seeds, templater.pad, steps, cfg_weight, batch_size, temperature, guide
        )


def first_rows(share: Sequence[int], n: int, world_size: int) -> int:
    """How many leading entries of every rank's strided ``share`` hold items ``0 .. n - 1``: gathering
    that many rows from every rank collects them (and a few more, dropped by their index)."""
    return min(len(share), math.ceil(n / world_size))


def save_grid(trainer: pl.Trainer, grid, folder: str, name: str) -> Path:
    """Save a PIL grid as ``<run dir>/<folder>/<name>`` and log it to every MLflow logger as the artifact
    ``<folder>/<name>`` (rank 0 only)."""
    path = run_dir(trainer) / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(path), folder)
    return path


class EvaluationCallback(Callback):
    """A metric of the model, run with the EMA weights in eval mode, timed and logged.

    It runs at the end of every validation epoch (not the sanity check), or with ``every_n_steps`` on
    its own cadence: every that many optimizer steps during training, apart from the validation
    losses (and still in ``validate``, which trains nothing). Subclasses implement :meth:`evaluate`,
    which runs on every rank (each its share, every rank calling the metric's compute) and returns
    the same numbers on every rank; the callback adds ``val/time/<name>``, the seconds it took.
    """

    #: the metric's name in ``val/time/<name>``
    name: str = "evaluation"

    def __init__(self, every_n_steps: int | None = None):
        """
        Args:
            every_n_steps: Run every this many optimizer steps during training instead of at every
                validation; null: at every validation.
        """
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"{type(self).__name__}: every_n_steps={every_n_steps} must be >= 1 or null")
        self.every_n_steps = every_n_steps
        self._last_step = -1  # the optimizer step last scored on the training cadence

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Full metric names -> values, identical on every rank (runs on every rank, weights and mode set)."""
        raise NotImplementedError

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps: repeats across accumulated micro-batches
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.log_metrics(trainer, pl_module, self.run(trainer, pl_module), in_validation=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (self.every_n_steps and trainer.state.fn == "fit"):
            return
        self.log_metrics(trainer, pl_module, self.run(trainer, pl_module), in_validation=True)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """:meth:`evaluate` with the EMA weights, in eval mode, plus ``val/time/<name>``."""
        start = time.perf_counter()
        with averaged_weights(trainer, pl_module), evaluation_mode(pl_module):
            metrics = dict(self.evaluate(trainer, pl_module))
        metrics[f"val/time/{self.name}"] = time.perf_counter() - start
        return metrics

    def log_metrics(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        metrics: dict[str, float],
        in_validation: bool,
    ) -> None:
        """In validation through ``pl_module.log`` (beside the losses, for checkpoint monitors and
        ``validate``'s results); on the training cadence straight to the loggers at the current step,
        since Lightning writes a training-hook value only on its ``log_every_n_steps`` steps."""
        if in_validation:
            for key, value in metrics.items():
                # identical on every rank but the time; sync_dist keeps every rank's value well defined
                pl_module.log(key, value, sync_dist=True)
            return
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
