"""What DDP ranks wait for at the gradient all-reduce: tiny.yaml's batches (2 ranks x 16 samples, mix
30:62:8) with kind counts shared by the ranks of a micro-step (the DataModule now) against counts drawn
batch by batch (before), same run.

    python -m benchmarks.rank_balance [--steps 60]   (from the repository root)

Each rank's batch is timed alone on one thread (forward + backward + AdamW, bf16 autocast, as a DDP
rank of tiny.yaml runs); a synchronized step lasts as long as its slower rank. Prints, per way of
counting, the mean of the two ranks' own times, the mean synchronized time and the share of it that
the faster rank spends waiting. It writes a small shapes world into a temporary directory.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.train_step import KINDS
from jf_lightning.data.datamodule import JanusFlowDataModule, PackedBatchStream
from jf_lightning.data.sources import SourceConfig
from jf_lightning.shapes.shards import write_shapes_world
from jf_lightning.stages import PretrainingStage

WORLD = 2


class PerBatchCounts(PackedBatchStream):
    """The counting before: every batch its own entry of the count sequence, in batch units."""

    def count_index(self, b: int) -> int:
        return b


def rank_batches(root: Path, steps: int, per_batch: bool) -> list[list]:
    """[rank][step] packed batches of tiny.yaml's shape for ``WORLD`` ranks."""
    dm = JanusFlowDataModule(
        sources=[SourceConfig(str(root / kind / "train-*.tar"), kind) for kind in KINDS],
        tokenizer=str(root / "tokenizer"), image_size=32, num_und_tokens=64, num_gen_tokens=64,
        ratio_schedule=[(0, (30, 62, 8))], batch_size=16, seq_len=256, num_workers=0,
    )  # fmt: skip
    dm.setup("fit")
    # the schedule in the units each way counts in: micro-steps (shared) or batches (per batch)
    stream, schedule = (PerBatchCounts, dm.schedule.scaled(WORLD)) if per_batch else (PackedBatchStream, dm.schedule)
    base = dm.train_dataloader().dataset  # the DataModule's own stream: its sources and templates
    config = {"batch_size": 16, "seq_len": 256, "image_size": 32, "prompt_drop_prob": 0.1, "seed": 0}
    streams = [
        stream(base.sources, schedule, base.templater, rank=rank, world_size=WORLD, **config) for rank in range(WORLD)
    ]
    return [list(itertools.islice(iter(s), steps)) for s in streams]


def step_seconds(stage: PretrainingStage, optimizer, batch) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = stage.compute_losses(batch)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60, help="synchronized steps per way of counting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        write_shapes_world(root, seed=0, train_samples=1000, val_samples=0, image_size=32, image_after_question=1.0)
        ways = {"shared": rank_batches(root, args.steps, False), "per batch": rank_batches(root, args.steps, True)}
    torch.manual_seed(0)
    stage = PretrainingStage(preset="tiny", lr=2e-3, rf_weight=60.0, repa_weight=60.0)
    stage.configure_model()
    stage.train()
    optimizer = torch.optim.AdamW([p for p in stage.parameters() if p.requires_grad], lr=1e-5)
    for batch in ways["shared"][0][:3]:  # warm-up, untimed
        step_seconds(stage, optimizer, batch)
    times = {name: [[0.0] * args.steps for _ in range(WORLD)] for name in ways}
    for i in range(args.steps):  # interleaved, so drift in the machine's pace hits both alike
        for name, ranks in ways.items():
            for rank in range(WORLD):
                times[name][rank][i] = step_seconds(stage, optimizer, ranks[rank][i])
    print(f"{args.steps} steps of {WORLD} ranks x 16 samples (30:62:8), one thread, bf16 autocast")
    synced = {}
    for name, per_rank in times.items():
        own = sum(sum(t) for t in per_rank) / (WORLD * args.steps)
        synced[name] = sum(max(ts) for ts in zip(*per_rank)) / args.steps
        print(f"{name:10s} rank step {own * 1000:6.1f} ms, synchronized step {synced[name] * 1000:6.1f} ms, "
              f"waiting {1 - own / synced[name]:5.1%}")  # fmt: skip
    print(f"ratio shared / per batch: {synced['shared'] / synced['per batch']:.3f}x a synchronized step")


if __name__ == "__main__":
    main()
