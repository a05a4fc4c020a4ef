"""Exact resumption: a run killed with SIGKILL after a checkpoint and resumed from it trains, step for
step, on the same samples with the same losses as a run never stopped (1 process, and 2 DDP processes
over gloo; 2 loader workers each). The run is ``resume_run.py``: the real DataModule, Lightning's
ModelCheckpoint, a small model whose loss depends on every token and image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.conftest import _record, write_shard

SCRIPT = Path(__file__).with_name("resume_run.py")
STEPS, KILL_AT, RESUME_FROM = 7, 5, 4  # checkpoints every 2 steps: the last before the kill is step 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """5 und shards of 3 (dealt over 2 or 4 readers), 2 gen shards of 4 (strided), 3 text of 3: the
    7 steps wrap every kind's epochs."""
    root = tmp_path_factory.mktemp("resume-shards")
    for kind, count, size in (("und", 5, 3), ("gen", 2, 4), ("text", 3, 3)):
        for shard in range(count):
            write_shard(root / f"{kind}-{shard}.tar", [_record(kind, shard, i) for i in range(size)])
    return root


def run(out: Path, shards: Path, tokenizer: str, devices: int, *extra: str) -> int:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(SCRIPT.parents[2])}
    args = [sys.executable, str(SCRIPT), "--shards", str(shards), "--tokenizer", tokenizer, "--out", str(out),
            "--devices", str(devices), "--steps", str(STEPS), *extra]  # fmt: skip
    # its own session, so that the kill takes every rank and loader worker of the run and nothing else
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=600, start_new_session=True, check=False
    )
    if done.returncode not in (0, -9):
        raise AssertionError(done.stdout[-2000:] + done.stderr[-4000:])
    return done.returncode


def steps(out: Path, rank: int) -> dict[int, dict]:
    lines = (out / f"rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_a_killed_run_resumes_on_the_same_samples_and_losses(tmp_path, shards, tokenizer_dir, devices):
    assert run(tmp_path / "whole", shards, tokenizer_dir, devices) == 0
    assert run(tmp_path / "killed", shards, tokenizer_dir, devices, "--kill-at", str(KILL_AT)) == -9
    ckpt = tmp_path / "killed" / "ckpt" / f"epoch=0-step={RESUME_FROM}.ckpt"
    assert ckpt.is_file()
    assert run(tmp_path / "resumed", shards, tokenizer_dir, devices, "--ckpt", str(ckpt)) == 0
    for rank in range(devices):
        whole, killed, resumed = (steps(tmp_path / name, rank) for name in ("whole", "killed", "resumed"))
        assert sorted(killed) == list(range(KILL_AT)) and sorted(resumed) == list(range(RESUME_FROM, STEPS))
        for step, record in resumed.items():  # same batch, same samples, the same loss to the last bit
            assert record == whole[step], (rank, step)
        assert all(killed[s] == whole[s] for s in killed)
        assert len({r["loss"] for r in whole.values()}) == STEPS  # the losses tell the steps apart
