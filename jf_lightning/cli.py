"""The ``jf`` command (``python -m jf_lightning``): LightningCLI over the stages and the data module.

- ``fit -c <config>`` trains, ``validate -c <config> --ckpt_path <ckpt>`` evaluates, ``--print_config``
  shows the resolved configuration;
- ``prepare -c <config>`` makes the inputs the config lists under ``prepare`` (a generated data set, an
  encoder pretrained on it); ``fit`` and ``validate`` stop at once, naming the command, while one is
  missing;
- ``gradient-balance -c <config> [--ckpt <ckpt>]`` prints each loss's gradient norm per model part.

What the CLI adds to plain LightningCLI: the data module's image size and token counts are linked from
the model config (one source); MLflow by default (a local sqlite store), the experiment named after the
config file, the resolved config saved beside the checkpoints and logged to the run (file artifact and
flattened params); always-on callbacks (``checkpoint``, whose last.ckpt holds the final step; ``ema``,
decay 0.99; a learning-rate monitor; a phase timer); and one closing line saying where the run and the
checkpoint are and where the time went.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback, instantiate_class
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf.errors import OmegaConfBaseException

from jf_lightning import compare
from jf_lightning.callbacks.atomic_checkpoint import AtomicCheckpointIO
from jf_lightning.callbacks.checkpoint import FinalStepCheckpoint
from jf_lightning.callbacks.data_stats import DataStats
from jf_lightning.callbacks.ema import EMA
from jf_lightning.callbacks.evaluation import run_dir
from jf_lightning.callbacks.phase_timer import PhaseTimer
from jf_lightning.callbacks.progress import relabel_default_progress_bar
from jf_lightning.callbacks.throughput import Throughput
from jf_lightning.callbacks.tracking import check_tracking_server
from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.inputs import PreparedInput, UserInputError, check_ready
from jf_lightning.models.config import JanusFlowConfig, apply_overrides, config_keys, resolve_config
from jf_lightning.recipes import (
    config_files,
    describe_parse_error,
    expand_bases,
    user_error_in,
    with_suggestion,
)
from jf_lightning.stages import gradient_balance
from jf_lightning.stages.base import JanusFlowStage, check_cooldown_fits

AUTO = "auto"
"""Experiment name placeholder: replaced by the stem of the first config file."""
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ROOT_DIR = "mlruns"  # checkpoints land in mlruns/<experiment>/<run>/, beside MLflow's artifacts/


def _model_sizes(config: Any) -> dict[str, int]:
    """Image size and token counts of a model config (a dataclass, or its parsed dict / Namespace);
    not validated here: the stage validates the config it is built with."""
    if not isinstance(config, JanusFlowConfig):
        tree = config.as_dict() if hasattr(config, "as_dict") else dict(config or {})
        tree = tree.get("init_args", tree)  # a dataclass parsed as a class spec
        config = apply_overrides(JanusFlowConfig(), _leaves(tree))
    return {
        "image_size": config.image_size,
        "num_und_tokens": config.num_und_tokens,
        "num_gen_tokens": config.num_gen_tokens,
    }


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


CONFIG_KEY = "model.init_args.config"


def check_config_flags(args: list[str]) -> None:
    """Refuse a ``--model.init_args.config.<key>`` flag naming no field (jsonargparse drops it silently)."""
    valid = set(config_keys())
    for arg in args:
        if arg.startswith(f"--{CONFIG_KEY}."):
            name = arg[len(CONFIG_KEY) + 3 :].split("=", 1)[0]
            if name not in valid:
                key = f"{CONFIG_KEY}.{name}"
                raise UserInputError(with_suggestion(f"unknown key {key!r}", key, [f"{CONFIG_KEY}.{k}" for k in valid]))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"init_args": {"lr": 1}}}`` -> ``{"model.init_args.lr": 1}`` (MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
            logger.log_hyperparams(flatten(yaml.safe_load(text) or {}))


class JanusFlowCLI(LightningCLI):
    def __init__(self, args: Any = None, run: bool = True, **kwargs):
        self.configured_model_args: dict[str, Any] = {}  # before --ckpt_path replaced them
        self.recipe_files: list[str] = []
        self.key_parsers: list = []
        # Parse errors raise (main prints them in one line) instead of printing the whole usage text.
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf", "exit_on_error": False})
        kwargs.setdefault("trainer_defaults", {
            "default_root_dir": DEFAULT_ROOT_DIR,
            "gradient_clip_val": 1.0,  # every stage of the paper
            "logger": {"class_path": "jf_lightning.callbacks.tracking.BackgroundMLFlowLogger", "init_args": {
                "experiment_name": AUTO, "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)}},
            "callbacks": [LearningRateMonitor(logging_interval="step"), PhaseTimer(), Throughput(), DataStats()],  # always added
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
        self.key_parsers.append(parser)  # each subcommand's: the keys a misspelt one is matched against
        parser.add_lightning_class_args(FinalStepCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_argument(
            "--base", type=str | None, default=None,
            help="The config file this one builds on (relative to it): the CLI reads the base first, then "
            "this file's differences. Set in recipe files, not on the command line.",
        )  # fmt: skip
        parser.add_argument(
            "--prepare", type=list[PreparedInput], default=[],
            help="Inputs this config makes for itself (a generated data set, an encoder pretrained on it), "
            "in order: `python -m jf_lightning prepare -c <config>` makes them; fit and validate refuse to "
            "start while one is missing.",
        )  # fmt: skip
        for key in ("image_size", "num_und_tokens", "num_gen_tokens"):
            parser.link_arguments(
                "model.init_args.config", f"data.{key}", compute_fn=lambda c, key=key: _model_sizes(c)[key]
            )

    def parse_arguments(self, parser, args) -> None:
        if args is None or isinstance(args, list):
            args = list(sys.argv[1:] if args is None else args)
            self.recipe_files = config_files(args)  # as the user gave them, before their bases
            args = expand_bases(args)
        try:
            args = self.with_preset_config(parser, args)
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            known = [key for p in self.key_parsers for key in p.get_defaults().keys()]  # noqa: SIM118 (a Namespace)
            known += [f"model.init_args.{name}" for name in inspect.signature(JanusFlowStage.__init__).parameters]
            known += [f"{CONFIG_KEY}.{name}" for name in config_keys()]
            raise UserInputError(describe_parse_error(err, known)) from None
        subcommand = self.config.get("subcommand")
        self.configured_model_args = _model_init_args(self.config[subcommand]) if subcommand else {}

    def with_preset_config(self, parser, args: Any) -> Any:
        """``args`` with the model config's defaults taken from the configured preset and ablation.

        jsonargparse knows one default per field (the release's, in ``JanusFlowConfig``), so a first
        parse reads which stage, preset and ablation the config files and flags ask for, and the second
        starts from that preset's config (given as ``--model`` before the user's arguments, which merge
        into it): ``--print_config`` shows the config the run builds, and every key a file or flag sets
        wins over the preset."""
        if not isinstance(args, list):
            return args
        commands = parser._subcommands_action.choices if parser._subcommands_action else None
        at = next((i for i, a in enumerate(args) if a in commands), None) if commands else -1
        if at is None:  # no subcommand given: the parser says so
            return args
        check_config_flags(args)
        first = [a for a in args if a not in ("-h", "--help") and not a.startswith("--print_config")]
        parsed = parser.parse_args(first, _skip_validation=True)  # as --print_config: partial recipes too
        model = (parsed[args[at]] if at >= 0 else parsed).model
        init_args = model.get("init_args")
        preset, ablation = init_args.get("preset", "tiny"), init_args.get("ablation")
        try:
            config = dataclasses.asdict(resolve_config(preset, ablation))
        except ValueError as err:
            raise UserInputError(f"model.init_args: {err}") from None
        spec = json.dumps({"class_path": model.class_path, "init_args": {"config": config}})
        return [*args[: at + 1], f"--model={spec}", *args[at + 1 :]]

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt = config.get("ckpt_path")
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and not Path(ckpt).is_file():
            raise UserInputError(f"--ckpt_path {ckpt}: no such checkpoint file")
        self._warn_replaced_model_args(config)
        # Checked before any class is built: building the logger already creates the MLflow store.
        if self.subcommand == "fit":
            check_cooldown_fits(_model_init_args(config).get("cooldown_steps") or 0, config.trainer.max_steps)
        if self.subcommand in ("fit", "validate"):
            inputs = [instantiate_class((), spec.as_dict()) for spec in config.get("prepare") or []]
            check_ready(inputs, self.prepare_command())
        logger = config.trainer.logger
        if isinstance(logger, dict) or not hasattr(logger, "class_path"):
            return
        if logger.class_path.endswith("MLFlowLogger"):
            args = logger.init_args
            check_tracking_server(args.tracking_uri)  # one line within seconds, not minutes of retries
            if args.experiment_name == AUTO:
                args.experiment_name = self.recipe
            stage = config.model.class_path.rsplit(".", 1)[-1]
            if args.run_name is None:
                args.run_name = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
            # What `compare` groups and names runs by; tags the user gives win.
            model_args = _model_init_args(config)
            tags = compare.run_tags(self.recipe_files[0] if self.recipe_files else None, stage, model_args.get("ablation"),
                                    model_args.get("preset"))  # fmt: skip
            args.tags = {**tags, **(args.tags or {})}

    def _warn_replaced_model_args(self, config) -> None:
        # With --ckpt_path, LightningCLI replaces the model's init arguments by the checkpoint's
        # hyperparameters, so a value changed for the resumed run would be dropped without a word.
        if not config.get("ckpt_path"):
            return
        init_args = config.model.get("init_args")
        if init_args is not None and init_args.get("init_from"):
            init_args.init_from = None  # the checkpoint restores every weight: its source need not exist now
        resumed = _model_init_args(config)
        configured = self.configured_model_args
        for key in sorted(k for k in configured if configured[k] != resumed.get(k)):
            warnings.warn(
                f"--ckpt_path {config.ckpt_path}: model.init_args.{key} is {resumed.get(key)!r} from the "
                f"checkpoint, not {configured[key]!r} as configured (a resumed run keeps its "
                "hyperparameters; start a new run to change it)",
                stacklevel=1,
            )

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: make saves atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not trainer.loggers:  # `logger: false`: LearningRateMonitor would refuse to start
            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, LearningRateMonitor)]
        relabel_default_progress_bar(trainer)
        accumulate = self.datamodule.accumulation(trainer.world_size) if self.datamodule is not None else None
        if accumulate is not None:
            if trainer.accumulate_grad_batches != 1:
                raise UserInputError(
                    "give data.global_batch_size or trainer.accumulate_grad_batches, not both: the global "
                    "batch size sets the accumulation"
                )
            trainer.accumulate_grad_batches = accumulate
        # Instantiation parsed the tag values as YAML ("True" -> True, "0123" -> 123), and a tracking
        # server refuses a tag that is not a string.
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger) and logger.tags:
                logger.tags = {key: str(value) for key, value in logger.tags.items()}
        return trainer

    def prepared_inputs(self) -> list[PreparedInput]:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        return list(config.get("prepare") or [])

    def prepare_command(self) -> str:
        files = " ".join(f"-c {c}" for c in self.recipe_files)
        return f"python -m jf_lightning prepare {files}".strip()

    @property
    def recipe(self) -> str:
        """The stem of the first config file the user gave (the experiment's name), or ``jf_lightning``."""
        return Path(self.recipe_files[0]).stem if self.recipe_files else "jf_lightning"

    def before_fit(self) -> None:
        self.datamodule.setup("fit")  # every shard pattern checked (one line each) before a model is built

    def before_validate(self) -> None:
        self.datamodule.setup("validate")

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(run_summary(self.trainer))


def _model_init_args(config) -> dict[str, Any]:
    """The model's init arguments of one subcommand's config, as a plain dict."""
    init_args = config.model.get("init_args")
    return init_args.as_dict() if init_args is not None else {}


def run_summary(trainer) -> str:
    """One line: where the MLflow run and the last checkpoint are, how to open them, and where the
    time went (training steps, validation)."""
    parts = []
    logger = trainer.logger
    if isinstance(logger, MLFlowLogger):
        uri = mlflow.get_tracking_uri()  # the logger set it; relative sqlite paths made absolute below
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).absolute())
        name = logger.experiment.get_experiment(logger.experiment_id).name
        parts.append(f"MLflow run {logger.run_id} (experiment {name!r}) in {uri}; "
                     f"open with: mlflow ui --backend-store-uri {uri}")  # fmt: skip
    timers = [cb for cb in trainer.callbacks if isinstance(cb, PhaseTimer) and cb.fit_seconds]
    if timers:
        parts.append(timers[0].summary())
    ckpt = trainer.checkpoint_callback
    path = ckpt.last_model_path or ckpt.best_model_path if ckpt is not None else ""
    parts.append(f"checkpoint: {Path(path).absolute() if path else 'none saved'}")  # last: copyable
    return "; ".join(parts)


def prepare(args: list[str]) -> None:
    """``prepare -c <config> ...``: make the config's ``prepare`` inputs, in order (nothing else is
    built or run; the whole config is still parsed, so a broken one is refused here too)."""
    cli = JanusFlowCLI(args=[*args, "--trainer.logger=false"], run=False)
    inputs = cli.prepared_inputs()
    start = time.perf_counter()
    for item in inputs:
        item.prepare()
    print(f"{len(inputs)} input(s) ready in {time.perf_counter() - start:.0f} s: "
          + (", ".join(str(item.path) for item in inputs) or "the config lists none under `prepare`"))  # fmt: skip


def measure_gradient_balance(args: list[str]) -> None:
    """``gradient-balance -c <config> [--ckpt <ckpt>] [--batches N]``: the stage and data exactly as
    ``fit -c <config>`` builds them (no logger, no run), then :mod:`jf_lightning.stages.gradient_balance`."""
    parser = argparse.ArgumentParser(prog="jf gradient-balance", description=gradient_balance.__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", required=True, help="experiment YAML (repeatable)")
    parser.add_argument("--ckpt", help="Lightning checkpoint to measure (default: the fresh init)")
    parser.add_argument("--batches", type=int, default=4, help="training batches to average over")
    known = parser.parse_args(args)
    cli = JanusFlowCLI(args=[*(a for c in known.config for a in ("-c", c)), "--trainer.logger=false"], run=False)
    check_ready(cli.prepared_inputs(), cli.prepare_command())
    print(gradient_balance.report(cli.model, cli.datamodule, known.ckpt, known.batches))


COMMANDS = {"prepare": prepare, "gradient-balance": measure_gradient_balance, "compare": compare.main}


def main(args: list[str] | None = None) -> None:
    # Frozen parts are in eval mode on purpose (the stage's freeze policy): not worth a warning.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # The CLI hands LightningCLI the arguments with recipe bases expanded (expand_bases) on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            JanusFlowCLI(args=args)
    except UserInputError as err:
        sys.exit(f"jf_lightning: error: {err}")
    except ValueError as err:  # jsonargparse wraps what a class refuses while it instantiates it
        cause = user_error_in(err)
        if cause is None:
            raise
        sys.exit(f"jf_lightning: error: {cause}")
    except OmegaConfBaseException as err:  # an interpolation in a config: ${oc.env:VAR} unset, a bad key
        key = getattr(err, "full_key", None)
        sys.exit(f"jf_lightning: error: {str(err).splitlines()[0]}" + (f" (at {key})" if key else ""))


if __name__ == "__main__":
    main()
