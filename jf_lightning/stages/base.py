"""The shared base of the three training stages: model building, freezing, losses, optimizer.

A stage is a policy (which top-level parts of the model train) plus the paper's hyperparameters for
that stage; everything else lives here. The math is in ``flow/`` and ``models/``: ``training_step``
only samples the flow inputs, calls the model and weighs the losses.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Literal, get_args

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from jf_lightning.batch import IGNORE_INDEX, PackedBatch
from jf_lightning.flow.rectified_flow import (
    interpolate,
    repa_loss,
    rf_loss,
    sample_logit_normal,
    velocity_target,
)
from jf_lightning.inputs import UserInputError
from jf_lightning.kernels import use_cpu_kernels
from jf_lightning.models.config import Ablation, JanusFlowConfig, config_for
from jf_lightning.models.janusflow import JanusFlow, load_janusflow
from jf_lightning.parallel.fsdp import shard_stage
from jf_lightning.schedules import TimeMeanSchedule, lr_factor
from jf_lightning.stages.init_from import InitWeights, load_initial_weights
from jf_lightning.stages.nonfinite import NonFiniteGuard
from jf_lightning.stages.unused import allow_unused_parameters

PartGroup = Literal["llm", "siglip", "adapters"]


# -------------------------------------------------------------------------------------- freezing


def part_groups(model: JanusFlow) -> dict[str, list[str]]:
    """Top-level parts of ``model`` by role, as the paper's freeze table speaks of them:

    - ``llm``: the language model (embeddings, blocks, LM head);
    - ``siglip``: a pretrained SigLIP that serves understanding (absent in ablations B, C, E);
    - ``adapters``: everything trained from scratch: aligners, the begin-of-understanding embedding,
      the generation encoder/decoder, the REPA head, and the ConvNeXt understanding encoder of C;
    - ``always_frozen``: the VAE and a SigLIP kept only as the REPA target (never trained).
    """
    frozen_ids = {id(m) for m in model.always_frozen()}
    groups: dict[str, list[str]] = {"llm": [], "siglip": [], "adapters": [], "always_frozen": []}
    for name, child in model.named_children():
        if id(child) in frozen_ids:
            groups["always_frozen"].append(name)
        elif name == "language_model":
            groups["llm"].append(name)
        elif name == "vision_und_enc_model" and model.cfg.und_encoder == "siglip":
            groups["siglip"].append(name)
        else:
            groups["adapters"].append(name)
    groups["adapters"] += [name for name, _ in model.named_parameters(recurse=False)]  # beg_of_und_embed
    return groups


# ------------------------------------------------------------------------------- learning rate


def check_cooldown_fits(cooldown: int, max_steps: int | None) -> None:
    """The cool-down ends where training does, so it needs a step budget at least as long."""
    if cooldown and (max_steps is None or max_steps < cooldown):
        raise UserInputError(
            f"model.init_args.cooldown_steps {cooldown} needs trainer.max_steps >= it (max_steps is {max_steps})"
        )


# ------------------------------------------------------------------------------------ the stage


class JanusFlowStage(LightningModule):
    """Base of the training stages. Subclasses set ``trainable_groups`` (the freeze policy) and
    their Table 1 defaults; nothing else differs between stages."""

    trainable_groups: tuple[PartGroup, ...] = ("llm", "siglip", "adapters")

    def __init__(
        self,
        preset: str = "tiny",
        ablation: Ablation | None = None,
        config: JanusFlowConfig | None = None,
        lr: float = 1e-4,
        warmup_steps: int = 2000,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        ar_weight: float = 1.0,
        rf_weight: float = 1.0,
        repa_weight: float = 1.0,
        time_mean: float | list[tuple[int, float]] = 0.0,
        time_std: float = 1.0,
        seed: int = 0,
        lr_scales: dict[str, float] | None = None,
        cooldown_steps: int = 0,
        cpu_kernels: bool = False,
        init_from: str | None = None,
        init_weights: InitWeights = "ema",
        max_nonfinite_steps: int = 10,
        activation_checkpointing: bool = False,
        compile_blocks: bool = False,
    ):
        """
        Args:
            preset: Model preset of ``models/config.py`` (``tiny``, ``janusflow-1.3b``, ``ablation-256``).
            ablation: Table 6 variant applied onto the preset (A no REPA, B shared VAE+ConvNeXt encoder,
                C two VAE+ConvNeXt encoders, D understanding only, E generation only, F final design).
            config: The whole model configuration. The CLI fills every field from ``preset`` and
                ``ablation``, then applies the keys a config file or the command line sets
                (``--model.init_args.config.llm.num_layers 8``); None: ``preset`` and ``ablation`` alone.
            lr: Peak learning rate of AdamW (reached after the warm-up, then constant until ``cooldown_steps``).
            warmup_steps: Optimizer steps of linear warm-up.
            betas: AdamW betas (the paper: 0.9, 0.95).
            weight_decay: AdamW weight decay (the paper: 0).
            ar_weight: Weight of the next-token loss on response and text tokens.
            rf_weight: Weight of the rectified-flow velocity loss.
            repa_weight: Weight of the REPA alignment loss (the paper states none: 1).
            time_mean: Mean of the logit-normal training-time distribution (before the sigmoid): one
                value, or a piecewise-constant schedule by optimizer step, ``[[0, 0.0], [1000, -0.5]]``
                (the first entry at step 0). Validation draws its times at the first entry's mean, so
                ``val/rf_loss`` compares across steps.
            time_std: Standard deviation of the logit-normal training-time distribution.
            seed: Seed of the flow noise and times; each batch's generator mixes it with the batch's
                stream index and the global rank, so runs are reproducible and ranks differ.
            lr_scales: Multipliers of ``lr`` per part group (``llm``, ``siglip``, ``adapters``), e.g.
                ``{adapters: 2.0}`` for the parts trained from scratch; groups not named keep ``lr``.
            cooldown_steps: Optimizer steps at the end of ``trainer.max_steps`` over which the learning
                rate falls linearly to zero (a warmup-stable-decay schedule). 0, the default, keeps the
                paper's constant rate to the end.
            cpu_kernels: Switch the built model onto the CPU speed paths of ``jf_lightning.kernels``
                (``use_cpu_kernels``): masked bf16 attention as matmul-softmax-matmul, the ConvNeXt blocks'
                depthwise conv in fp32 with a cheaper backward, their response norm with fp32 statistics.
                They act only on CPU (elsewhere each is the plain computation) and match the plain model
                up to rounding.
            init_from: Where the model's initial weights come from, so a stage starts where another
                ended: a checkpoint written by ``fit`` (e.g. stage 1's ``last.ckpt`` for stage 2), a
                directory of ``*.safetensors`` in the released JanusFlow-1.3B layout, or a hub id in that
                layout (``deepseek-ai/JanusFlow-1.3B``, fetched with ``huggingface_hub``). Only the
                weights: optimizer, lr schedule, step and data position start fresh (``--ckpt_path``
                resumes a run instead). The tensors must cover the model: all of them from a checkpoint,
                all but the REPA head and the VAE from the released layout; a checkpoint's
                hyperparameters are not applied, this stage's config rules. Read whenever the model is
                built, also before a checkpoint of this run replaces the weights. None: the built
                model's own init.
            init_weights: Which weights of a fit checkpoint ``init_from`` takes: ``ema`` (the
                averages, its ``state_dict``; what validation scored) or ``raw`` (the live weights,
                ``current_model_state``).
            max_nonfinite_steps: Optimizer steps with a non-finite loss or gradient norm are skipped
                (counted as ``train/skipped_nonfinite``); this many in a row stop the run.
            activation_checkpointing: Under FSDP (``jf_lightning.parallel``), recompute each block in backward.
            compile_blocks: Under FSDP, ``torch.compile`` each block.
        """
        super().__init__()
        # Logged by the CLI as part of the whole resolved config; not again by Lightning. The config is
        # kept as a plain dict: checkpoints load with weights_only=True, which refuses dataclasses.
        self.save_hyperparameters(logger=False)
        if dataclasses.is_dataclass(config):
            self.hparams["config"] = dataclasses.asdict(config)
        self.check_arguments()
        try:  # fail early, in one line, on a bad config
            self.time_means = TimeMeanSchedule(time_mean if isinstance(time_mean, list) else [(0, time_mean)])
            self.model_config = config_for(preset, ablation, config)
        except ValueError as err:
            raise UserInputError(f"model.init_args: {err}") from None
        self.model: JanusFlow | None = None  # built in configure_model: construction stays cheap
        self.nonfinite, self.skipped_optimizer_step = NonFiniteGuard(max_nonfinite_steps), False

    def check_arguments(self) -> None:
        """One-line errors naming the key, for values no run can train with."""
        h = self.hparams
        problems = []
        if not h.lr > 0:
            problems.append(f"lr is {h.lr}: give a positive learning rate (Table 1: 1e-4 or 2e-5)")
        if h.warmup_steps < 0:
            problems.append(f"warmup_steps is {h.warmup_steps}: give 0 or a positive step count")
        if h.cooldown_steps < 0:
            problems.append(f"cooldown_steps is {h.cooldown_steps}: give 0 (constant lr) or a positive step count")
        weights = {k: h[k] for k in ("ar_weight", "rf_weight", "repa_weight")}
        if min(weights.values()) < 0 or not any(weights.values()):
            problems.append(f"loss weights {weights} must be >= 0 and not all 0")
        if h.get("max_nonfinite_steps", 1) < 1:
            problems.append(f"max_nonfinite_steps is {h.max_nonfinite_steps}: give 1 or more")
        if h.init_weights not in get_args(InitWeights):
            problems.append(f"init_weights is {h.init_weights!r}: use ema or raw")
        unknown = set(h.lr_scales or {}) - set(get_args(PartGroup))
        if unknown:
            problems.append(f"lr_scales names unknown part groups {sorted(unknown)}: use llm, siglip or adapters")
        if any(not v > 0 for v in (h.lr_scales or {}).values()):
            problems.append(f"lr_scales {dict(h.lr_scales)} must be positive")
        if problems:
            raise UserInputError(f"model.init_args.{problems[0]}")

    # ------------------------------------------------------------------------------- building

    def configure_model(self) -> None:
        # Idempotent: Lightning, load_from_checkpoint and the EMA callback may all call it.
        allow_unused_parameters(self._trainer)  # DDP: a batch without a data kind leaves parts unused
        if self.model is not None:
            return
        self.model = load_janusflow(self.model_config)
        self.load_initial_weights()
        if self.model_config.llm.source is None and self.hparams.get("init_from") is None and self.hparams.preset != "tiny":
            rank_zero_warn(
                f"the {self.hparams.preset} LLM starts from random init: set llm.source (the recipes read "
                "$JF_LLM) or init_from to start from pretrained weights"
            )
        if self.hparams.cpu_kernels:
            use_cpu_kernels(self.model)
        self.apply_freeze_policy()
        if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2, after the build and the freeze
            shard_stage(self)

    def load_initial_weights(self) -> None:
        """The weights of ``init_from``, if given; under DDP every rank loads them into its own model."""
        source = self.hparams.get("init_from")
        if source is None:
            return
        expected = {key: self.hparams.get(key) for key in ("preset", "ablation")}
        expected["config"] = dataclasses.asdict(self.model_config)
        rank_zero_info(load_initial_weights(self.model, source, self.hparams.get("init_weights", "ema"), expected))

    def trainable_parts(self) -> list[str]:
        """Names of the top-level model parts this stage trains (the freeze policy)."""
        groups = part_groups(self.model)
        return [name for group in self.trainable_groups for name in groups[group]]

    def frozen_modules(self) -> list[nn.Module]:
        trainable = set(self.trainable_parts())
        parts = [m for name, m in self.model.named_children() if name not in trainable]
        return parts + self.model.always_frozen()  # always_frozen may sit inside a trained part (C)

    def apply_freeze_policy(self) -> None:
        """requires_grad on exactly the trainable parts; frozen parts in eval mode."""
        self.model.requires_grad_(False)
        for name in self.trainable_parts():
            getattr(self.model, name).requires_grad_(True)
        for module in self.model.always_frozen():  # e.g. the VAE inside C's understanding encoder
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> JanusFlowStage:
        # Frozen parts stay in eval mode whatever Lightning (or a user) switches the rest to.
        super().train(mode)
        if self.model is not None:
            for module in self.frozen_modules():
                module.eval()
        return self

    # ---------------------------------------------------------------------------------- losses

    def flow_generator(self, batch_index: int, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, batch index, global rank, salt): reproducible per batch,
        different across ranks; ``salt`` separates training (0) from validation (1)."""
        rank = self.trainer.global_rank if self._trainer is not None else 0
        entropy = [self.hparams.seed, int(batch_index), rank, salt]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator("cpu").manual_seed(seed)

    def flow_inputs(self, batch: PackedBatch, generator: torch.Generator):
        """Clean latents x (N, C, h, w), noise z0 like x, times t (N,) and z_t for the generation rows."""
        x = batch.gen_latents if batch.gen_latents is not None else self.model.vae.encode(batch.gen_pixels)
        # Validation keeps the first mean, so val/rf_loss compares across steps and with a resumed run
        # (whose validate-only step count restarts at 0).
        mean = self.time_means.at(self.global_step if self.training else 0)
        t = sample_logit_normal(x.shape[0], generator, mean, self.hparams.time_std, device=x.device)  # (N,)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)  # (N, C, h, w)
        return x, noise, t, interpolate(x, noise, t)

    def compute_losses(self, batch: PackedBatch, generator: torch.Generator | None = None) -> dict:
        """The per-batch objective: ``ar_loss`` (None without labelled tokens), ``rf_loss`` and
        ``repa_loss`` (None without generation rows or REPA), and ``loss``, their weighted sum."""
        generator = generator if generator is not None else self.flow_generator(batch.batch_index)
        x = noise = z_t = t = None
        if batch.num_gen:
            x, noise, t, z_t = self.flow_inputs(batch, generator)
        out = self.model(batch, z_t, t)
        losses = {"ar_loss": out.ar_loss, "rf_loss": None, "repa_loss": None}
        if out.velocity is not None:
            losses["rf_loss"] = rf_loss(out.velocity, velocity_target(x, noise))
        if out.repa_pred is not None:
            losses["repa_loss"] = repa_loss(out.repa_pred, self.model.repa_targets(batch))
        weights = {"ar_loss": self.hparams.ar_weight, "rf_loss": self.hparams.rf_weight,
                   "repa_loss": self.hparams.repa_weight}  # fmt: skip
        present = [weights[k] * v for k, v in losses.items() if v is not None]
        if not present:
            raise ValueError("batch has neither labelled tokens nor generation samples: nothing to learn")
        losses["loss"] = torch.stack(present).sum()
        return losses

    # ---------------------------------------------------------------------------------- steps

    def _counts(self, batch: PackedBatch) -> dict[str, int]:
        """How many elements each loss averages over: the logging weights of its epoch mean."""
        n_ar = int((batch.labels != IGNORE_INDEX).sum())
        return {"ar_loss": n_ar, "rf_loss": batch.num_gen, "repa_loss": batch.num_gen, "loss": batch.num_rows}

    def training_step(self, batch: PackedBatch, batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch)
        self.nonfinite.note_losses(losses)
        counts = self._counts(batch)
        for key, value in losses.items():
            if value is not None:
                self.log(f"train/{key}", value.detach(), batch_size=counts[key], prog_bar=key == "loss")
        return losses["loss"]

    def expected_losses(self) -> list[str]:
        """Losses this model can produce (ablation D has no RF, A and D no REPA)."""
        cfg = self.model_config
        return (
            ["ar_loss"]
            + (["rf_loss"] if cfg.generation else [])
            + (["repa_loss"] if cfg.generation and cfg.repa.enabled else [])
        )

    def validation_step(self, batch: PackedBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Lightning's batch_idx restarts every validation epoch: the same noise and times each time,
        # so validation losses are comparable across the run.
        losses = self.compute_losses(batch, self.flow_generator(batch_idx, salt=1 + dataloader_idx))
        counts = self._counts(batch)
        for key in self.expected_losses():
            # Every rank logs every key (weight 0 when absent): the epoch-end sync needs the same keys
            # on all ranks, and the weighted mean then ignores the batches without that loss.
            value = losses[key].detach() if losses[key] is not None else torch.zeros((), device=self.device)
            n = counts[key] if losses[key] is not None else 0
            self.log(f"val/{key}", value, batch_size=n, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------------------ optimizer

    def param_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters (frozen parts stay out): one group, or with ``lr_scales`` one
        group per trainable part group at its scaled lr (named after it, as LearningRateMonitor
        logs it)."""
        scales = self.hparams.get("lr_scales") or {}
        if not scales:
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        groups = part_groups(self.model)
        out = []
        for group in self.trainable_groups:
            modules = [getattr(self.model, name) for name in groups[group]]
            params = [p for m in modules for p in ([m] if isinstance(m, nn.Parameter) else m.parameters())]
            params = [p for p in params if p.requires_grad]
            if params:
                out.append({"params": params, "lr": self.hparams.lr * scales.get(group, 1.0), "name": group})
        return out

    def _fused_optimizer(self, groups: list[dict]) -> bool:
        """Fused AdamW on CPU: torch's default there is a Python loop over the tensors (its foreach default
        is CUDA-only), and the fused kernel took the tiny preset's optimizer step from 9.2 to 2.7 ms (one thread).
        Not under a GradScaler (fp16), which Lightning cannot combine with a fused step and clipping."""
        on_cpu = all(p.device.type == "cpu" for g in groups for p in g["params"])
        return on_cpu and getattr(self._trainer and self._trainer.precision_plugin, "scaler", None) is None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's MixedPrecision refuses to clip for any fused optimizer, because under fp16 its
        # GradScaler would unscale inside the fused step. bf16 has no scaler, so clip as every other
        # precision does (_fused_optimizer never fuses under a scaler).
        precision = self.trainer.precision_plugin
        if isinstance(precision, MixedPrecision) and precision.scaler is None:
            Precision.clip_gradients(precision, optimizer, gradient_clip_val or 0.0, gradient_clip_algorithm or "norm")
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_before_optimizer_step(self, optimizer) -> None:
        # a non-finite loss or gradient norm skips the step (stages/nonfinite.py), the same on all ranks
        self.skipped_optimizer_step = self.nonfinite.check(self, optimizer)
        self.log("train/skipped_nonfinite", float(self.nonfinite.skipped), on_step=True, on_epoch=False)

    def configure_optimizers(self):
        groups = self.param_groups()
        optimizer = torch.optim.AdamW(
            groups,
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
            weight_decay=self.hparams.weight_decay,
            fused=True if self._fused_optimizer(groups) else None,
        )
        cooldown = self.hparams.cooldown_steps
        total = self.trainer.max_steps if cooldown else 0  # the decay ends where training does
        check_cooldown_fits(cooldown, total)
        factor = partial(lr_factor, warmup=max(1, self.hparams.warmup_steps), total=total, cooldown=cooldown)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        # "name" is what LearningRateMonitor logs it as: train/lr sorts with the other train metrics
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"},
        }
