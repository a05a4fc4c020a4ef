"""Sample grids during training: fixed prompts and seeds drawn with the EMA weights, saved beside the
run's checkpoints and logged to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger

from jf_lightning.callbacks.autoguidance import autoguide_for
from jf_lightning.callbacks.ema import averaged_weights
from jf_lightning.callbacks.evaluation import (
    evaluation_mode,
    gather_rows,
    rank_share,
    render_prompts,
    run_dir,
    templater_for,
)
from jf_lightning.data.templates import Templater, TemplateStyle
from jf_lightning.inference.generate import generate_trajectories
from jf_lightning.inference.images import make_grid
from jf_lightning.inference.prompts import generation_prompt_ids

DEFAULT_PROMPTS = (
    "a photo of a red circle",
    "a photo of three blue squares",
    "a photo of a green triangle left of a yellow circle",
    "a photo of a purple square and a black triangle",
)



class SampleGridCallback(Callback):
    """Every ``every_n_steps`` optimizer steps and at the end of training: one image per (prompt, seed)
    with the EMA weights, as a PNG grid (a row per prompt, a column per seed) saved under
    ``<run dir>/samples/step_XXXXXX.png`` (beside the run's checkpoints) and logged to MLflow as the artifact
    ``samples/step_XXXXXX.png``. With ``trajectory_columns`` it also draws ``trajectory_XXXXXX.png``: for
    the first seed of each prompt, the clean image predicted along the sampler's path (where the layout
    is decided, and whether a step shows two candidate objects that the finished image keeps)."""

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
        trajectory_columns: int = 0,
        temperature: float = 1.0,
    ):
        """
        Args:
            every_n_steps: Draw a grid every this many optimizer steps (and once when training ends).
            prompts: Text prompts, one grid row each.
            seeds: Noise seeds, one grid column each (the same seeds every time: grids compare).
            steps: Euler steps of the sampler.
            cfg_weight: Classifier-free guidance weight; null samples the conditional branch alone.
            template: Prompt template (``pretrain`` / ``sft``); null takes the datamodule's.
            batch_size: Images generated per sampler call, per rank.
            captions: Write each prompt under its image.
            trajectory_columns: 0 = no trajectory; else the predicted clean image at this many points
                of the path (the first at pure noise, the last the finished image); a path of fewer
                steps shows all its steps + 1 points.
        """
        if every_n_steps < 1 or not prompts or not seeds:
            raise ValueError("SampleGridCallback needs every_n_steps >= 1, prompts and seeds")
        if trajectory_columns < 0 or trajectory_columns == 1:
            raise ValueError(f"trajectory_columns={trajectory_columns} must be 0 (off) or at least 2 (noise ... image)")
        self.every_n_steps, self.steps, self.cfg_weight = every_n_steps, steps, cfg_weight
        self.prompts, self.seeds = list(prompts), list(seeds)
        self.template, self.batch_size, self.captions = template, batch_size, captions
        self.trajectory_columns, self.temperature = trajectory_columns, temperature
        self._last_step = -1
        self.dirpath: Path | None = None

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
                trainer,
                pl_module,
                templater,
                [prompts[i] for i in mine],
                [seeds[i] for i in mine],
                self.steps,
                self.cfg_weight,
                self.batch_size,
                self.temperature,
            )
        images = gather_rows(trainer, share, images, len(prompts))  # (P*S, 3, H, W) uint8
        if self.trajectory_columns:
            self.trajectory(trainer, pl_module, templater, step)
        if not trainer.is_global_zero:
            return None
        grid = make_grid(images, prompts if self.captions else None, nrow=len(self.seeds))
        return self._save(trainer, grid, f"step_{step:06d}.png")

    def trajectory(self, trainer: pl.Trainer, pl_module: pl.LightningModule, templater: Templater, step: int) -> None:
        """Draw the trajectory grid: a row per prompt (first seed), a column per point of the path."""
        columns = min(self.trajectory_columns, self.steps + 1)
        share = rank_share(len(self.prompts), trainer.global_rank, trainer.world_size)
        mine = [max(i, 0) for i in share]
        ids = [generation_prompt_ids(templater, self.prompts[i]) for i in mine]
        with averaged_weights(trainer, pl_module), evaluation_mode(pl_module), trainer.precision_plugin.forward_context():
            paths = generate_trajectories(
                pl_module.model, ids, [self.seeds[0]] * len(ids), templater.pad, self.steps, self.cfg_weight,
                self.batch_size, columns, self.temperature, autoguide_for(trainer, pl_module),
            )  # (k, columns, 3, H, W)
        paths = gather_rows(trainer, share, paths, len(self.prompts))  # (P, columns, 3, H, W)
        if trainer.is_global_zero:
            labels = [p if c == 0 else "" for p in self.prompts for c in range(columns)]
            grid = make_grid(paths.flatten(0, 1), labels if self.captions else None, nrow=columns)
            self._save(trainer, grid, f"trajectory_{step:06d}.png")

    def _save(self, trainer: pl.Trainer, grid, name: str) -> Path:
        self.dirpath = run_dir(trainer) / "samples"
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / name
        grid.save(path)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), "samples")
        return path
