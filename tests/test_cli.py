"""The CLI: every shipped YAML parses, --print_config works, model-derived sizes reach the data module,
the MLflow experiment is named after the config file."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from jf_lightning.cli import JanusFlowCLI, main, run_summary
from jf_lightning.models.config import apply_overrides, resolve_config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
TINY = EXPERIMENTS / "tiny.yaml"


def all_yamls() -> list[Path]:
    return sorted(EXPERIMENTS.rglob("*.yaml"))


def args_for(path: Path) -> list[str]:
    """Top-level recipes alone; the overlays in subfolders (``trainer/fsdp.yaml``) after tiny.yaml."""
    return ["-c", str(path)] if path.parent == EXPERIMENTS else ["-c", str(TINY), "-c", str(path)]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the MLflow client creates mlflow.db in the working directory
    monkeypatch.setattr(sys, "argv", ["jf"])  # pytest's own arguments are not the CLI's


def test_experiments_folder_has_the_embedded_default():
    assert TINY in all_yamls()


@pytest.mark.parametrize("path", all_yamls(), ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_every_experiment_yaml_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args_for(path), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("jf_lightning.stages.")
    assert printed["trainer"]["gradient_clip_val"] == 1.0


def data_sizes(cli) -> tuple[int, int, int]:
    return cli.datamodule.image_size, cli.datamodule.num_und_tokens, cli.datamodule.num_gen_tokens


def model_sizes(cfg) -> tuple[int, int, int]:
    return cfg.image_size, cfg.num_und_tokens, cfg.num_gen_tokens


def test_model_sizes_are_linked_into_the_data_module():
    # run=False: no subcommand, the classes are instantiated and nothing runs
    cli = JanusFlowCLI(args=["-c", str(TINY)], run=False)
    assert data_sizes(cli) == model_sizes(resolve_config("tiny"))
    flags = ["--model.init_args.config.image_size=64", "--model.init_args.config.siglip.image_size=64"]
    cli = JanusFlowCLI(args=["-c", str(TINY), *flags], run=False)
    cfg = resolve_config("tiny", None, {"image_size": 64, "siglip.image_size": 64})
    assert data_sizes(cli) == model_sizes(cfg) and cfg.image_size == 64
    # the preset's config with the two keys set (and tiny.yaml's own)
    assert cli.model.model_config == apply_overrides(cfg, {"siglip.source": "data/shapes-siglip"})


def test_print_config_shows_every_model_field_with_the_presets_values(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(TINY), "--model.init_args.config.llm.num_layers=3", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["config"]
    expected = dataclasses.asdict(resolve_config("tiny", None, {"llm.num_layers": 3, "siglip.source": "data/shapes-siglip"}))
    assert json.loads(json.dumps(config)) == json.loads(json.dumps(expected))


def test_experiment_named_after_the_config_file_and_summary_line():
    cli = JanusFlowCLI(args=["-c", str(TINY)], run=False)
    logger = cli.config.trainer.logger.init_args
    assert logger.experiment_name == "tiny"
    assert logger.tracking_uri == "sqlite:///mlflow.db"
    assert cli.model.model is None  # the model is built in configure_model, not at instantiation
    line = run_summary(cli.trainer)
    assert "mlflow ui --backend-store-uri sqlite:////" in line and "checkpoint:" in line and "\n" not in line


@pytest.mark.parametrize("args", [
    ["--model.init_args.config.llm.sorce=x"],
    ['--model.init_args.config={"llm": {"sorce": "x"}}'],
])  # fmt: skip
def test_unknown_model_config_key_is_one_line_with_the_nearest_key(args):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY), *args])
    assert str(exit_info.value) == (
        "jf_lightning: error: unknown key 'model.init_args.config.llm.sorce'; "
        "did you mean 'model.init_args.config.llm.source'?"
    )


def test_a_wrong_type_in_the_model_config_names_the_key():
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY), "--model.init_args.config.llm.num_layers=abc"])
    assert str(exit_info.value).startswith("jf_lightning: error: model.init_args.config.llm.num_layers: Expected a")


def test_runs_without_a_logger_drop_the_learning_rate_monitor():
    cli = JanusFlowCLI(args=["-c", str(TINY), "--trainer.logger=false"], run=False)
    assert not cli.trainer.loggers
    assert not any(type(cb).__name__ == "LearningRateMonitor" for cb in cli.trainer.callbacks)


def test_progress_bar_names_the_step_budget_not_epoch_minus_two():
    cli = JanusFlowCLI(args=["-c", str(TINY), "--trainer.logger=false", "--trainer.max_steps=40"], run=False)
    bar = cli.trainer.progress_bar_callback
    bar.setup(cli.trainer, cli.model, "fit")
    cli.trainer.fit_loop.max_epochs = -1  # what fit sets for a run bounded by max_steps alone
    assert bar.step_budget_description().strip() == "Training (40 steps)"
    cli.trainer.fit_loop.max_epochs = 3
    assert bar.step_budget_description() is None  # epoch-bounded runs keep Lightning's label


class ParseOnlyCLI(JanusFlowCLI):
    """Parses a subcommand (ckpt_path included) and stops before building or running anything."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def test_resuming_warns_for_each_model_argument_the_checkpoint_replaces(tmp_path):
    ckpt = tmp_path / "resume.ckpt"
    hparams = {"_class_path": "jf_lightning.stages.PretrainingStage", "time_mean": 0.0, "cooldown_steps": 800}
    torch.save({"hyper_parameters": hparams}, ckpt)
    args = ["fit", "-c", str(TINY), f"--ckpt_path={ckpt}", "--trainer.logger=false",
            "--model.init_args.time_mean=-0.5", "--model.init_args.cooldown_steps=800", "--prepare=[]"]  # fmt: skip
    with pytest.warns(UserWarning, match=r"model.init_args.time_mean is 0.0 from the checkpoint, not -0.5") as seen:
        cli = ParseOnlyCLI(args=args)
    assert cli.config.fit.model.init_args.time_mean == 0.0  # what LightningCLI does; the warning says so
    assert not [w for w in seen if "cooldown_steps" in str(w.message)]  # unchanged: nothing to say


def test_fit_on_missing_inputs_is_one_line_naming_the_prepare_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY)])
    assert str(exit_info.value) == (
        "jf_lightning: error: data/shapes is missing (ShapesWorld of the config's `prepare` list): "
        f"make it first with `python -m jf_lightning prepare -c {TINY}`"
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # no run was created


def test_a_misspelt_prepare_setting_is_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit, match="train_sampels"):
        main(["prepare", "-c", str(TINY), "--prepare.init_args.train_sampels=8"])
    assert not (tmp_path / "data").exists()


def test_a_cooldown_longer_than_max_steps_is_refused_before_the_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="cooldown_steps 800 needs trainer.max_steps >= it \\(max_steps is 100\\)"):
        ParseOnlyCLI(args=["fit", "-c", str(TINY), "--trainer.max_steps=100", "--trainer.logger=false"])
    assert not (tmp_path / "data").exists()  # tiny.yaml's world and SigLIP were not started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.init_args.lr=-1"], "model.init_args.lr is -1.0: give a positive learning rate"),
        (["--model.init_args.lr=0"], "model.init_args.lr is 0.0"),
        (["--model.init_args.preset=huge"], "unknown model preset 'huge': choose one of"),
        (["--model.init_args.rf_weight=-2"], "loss weights"),
        (["--data.ratio_schedule=[[5, [1, 1, 1]]]"], "data.ratio_schedule: "),
        (["--ckpt_path=nowhere.ckpt"], "--ckpt_path nowhere.ckpt: no such checkpoint file"),
    ],
)
def test_broken_values_are_one_line_before_any_run(tmp_path, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY), "--prepare=[]", *args])
    assert message in str(exit_info.value) and "\n" not in str(exit_info.value)
    assert not (tmp_path / "mlruns").exists()  # no run was created


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.init_args.lrr=1"], "unknown key 'model.init_args.lrr'; did you mean 'model.init_args.lr'?"),
        (["--data.batchsize=3"], "unknown key 'data.batchsize'; did you mean 'data.batch_size'?"),
        (["--trainer.max_steps=abc"], "trainer.max_steps: Expected a <class 'int'>. Got value: abc"),
        (["--data.ratio_schedule=[[0, [1, 1]]]"], "data.ratio_schedule: Expected a tuple with 3 elements"),
    ],
)
def test_misspelt_keys_and_wrong_types_are_one_line_with_the_nearest_key(args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY), "--prepare=[]", *args])
    assert str(exit_info.value).startswith("jf_lightning: error: ") and message in str(exit_info.value)
    assert "\n" not in str(exit_info.value)


def test_a_misspelt_key_in_a_config_file_is_named_too(tmp_path):
    (tmp_path / "mine.yaml").write_text("data:\n  batchsize: 3\n")
    with pytest.raises(SystemExit, match="unknown key 'data.batchsize'; did you mean 'data.batch_size'"):
        main(["fit", "-c", str(TINY), "-c", str(tmp_path / "mine.yaml")])
