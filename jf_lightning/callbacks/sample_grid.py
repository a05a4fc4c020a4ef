"""Sample grids during training, and the helpers every evaluation callback shares.

The helpers answer the questions each evaluation callback faces: which model and prompt format to use
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
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.weight_averaging import WeightAveraging
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info

from jf_lightning.data.templates import Templater, TemplateStyle
from jf_lightning.metrics.images import generate_images, make_grid
from jf_lightning.metrics.prompting import generation_prompt_ids

DEFAULT_PROMPTS = (
    "a photo of a red circle",
    "a photo of three blue squares",
    "a photo of a green triangle left of a yellow circle",
    "a photo of a purple square and a black triangle",
)

# ------------------------------------------------------------------------------------------ shared helpers


def templater_for(trainer: pl.Trainer, pl_module: pl.LightningModule, style: TemplateStyle | None) -> Templater:
    """The data's own Templater when the datamodule has one (and no style is forced); else one built
    on the datamodule's (or the module's) tokenizer with ``style`` (default ``pretrain``)."""
    datamodule = getattr(trainer, "datamodule", None)
    templater = getattr(datamodule, "templater", None)
    if isinstance(templater, Templater) and (style is None or templater.style == style):
        return templater
    tokenizer = getattr(datamodule, "tokenizer", None) or getattr(pl_module, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError("evaluation callbacks need a tokenizer: expose `.tokenizer` on the datamodule")
    cfg = pl_module.model.cfg
    return Templater(tokenizer, cfg.num_und_tokens, cfg.num_gen_tokens, style or "pretrain")


def move_before_weight_swappers(trainer: pl.Trainer, callback: Callback) -> None:
    """Put ``callback`` before the first weight-averaging callback. Those swap the average in at
    ``on_validation_epoch_start`` and back out at ``on_validation_epoch_end``; hooks run in list order,
    so an ``on_validation_epoch_end`` evaluation listed after them would score the raw weights.
    (Moving an element earlier while ``setup`` iterates the list neither skips nor repeats a callback.)"""
    cbs = trainer.callbacks
    first = next((i for i, cb in enumerate(cbs) if isinstance(cb, WeightAveraging)), None)
    mine = next(i for i, cb in enumerate(cbs) if cb is callback)
    if first is not None and first < mine:
        cbs.insert(first, cbs.pop(mine))
        rank_zero_info(f"{type(callback).__name__} moved before {type(cbs[first + 1]).__name__}: it scores the EMA weights")


@contextlib.contextmanager
def averaged_weights(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
    """Outside validation: swap the weight-averaging callbacks' averages in, and back out after."""
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
) -> torch.Tensor:
    """(N, 3, H, W) uint8 images of ``prompts`` on this rank, in the trainer's precision context."""
    ids = [generation_prompt_ids(templater, p) for p in prompts]
    with trainer.precision_plugin.forward_context():
        return generate_images(pl_module.model, ids, seeds, templater.pad, steps, cfg_weight, batch_size)


# ------------------------------------------------------------------------------------------ the callback


class SampleGridCallback(Callback):
    """Every ``every_n_steps`` optimizer steps and at the end of training: one image per (prompt, seed)
    with the EMA weights, as a PNG grid (a row per prompt, a column per seed) saved under
    ``<log_dir>/samples/step_XXXXXX.png`` and logged to MLflow as the artifact
    ``samples/step_XXXXXX.png``."""

    def __init__(
        self,
        every_n_steps: int = 500,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        seeds: Sequence[int] = (0, 1, 2, 3),
        steps: int = 30,
        cfg_weight: float | None = 2.0,
        template: TemplateStyle | None = None,
        batch_size: int = 16,
        captions: bool = True,
    ):
        if every_n_steps < 1 or not prompts or not seeds:
            raise ValueError("SampleGridCallback needs every_n_steps >= 1, prompts and seeds")
        self.every_n_steps, self.steps, self.cfg_weight = every_n_steps, steps, cfg_weight
        self.prompts, self.seeds = list(prompts), list(seeds)
        self.template, self.batch_size, self.captions = template, batch_size, captions
        self._last_step = -1
        self.dirpath: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0: ask on every rank here, never inside a rank-0 branch
        self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "samples"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps: repeats across accumulated micro-batches
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.sample(trainer, pl_module)

    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        """Render the grid for the current step (all ranks) and save + log it (rank 0)."""
        self._last_step = step = trainer.global_step
        prompts = [p for p in self.prompts for _ in self.seeds]  # (P*S,) row-major: prompt rows
        seeds = [s for _ in self.prompts for s in self.seeds]
        share = rank_share(len(prompts), trainer.global_rank, trainer.world_size)
        mine = [max(i, 0) for i in share]  # padding entries redo item 0 and are dropped on gather
        templater = templater_for(trainer, pl_module, self.template)
        with averaged_weights(trainer, pl_module), evaluation_mode(pl_module):
            images = render_prompts(
                trainer, pl_module, templater, [prompts[i] for i in mine], [seeds[i] for i in mine],
                self.steps, self.cfg_weight, self.batch_size,
            )  # fmt: skip
        images = gather_rows(trainer, share, images, len(prompts))  # (P*S, 3, H, W) uint8
        if not trainer.is_global_zero:
            return None
        grid = make_grid(images, prompts if self.captions else None, nrow=len(self.seeds))
        return self._save(trainer, grid, step)

    def _save(self, trainer: pl.Trainer, grid, step: int) -> Path:
        assert self.dirpath is not None, "setup() was not called"
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"step_{step:06d}.png"
        grid.save(path)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), "samples")
        return path
