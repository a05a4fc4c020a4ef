"""The paper's recipes: each parses to Table 1 / Table 6's numbers through its chain of bases, each runs
through the smoke overlay (its stage, freeze policy and model variant at the tiny scale), and a recipe
without its data stops in one line that says what to set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from jf_lightning.cli import main
from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.inputs import UserInputError
from jf_lightning.recipes import base_chain, expand_bases

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SMOKE = EXPERIMENTS / "smoke.yaml"
RECIPES = sorted(p for p in EXPERIMENTS.glob("*.yaml") if p != SMOKE)

# recipe: (stage, preset, ablation, max_steps, global batch, lr, warm-up, ratio schedule)
TABLES = {
    "stage1_adaptation": ("AdaptationStage", "janusflow-1.3b", None, 10_000, 512, 1e-4, 2000, [[0, [50, 50, 0]]]),
    "stage2_pretraining": ("PretrainingStage", "janusflow-1.3b", None, 390_000, 512, 1e-4, 2000,
                           [[0, [30, 50, 20]], [10_000, [14, 80, 6]]]),
    "stage3_sft": ("SFTStage", "janusflow-1.3b", None, 26_000, 256, 2e-5, 1000, [[0, [21, 70, 9]]]),
    **{f"ablation_{a}": ("PretrainingStage", "ablation-256", a, 50_000, 512, 1e-4, 2000,
                         [[0, [30, 50, 20]], [10_000, [14, 80, 6]]]) for a in "ABCF"},
    "ablation_D": ("PretrainingStage", "ablation-256", "D", 13_000, 512, 1e-4, 2000,
                   [[0, [30, 0, 20]], [10_000, [14, 0, 6]]]),
    "ablation_E": ("PretrainingStage", "ablation-256", "E", 37_000, 512, 1e-4, 2000, [[0, [0, 1, 0]]]),
}  # fmt: skip
REPA_TARGET = {"B": ("shared_gen", "siglip"), "C": ("vae_convnext", "siglip"), "E": ("none", "siglip")}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["jf"])
    monkeypatch.delenv("JF_DATA_ROOT", raising=False)


def printed_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


def recipe_model_config(name: str) -> dict:
    """The model config keys a recipe file itself sets (not those of its bases)."""
    return yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["model"]["init_args"]["config"]


def test_every_recipe_has_its_table(capsys):
    assert set(TABLES) <= {p.stem for p in RECIPES}
    for name, (stage, preset, ablation, steps, batch, lr, warmup, ratio) in TABLES.items():
        config = printed_config(capsys, "-c", str(EXPERIMENTS / f"{name}.yaml"))
        model = config["model"]["init_args"]
        assert config["model"]["class_path"] == f"jf_lightning.stages.{stage}", name
        assert (model["preset"], model["ablation"], model["lr"], model["warmup_steps"]) == (preset, ablation, lr, warmup)
        assert (model["betas"], model["weight_decay"]) == ([0.9, 0.95], 0.0), name
        assert config["trainer"]["max_steps"] == steps and config["trainer"]["gradient_clip_val"] == 1.0, name
        assert config["data"]["global_batch_size"] == batch and config["data"]["seq_len"] == 4096, name
        assert config["data"]["ratio_schedule"] == ratio and config["ema"]["decay"] == 0.99, name
        if ablation in REPA_TARGET:  # where understanding reads and where REPA aligns, said in the file
            stated = recipe_model_config(name)  # said in the file itself, not only by the ablation's defaults
            assert (stated["und_encoder"], stated["repa"]["target"]) == REPA_TARGET[ablation], name
            assert (model["config"]["und_encoder"], model["config"]["repa"]["target"]) == REPA_TARGET[ablation]


def test_stages_chain_from_their_predecessor(capsys):
    stage2 = printed_config(capsys, "-c", str(EXPERIMENTS / "stage2_pretraining.yaml"))
    stage3 = printed_config(capsys, "-c", str(EXPERIMENTS / "stage3_sft.yaml"))
    stage1 = printed_config(capsys, "-c", str(EXPERIMENTS / "stage1_adaptation.yaml"))
    assert stage2["model"]["init_args"]["init_from"] == f"{stage1['checkpoint']['dirpath']}/last.ckpt"
    assert stage3["model"]["init_args"]["init_from"] == f"{stage2['checkpoint']['dirpath']}/last.ckpt"
    assert stage3["data"]["template"] == "sft"


def test_a_recipe_shows_its_bases_in_the_file_and_the_cli_reads_them_first():
    chain = base_chain(str(EXPERIMENTS / "ablation_B.yaml"))
    assert [Path(p).name for p in chain] == ["paper.yaml", "stage2_pretraining.yaml", "ablation_F.yaml", "ablation_B.yaml"]
    args = expand_bases(["fit", "-c", str(EXPERIMENTS / "ablation_B.yaml"), f"--config={SMOKE}", "--x=1"])
    assert args[0] == "fit" and args[-3:] == ["-c", str(SMOKE), "--x=1"] and args.count("-c") == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("model: [unclosed", "not valid YAML at line 1"),
        ("- a list", "a mapping of sections"),
        ("base: nowhere.yaml\n", "its base 'nowhere.yaml' does not exist"),
        ("base: bad.yaml\n", "builds on itself"),
    ],
)
def test_broken_config_files_are_one_line_naming_the_file(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UserInputError, match=message):
        base_chain(str(tmp_path / "bad.yaml"))
    with pytest.raises(SystemExit, match=f"bad.yaml.*{message}"):
        main(["fit", "-c", str(tmp_path / "bad.yaml")])


def test_a_recipe_without_its_data_says_what_to_set(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(EXPERIMENTS / "stage2_pretraining.yaml"), "--trainer.logger=false",
              "--model.init_args.init_from=null"])  # fmt: skip
    message = str(exit_info.value)
    assert "\n" not in message and "data.sources[0]" in message and "pretrain/und/*.tar" in message
    assert "data.data_root is unset" in message and "$JF_DATA_ROOT" in message


@pytest.fixture(scope="module")
def smoke_world(tmp_path_factory):
    """The smoke overlay's world and SigLIP, made once for every recipe below."""
    root = tmp_path_factory.mktemp("smoke")
    cwd = Path.cwd()
    try:
        import os

        os.chdir(root)
        main(["prepare", "-c", str(EXPERIMENTS / "paper.yaml"), "-c", str(SMOKE)])
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_runs_through_the_smoke_overlay(recipe, smoke_world, monkeypatch, capsys):
    monkeypatch.chdir(smoke_world)
    main(["fit", "-c", str(recipe), "-c", str(SMOKE), "--trainer.logger=false",
          f"--checkpoint.dirpath={recipe.stem}"])  # fmt: skip
    ckpt = torch.load(smoke_world / recipe.stem / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    expected = TABLES.get(recipe.stem)
    if expected is not None:  # the recipe's stage, with its ablation's parts
        assert ckpt["hyper_parameters"]["_class_path"].endswith(expected[0])
        assert ckpt["hyper_parameters"]["ablation"] == expected[2]
        assert ckpt["hyper_parameters"]["preset"] == "tiny"
    # smoke.yaml's global batch of 8 on one process of 4: 2 micro-batches per optimizer step
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 6


def test_a_global_batch_the_processes_cannot_make_is_refused(smoke_world, monkeypatch):
    monkeypatch.chdir(smoke_world)
    with pytest.raises(SystemExit, match="data.global_batch_size 10 is not a multiple of data.batch_size 4"):
        main(["fit", "-c", str(EXPERIMENTS / "stage1_adaptation.yaml"), "-c", str(SMOKE), "--trainer.logger=false",
              "--data.global_batch_size=10"])  # fmt: skip
    data = JanusFlowDataModule(sources=[], tokenizer="unused", batch_size=4, global_batch_size=24)
    assert data.accumulation(world_size=2) == 3
    with pytest.raises(UserInputError, match="24 cannot be made by 4 process\\(es\\) of data.batch_size 4"):
        data.accumulation(world_size=4)
