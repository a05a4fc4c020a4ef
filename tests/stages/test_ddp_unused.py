"""DDP whatever a batch holds: 2 CPU processes train on batches that each lack data kinds (understanding
only, generation only, text only; the ranks differ on every step), which without
``stages/unused.py`` stop at step 2 with "parameters that were not used in producing the loss"."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.strategies import DDPStrategy

from jf_lightning.stages.unused import allow_unused_parameters

ROOT = Path(__file__).resolve().parents[2]


class _Trainer:
    def __init__(self, strategy):
        self.strategy = strategy


def test_ddp_finds_unused_parameters_unless_told_otherwise():
    default, told = DDPStrategy(), DDPStrategy(find_unused_parameters=False)
    allow_unused_parameters(_Trainer(default))
    allow_unused_parameters(_Trainer(told))
    allow_unused_parameters(None)  # a stage built outside a trainer
    assert default._ddp_kwargs["find_unused_parameters"] is True
    assert told._ddp_kwargs["find_unused_parameters"] is False


@pytest.mark.slow
def test_batches_without_a_data_kind_train_on_two_ddp_processes(tmp_path):
    steps = 4
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(ROOT / "tests/stages/ddp_unused_fit.py"), "--steps", str(steps),
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        losses = json.loads((tmp_path / f"losses-{rank}.json").read_text())
        assert [step for step, _ in losses] == list(range(1, steps + 1))
        assert all(math.isfinite(loss) for _, loss in losses)
