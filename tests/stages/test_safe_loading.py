"""No checkpoint is unpickled: every ``torch.load`` in the package passes ``weights_only=True``, and a
crafted checkpoint (a pickle whose loading would write a file) is refused by each command that reads
checkpoints outside the training path (``shapes.breakdown``, ``stages.gradient_balance``)."""

from __future__ import annotations

import ast
import pathlib
import pickle
from pathlib import Path

import pytest
import torch

from jf_lightning.shapes.breakdown import load_checkpoint_stage
from jf_lightning.stages import gradient_balance
from jf_lightning.stages.pretraining import PretrainingStage

PACKAGE = Path(__file__).resolve().parents[2] / "jf_lightning"


class _WritesAFile:
    """Unpickling this calls ``Path(target).touch()``: code run by merely loading the checkpoint."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.target),)


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _WritesAFile(marker)}, ckpt)
    return ckpt, marker


def test_the_crafted_checkpoint_runs_code_when_unpickled(crafted):
    ckpt, marker = crafted  # the control: without weights_only the file appears
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_breakdown_refuses_a_crafted_checkpoint(crafted):
    ckpt, marker = crafted
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint_stage(ckpt)
    assert not marker.exists()


def test_gradient_balance_refuses_a_crafted_checkpoint(crafted):
    ckpt, marker = crafted
    with pytest.raises(pickle.UnpicklingError):
        gradient_balance.report(PretrainingStage(preset="tiny"), None, str(ckpt), batches=1)
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    unsafe, found = [], 0
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if (
                node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                found += 1
                flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found >= 3 and unsafe == []  # breakdown, gradient_balance, init_from at least
