"""What every evaluation callback shares.

These helpers answer the questions each evaluation callback faces: which model and prompt format to use
(``pl_module.model`` and the data's own ``Templater``), which weights (the EMA ones), which mode (eval,
no grad, each submodule's mode restored afterwards) and how to split work across ranks (a disjoint,
equal-sized share per rank, gathered back in order: every rank runs the same number of forward passes,
which sharded (FSDP) models need).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from jf_lightning.callbacks.autoguidance import autoguide_for
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
