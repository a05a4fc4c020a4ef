"""One step of the demo's SigLIP pretraining (tiny preset, batch 128, patch loss on), its data and its
model part timed apart, for the in-memory pair table it reads now against streaming the shards (how it
read before, through the DataModule's ``ResampledStream``: the same batches), same run.

    python -m benchmarks.siglip_pretraining [--steps 20]   (from the repository root)

It writes a 2,000-pair shapes world (32 px, as tiny.yaml) into a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jf_lightning.data.sources import ResampledStream, SourceConfig
from jf_lightning.data.transforms import und_transform
from jf_lightning.models.config import preset
from jf_lightning.shapes import siglip_pretraining as sp
from jf_lightning.shapes import world as shapes_world
from jf_lightning.shapes.shards import write_shapes_world

BATCH = 128


def streamed_batches(world: Path, table: sp._PairTable, max_len: int):
    """The reader before the table: every pair decoded from its tar member each time it is drawn."""
    urls = [str(p) for p in sorted((world / "gen").glob("train-*.tar"))]
    stream = ResampledStream([SourceConfig(urls=urls, kind="gen").resolved()], "siglip/0")
    rng = np.random.default_rng(0)
    while True:
        raws = [stream.next(rng) for _ in range(BATCH)]
        pixels = torch.stack([und_transform(r.image, table.image_size) for r in raws])
        labels = torch.from_numpy(np.stack([table._patch_labels(r) for r in raws]))
        ids = table.tokenizer([r.text for r in raws], padding="max_length", truncation=True, max_length=max_len,
                              add_special_tokens=False, return_tensors="pt").input_ids
        yield pixels, ids, labels


def time_steps(next_batch, table: sp._PairTable, steps: int) -> tuple[float, float]:
    """Mean (data, model) seconds of a pretraining step; three warm-up steps untimed."""
    torch.manual_seed(0)
    siglip = preset("tiny").siglip
    model = sp.ContrastivePair(siglip, len(table.tokenizer), 48, table.tokenizer.pad_token_id, shapes_world.PATCH_LABELS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
    data_s = model_s = 0.0
    for step in range(steps + 3):
        t0 = time.perf_counter()
        pixels, ids, labels = next_batch()
        t1 = time.perf_counter()
        logits, patch_logits = model(pixels, ids)
        loss = sp.sigmoid_loss(logits, ids) + F.cross_entropy(patch_logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step >= 3:
            data_s, model_s = data_s + t1 - t0, model_s + time.perf_counter() - t1
    return data_s / steps, model_s / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "shapes"
        write_shapes_world(world, seed=0, train_samples=2000, val_samples=0, image_size=32)
        start = time.perf_counter()
        table = sp._PairTable(world, preset("tiny").siglip, 48, seed=0, patch_labels=True)
        load = time.perf_counter() - start
        stream = streamed_batches(world, table, 48)
        variants = {"streamed": lambda: next(stream), "table": lambda: table.next(BATCH)}
        results = {name: time_steps(fn, table, args.steps) for name, fn in variants.items()}
    print(f"threads={torch.get_num_threads()} batch={BATCH}; the table read {len(table.pixels)} pairs in {load:.2f} s")
    for name, (data_s, model_s) in results.items():
        print(f"{name:9s} data {data_s * 1000:6.1f} ms + model {model_s * 1000:6.1f} ms = {(data_s + model_s) * 1000:6.1f} ms")
    (d0, m0), (d1, m1) = results.values()
    print(f"ratio table / streamed: {(d1 + m1) / (d0 + m0):.2f}x a step")


if __name__ == "__main__":
    main()
