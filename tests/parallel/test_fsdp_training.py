"""FSDP2 through Lightning's ModelParallelStrategy on 2 CPU processes (gloo): the same losses and EMA
weights as one process on the same global batches, as DDP gives; and a run killed with SIGKILL after
a checkpoint resumes to the losses and EMA weights of an uninterrupted run.

Tolerances (fp32): one process accumulates the two micro-batches' gradients, two processes reduce them,
so the sums round differently; over 20 AdamW steps at lr 1e-3 the losses stay within 1e-5 relative
and the weights within 1e-5 absolute. The resumed run restores weights, optimizer states and
averages exactly, so it matches bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jf_lightning.inputs import UserInputError
from jf_lightning.models.config import resolve_config
from jf_lightning.stages import PretrainingStage
from jf_lightning.stages.init_from import load_initial_weights
from tests.stages.conftest import built

SCRIPT = Path(__file__).with_name("fit_run.py")
ROOT = Path(__file__).parents[2]
STEPS = 20


def launch(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), *args]
    with open(out.parent / f"{out.name}.log", "w") as log:  # the child keeps its own handle
        # a session of its own: the test can kill the launcher and the process Lightning starts together
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def fit(out: Path, *args: str, timeout: float = 180) -> None:
    proc = launch(out, *args)
    if proc.wait(timeout) != 0:
        raise AssertionError((out.parent / f"{out.name}.log").read_text()[-4000:])


def step_losses(out: Path) -> dict[int, float]:
    """The global batch's loss per optimizer step: the mean over its micro-batches (ranks or accumulated)."""
    by_step: dict[int, list[float]] = {}
    for path in sorted(out.glob("losses-*.json")):
        for step, _, loss in json.loads(path.read_text()):
            by_step.setdefault(step, []).append(loss)
    return {step: sum(losses) / len(losses) for step, losses in sorted(by_step.items())}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_fsdp_and_ddp_give_the_losses_and_averages_of_one_process(tmp_path):
    for mode in ("single", "ddp", "fsdp"):
        fit(tmp_path / mode, "--mode", mode, "--steps", str(STEPS), "--validate-every", "10")
    single = step_losses(tmp_path / "single")
    single_val = json.loads((tmp_path / "single" / "val-losses-0.json").read_text())
    assert [step for step, *_ in single_val] == [10, 20]
    weights = {
        mode: torch.load(tmp_path / mode / "weights.pt", weights_only=True)
        for mode in ("single", "ddp", "fsdp")
    }
    assert list(single) == list(range(STEPS))
    for mode in ("ddp", "fsdp"):
        losses = step_losses(tmp_path / mode)
        assert list(losses) == list(single)
        for step, loss in losses.items():
            assert loss == pytest.approx(single[step], rel=1e-5), (mode, step)
        assert max_difference(weights[mode], weights["single"]) < 1e-5, mode
        # validation ran on the averages (swapped in shard by shard under FSDP2) on every rank
        for rank in (0, 1):
            val = json.loads((tmp_path / mode / f"val-losses-{rank}.json").read_text())
            assert [step for step, *_ in val] == [10, 20]
            assert [loss for _, loss, _ in val] == pytest.approx(
                [loss for _, loss, _ in single_val], rel=1e-5
            )
            assert all(sharded == (mode == "fsdp") for *_, sharded in val)
    # training moved the averages: they are not the initial weights of every mode
    assert single[STEPS - 1] < single[0]


@pytest.mark.slow
def test_fsdp_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    common = ["--mode", "fsdp", "--steps", "8", "--repeat"]
    fit(tmp_path / "whole", *common)

    proc = launch(tmp_path / "killed", *common, "--checkpoint-every", "3", "--hang-at", "7")
    deadline = time.monotonic() + 180
    while not (tmp_path / "killed" / "hung").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[
            -4000:
        ]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9, both processes
    proc.wait(30)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file()  # a torch.distributed.checkpoint directory

    fit(tmp_path / "resumed", *common, "--ckpt-path", str(last))
    whole, resumed = step_losses(tmp_path / "whole"), step_losses(tmp_path / "resumed")
    assert list(resumed) == [6, 7]  # resumed from the step-6 checkpoint
    assert all(resumed[step] == whole[step] for step in resumed), (resumed, whole)
    averages = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)
    assert max_difference(torch.load(tmp_path / "resumed" / "weights.pt", weights_only=True), averages) == 0.0

    # The directory also starts a new stage (init_from reads it whole, in one process): Lightning's
    # meta.pt beside the shards loads without unpickling objects, so the step is named, and a stage of
    # another shape is told which config key differs.
    assert "at step 6, " in load_initial_weights(built(PretrainingStage).model, str(last))
    narrow = resolve_config("tiny", None, {"llm.intermediate_size": 256})
    with pytest.raises(UserInputError, match=r"config\.llm\.intermediate_size 384 \(this stage: 256\)"):
        built(PretrainingStage, config=narrow, init_from=str(last))
