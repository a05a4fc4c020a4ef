"""A training step under FSDP2 (``jf_lightning.parallel.fsdp``) against DDP, 2 CPU processes over gloo,
same run: the embedded default (tiny preset, PretrainingStage, fused AdamW) on tiny.yaml's packed batches
(16 samples, rows of 256 tokens) of the shapes world.

    python -m benchmarks.fsdp_vs_ddp [--steps 20] [--precision 32-true|bf16-mixed]   (from the repository root)

Each process is one rank on one thread. Both ways train the same stage from the same seed on the same
batches; a step is forward + backward (DDP's all-reduce, or FSDP2's all-gathers and reduce-scatters) +
the optimizer step, timed on rank 0 after two warm-up steps. Prints the mean step time of each way and
the FSDP2 / DDP ratio. On a handful of CPU cores FSDP2 pays one all-gather per block in forward and
backward for memory it does not need; the ratio says what sharding costs where memory is not the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from benchmarks.train_step import shapes_batches
from jf_lightning.parallel.fsdp import apply_fsdp
from jf_lightning.stages import PretrainingStage

WORLD, WARMUP = 2, 2


class Loss(torch.nn.Module):
    """The stage's loss as a module's forward, which DDP wraps (as Lightning's wrapper does)."""

    def __init__(self, stage: PretrainingStage):
        super().__init__()
        self.stage = stage

    def forward(self, batch) -> torch.Tensor:
        return self.stage.compute_losses(batch)["loss"]


def built_stage() -> PretrainingStage:
    torch.manual_seed(0)
    stage = PretrainingStage(cpu_kernels=True)
    stage.configure_model()
    return stage


def step_times(way: str, batches: list, precision: str) -> list[float]:
    stage = built_stage()
    if way == "ddp":
        run = DistributedDataParallel(Loss(stage))
    else:
        apply_fsdp(stage.model, init_device_mesh("cpu", (WORLD,)), precision)
        run = Loss(stage)
    params = [p for p in stage.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    )
    times = []
    for batch in batches:
        dist.barrier()
        start = time.perf_counter()
        with autocast:
            loss = run(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[WARMUP:]


def rank_main(rank: int, port: int, batches: list, precision: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    batches = batches[rank::WORLD]
    means = {way: statistics.mean(step_times(way, batches, precision)) for way in ("ddp", "fsdp")}
    if rank == 0:
        print(f"{len(batches) - WARMUP} steps, {precision}, {WORLD} processes x 1 thread, gloo")
        print(f"DDP    step: {means['ddp'] * 1e3:8.1f} ms")
        print(f"FSDP2  step: {means['fsdp'] * 1e3:8.1f} ms")
        print(f"FSDP2 / DDP: {means['fsdp'] / means['ddp']:.2f}x")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fsdp_vs_ddp")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as root:
        batches = shapes_batches(Path(root), (30, 62, 8), 3 * WORLD * (args.steps + WARMUP))
    # both kinds of image sample in every batch: DDP needs every trained parameter in the graph
    batches = [b for b in batches if b.num_und and b.num_gen][: WORLD * (args.steps + WARMUP)]
    mp.spawn(rank_main, args=(port, batches, args.precision), nprocs=WORLD)


if __name__ == "__main__":
    main()
