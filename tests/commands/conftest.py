"""A tiny fit-like checkpoint (EMA and raw weights that differ, hyperparameters, the data's tokenizer) for
the commands that load one."""

from __future__ import annotations

import pytest
import torch

from jf_lightning.shapes.tokenizer import build_shapes_tokenizer
from jf_lightning.stages import PretrainingStage


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(checkpoint path, tokenizer directory): the checkpoint records the tokenizer the way a run's
    datamodule hyperparameters do; its EMA (``state_dict``) is the raw weights plus noise."""
    root = tmp_path_factory.mktemp("tiny_ckpt")
    build_shapes_tokenizer().save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    stage = PretrainingStage(preset="tiny")
    stage.configure_model()
    raw = {k: v.clone() for k, v in stage.state_dict().items()}
    ema = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in raw.items()}
    torch.save(
        {
            "state_dict": ema,
            "current_model_state": raw,
            "hyper_parameters": dict(stage.hparams),
            "datamodule_hyper_parameters": {"tokenizer": str(root / "tokenizer"), "template": "pretrain"},
            "global_step": 3,
        },
        root / "tiny.ckpt",
    )
    return root / "tiny.ckpt", root / "tokenizer"
