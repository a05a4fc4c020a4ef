"""The ``jf`` command (``python -m jf_lightning``): LightningCLI over the stages and the data module.

``jf fit -c experiments/tiny.yaml`` trains; ``jf validate -c ... --ckpt_path ...`` evaluates;
``--print_config`` shows the resolved configuration. What the CLI adds to plain LightningCLI:

- the data module's image size and token counts are linked from the model config (one source);
- ``shapes_world``: the synthetic dataset a config trains on, written on first use if absent;
- ``siglip_pretraining``: a SigLIP pretrained contrastively on that world, on first use if absent
  (``models/siglip_pretraining.py``); the model loads it through ``siglip.source``;
- MLflow by default (a local sqlite store), the experiment named after the config file, the resolved
  config saved beside the checkpoints and logged to the run (file artifact + flattened params);
- always-on callbacks: ``checkpoint`` (ModelCheckpoint; its last.ckpt holds the final step), ``ema``
  (decay 0.99), a learning-rate monitor and a phase timer; a progress bar labelled by the step
  budget; and one closing line saying where the run and the checkpoint are and where the time went.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.utilities.logger import _flatten_dict
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from jf_lightning.callbacks.checkpoint import FinalStepCheckpoint
from jf_lightning.callbacks.ema import EMA
from jf_lightning.callbacks.phase_timer import PhaseTimer, format_seconds
from jf_lightning.callbacks.progress import relabel_default_progress_bar
from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.data.shapes_shards import write_shapes_world
from jf_lightning.models.siglip_pretraining import SiglipPretrainingConfig, pretrain_siglip
from jf_lightning.stages.base import JanusFlowStage, check_cooldown_fits, resolve_config

AUTO = "auto"
"""Experiment name placeholder: replaced by the stem of the first config file."""
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ROOT_DIR = "mlruns"  # checkpoints land in mlruns/<experiment>/<run>/, beside MLflow's artifacts/


def _model_sizes(preset: str, ablation: str | None, overrides: dict | None) -> dict[str, int]:
    cfg = resolve_config(preset, ablation, overrides)
    return {
        "image_size": cfg.image_size,
        "num_und_tokens": cfg.num_und_tokens,
        "num_gen_tokens": cfg.num_gen_tokens,
    }


def run_dir(trainer) -> Path:
    """The directory Lightning's ModelCheckpoint uses for this run, without its ``checkpoints``."""
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    root = logger.save_dir or trainer.default_root_dir
    return Path(root, str(logger.name), str(logger.version))


class SaveConfigToRun(SaveConfigCallback):
    """Saves the resolved config as ``<run dir>/config.yaml`` (beside ``checkpoints/``) and logs it to
    MLflow, as the file artifact ``config.yaml`` and as flattened params (``model.init_args.lr``, ...)."""

    def __init__(self, *args, **kwargs):
        # Lightning's own copy goes to trainer.log_dir, which MLflow leaves shared between runs.
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        path = run_dir(trainer) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path))
            logger.log_hyperparams(_flatten_dict(yaml.safe_load(text) or {}, delimiter="."))


class JanusFlowCLI(LightningCLI):
    def __init__(self, args: Any = None, run: bool = True, **kwargs):
        self.prepare_seconds: float | None = None  # set by before_fit, read by the closing line
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        kwargs.setdefault("trainer_defaults", {
            "default_root_dir": DEFAULT_ROOT_DIR,
            "gradient_clip_val": 1.0,  # every stage of the paper
            "logger": {"class_path": "lightning.pytorch.loggers.MLFlowLogger", "init_args": {
                "experiment_name": AUTO, "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)}},
            "callbacks": [LearningRateMonitor(logging_interval="step"), PhaseTimer()],  # always added
        })  # fmt: skip
        super().__init__(
            JanusFlowStage,
            JanusFlowDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(FinalStepCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_argument(
            "--shapes_world", type=dict[str, Any] | None, default=None,
            help="Keyword arguments of data.shapes_shards.write_shapes_world (out_dir, seed, train_samples, "
            "val_samples, image_size, samples_per_shard): the shapes world is written there before "
            "fit/validate if absent (a directory with the same manifest is reused as is).",
        )  # fmt: skip
        parser.add_argument(
            "--siglip_pretraining", type=dict[str, Any] | None, default=None,
            help="out_dir plus the fields of models.siglip_pretraining.SiglipPretrainingConfig (world, "
            "preset, steps, batch_size, lr, ...): a SigLIP is pretrained there before fit/validate if "
            "absent; point model.init_args.overrides['siglip.source'] at the same out_dir.",
        )  # fmt: skip
        model_keys = tuple(f"model.init_args.{k}" for k in ("preset", "ablation", "overrides"))
        for key in ("image_size", "num_und_tokens", "num_gen_tokens"):
            parser.link_arguments(
                model_keys, f"data.{key}", compute_fn=lambda p, a, o, key=key: _model_sizes(p, a, o)[key]
            )

    def _parse_ckpt_path(self) -> None:
        # With --ckpt_path, LightningCLI replaces the model's init arguments by the checkpoint's
        # hyperparameters, so a value changed for the resumed run would be dropped without a word.
        subcommand = self.config.get("subcommand")
        configured = _model_init_args(self.config[subcommand]) if subcommand else {}
        super()._parse_ckpt_path()
        if not configured:
            return
        resumed = _model_init_args(self.config[subcommand])
        for key in sorted(k for k in configured if configured[k] != resumed.get(k)):
            warnings.warn(
                f"--ckpt_path {self.config[subcommand].ckpt_path}: model.init_args.{key} is "
                f"{resumed.get(key)!r} from the checkpoint, not {configured[key]!r} as configured "
                "(a resumed run keeps its hyperparameters; start a new run to change it)",
                stacklevel=1,
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        logger = config.trainer.logger
        if isinstance(logger, dict) or not hasattr(logger, "class_path"):
            return
        if logger.class_path.endswith("MLFlowLogger"):
            args = logger.init_args
            if args.experiment_name == AUTO:
                files = [Path(str(c)) for c in (config.get("config") or [])]
                args.experiment_name = files[0].stem if files else "jf_lightning"
            if args.run_name is None:
                stage = config.model.class_path.rsplit(".", 1)[-1]
                args.run_name = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # `logger: false`: LearningRateMonitor would refuse to start
            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, LearningRateMonitor)]
        relabel_default_progress_bar(trainer)
        return trainer

    def before_fit(self) -> None:
        config = self.config[self.subcommand]
        # Said now, not at configure_optimizers after minutes of writing inputs.
        init_args = _model_init_args(config)
        check_cooldown_fits(init_args.get("cooldown_steps") or 0, config.trainer.max_steps)
        start = time.perf_counter()
        if prepare_inputs(config):
            self.prepare_seconds = time.perf_counter() - start

    def before_validate(self) -> None:
        prepare_inputs(self.config[self.subcommand])

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(run_summary(self.trainer, self.prepare_seconds))


def _model_init_args(config) -> dict[str, Any]:
    """The model's init arguments of one subcommand's config, as a plain dict."""
    init_args = config.model.get("init_args")
    return init_args.as_dict() if init_args is not None else {}


def prepare_inputs(config) -> bool:
    """Write what the config generates for itself, if absent: the shapes world, then the SigLIP
    pretrained on it. Both are idempotent (a directory holding the same thing is left untouched).
    Returns whether the config asks for any such input."""
    if config.get("shapes_world"):
        write_shapes_world(**dict(config.shapes_world))
    if config.get("siglip_pretraining"):
        spec = dict(config.siglip_pretraining)
        if "out_dir" not in spec:
            raise ValueError("siglip_pretraining: out_dir is required (where the pretrained SigLIP goes)")
        out_dir = spec.pop("out_dir")
        try:
            pretraining = SiglipPretrainingConfig(**spec)
        except TypeError as err:
            raise ValueError(f"siglip_pretraining: {err}") from None
        pretrain_siglip(out_dir, pretraining)
    return bool(config.get("shapes_world") or config.get("siglip_pretraining"))


def run_summary(trainer, prepare_seconds: float | None = None) -> str:
    """One line: where the MLflow run and the last checkpoint are, how to open them, and where the
    time went (inputs written before fit, training steps, validation)."""
    parts = []
    logger = trainer.logger
    if isinstance(logger, MLFlowLogger):
        uri = logger._tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).absolute())
        parts.append(f"MLflow run {logger.run_id} (experiment {logger._experiment_name!r}) in {uri}; "
                     f"open with: mlflow ui --backend-store-uri {uri}")  # fmt: skip
    if prepare_seconds is not None:
        parts.append(f"inputs prepared in {format_seconds(prepare_seconds)}")
    timers = [cb for cb in trainer.callbacks if isinstance(cb, PhaseTimer) and cb.fit_seconds]
    if timers:
        parts.append(timers[0].summary())
    ckpt = trainer.checkpoint_callback
    path = ckpt.last_model_path or ckpt.best_model_path if ckpt is not None else ""
    parts.append(f"checkpoint: {Path(path).absolute() if path else 'none saved'}")  # last: copyable
    return "; ".join(parts)


def main(args: Any = None) -> None:
    # Frozen parts are in eval mode on purpose (the stage's freeze policy): not worth a warning.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    JanusFlowCLI(args=args)


if __name__ == "__main__":
    main()
