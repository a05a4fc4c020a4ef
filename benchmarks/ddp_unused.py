"""DDP when a batch lacks a data kind: ``find_unused_parameters=True`` against zero-weighted terms that
put every trainable parameter in the graph, on 2 CPU processes (gloo), same batches, same run.

    python -m benchmarks.ddp_unused [--steps 12] [--warmup 3]   (from the repository root)

Each rank trains a fresh tiny PretrainingStage (tiny.yaml's loss weights) wrapped in torch's
DistributedDataParallel, as Lightning's DDPStrategy wraps it, on packed shapes batches where the ranks
alternate between understanding-only and generation-only batches (so on every step some parts are out
of one rank's graph). Prints the mean step time (forward + backward with the gradient all-reduce +
AdamW) of each way and their ratio; also the step time of a DDP run on batches holding every kind
(``find_unused_parameters=False``, the baseline neither way needs).
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from benchmarks.train_step import shapes_batches
from jf_lightning.stages import PretrainingStage
from jf_lightning.stages.unused import zero_weighted_terms


class _Loss(torch.nn.Module):
    """The stage's loss as a module forward, so DDP's hooks see it (``zero`` adds the zero terms)."""

    def __init__(self, stage: PretrainingStage, zero: bool):
        super().__init__()
        self.stage, self.zero = stage, zero

    def forward(self, batch):
        loss = self.stage.compute_losses(batch)["loss"]
        return loss + zero_weighted_terms(self.stage) if self.zero else loss


def _mean_step(rank: int, batches: list, find_unused: bool, zero: bool, warmup: int) -> float:
    torch.manual_seed(0)
    stage = PretrainingStage(preset="tiny", lr=2e-3, rf_weight=60.0, repa_weight=60.0, cpu_kernels=True)
    stage.configure_model()
    stage.train()
    model = DistributedDataParallel(_Loss(stage, zero), find_unused_parameters=find_unused)
    params = [p for p in stage.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.95), fused=True)
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            dist.barrier()
            start = time.perf_counter()
        model(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    dist.barrier()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def _worker(rank: int, port: int, data: dict, warmup: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # 2 processes on 2 cores
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mixed = [data["und"][i] if (i + rank) % 2 == 0 else data["gen"][i] for i in range(len(data["und"]))]
    times = {
        "find_unused_parameters=True": _mean_step(rank, mixed, True, False, warmup),
        "zero-weighted terms": _mean_step(rank, mixed, False, True, warmup),
        "all kinds in every batch (baseline)": _mean_step(rank, data["all"], False, False, warmup),
    }
    if rank == 0:
        out.update(times)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ddp_unused")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per way")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    n = args.steps + args.warmup
    with tempfile.TemporaryDirectory() as tmp:
        data = {
            "und": shapes_batches(Path(tmp) / "u", (1.0, 0.0, 0.0), n),
            "gen": shapes_batches(Path(tmp) / "g", (0.0, 1.0, 0.0), n),
            "all": shapes_batches(Path(tmp) / "a", (30.0, 62.0, 8.0), n),
        }
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(port, data, args.warmup, out), nprocs=2, join=True)
        times = dict(out)
    base = times["find_unused_parameters=True"]
    print(
        f"2 CPU processes (gloo), 1 thread each, tiny preset, 16 samples per batch, mean of {args.steps} steps"
    )
    for name, seconds in times.items():
        print(f"{name:<38} {seconds * 1000:8.1f} ms/step   {seconds / base:5.2f}x find_unused")


if __name__ == "__main__":
    main()
