"""Presets build on the meta device (no weights, no download) with the paper's sizes."""

import pytest
import torch

from jf_lightning.models.config import preset, with_ablation
from jf_lightning.models.janusflow import JanusFlow
from jf_lightning.models.summary import main, parameter_groups


def _counts(name, ablation=None):
    cfg = preset(name) if ablation is None else with_ablation(preset(name), ablation)
    with torch.device("meta"):
        return parameter_groups(JanusFlow(cfg)), cfg


def test_janusflow_1_3b_sizes():
    counts, cfg = _counts("janusflow-1.3b")
    assert cfg.num_gen_tokens == cfg.num_und_tokens == 576
    assert cfg.latent_size == 48
    assert 1.2e9 < counts["LLM"] < 1.7e9
    assert 0.28e9 < counts["understanding encoder (SigLIP / ConvNeXt)"] < 0.32e9
    assert 65e6 < counts["generation encoder + decoder"] < 75e6


def test_ablation_256_grid():
    counts, cfg = _counts("ablation-256", "B")
    assert cfg.latent_size == 32 and cfg.num_gen_tokens == 256 and cfg.siglip.num_tokens == 256
    assert counts["understanding encoder (SigLIP / ConvNeXt)"] == 0  # B shares the generation encoder
    assert counts["REPA target SigLIP (frozen)"] > 0.28e9


def test_summary_command_prints_every_group(capsys):
    main(["tiny", "--ablation", "F"])
    out = capsys.readouterr().out
    for group in ["LLM", "generation encoder + decoder", "REPA head", "total"]:
        assert group in out


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="tiny"):
        preset("janusflow-7b")
