"""Contrastive pre-training of a SigLIP from random init: the pretrained understanding encoder a run
starts from when nothing can be downloaded (the tiny preset on the shapes world).

JanusFlow starts from a pretrained SigLIP (PAPER.md). A random-init one learns shape only slowly
through the LLM's next-token loss: the tiny model, trained on understanding alone with 12,800 shape
questions, still answered them at chance (0.30), while the same ViT learns the shapes of one-shape
scenes in 200 steps when supervised directly. So the demo pretrains its SigLIP the way SigLIP itself
was trained (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"): a sigmoid loss over
every image-caption pair of a batch, with a small text tower (transformers' ``SiglipTextModel``) that
is thrown away afterwards. The vision tower is saved in timm's format, so ``siglip.source=<dir>``
loads it exactly like the hub checkpoint.

``dense_weight > 0`` adds a per-patch loss: a linear head (also thrown away) names the (shape, colour)
of the object under each patch. The contrastive loss alone left the tiny ViT's patches nearly blind to
which shape they are part of (a linear classifier on them: 0.52 on 2-4-shape scenes), so the LLM could not find "the
circle" a question names; with the patch loss the head names the shape of 0.89 of the patches on a
shape after 800 steps (0.93 after 1,000, 0.97 after 1,500), as the hub SigLIP's patches carry their
object.

    python -m jf_lightning.shapes.siglip_pretraining --world data/shapes --out data/shapes-siglip
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as F_v2
from torch import nn
from transformers import AutoTokenizer, SiglipTextConfig, SiglipTextModel

from jf_lightning.data.sources import RawSample, SourceConfig, decode, iter_members, source_shard_rng
from jf_lightning.data.transforms import und_resize_and_pad, unit_range
from jf_lightning.models.config import SiglipConfig, preset
from jf_lightning.models.und_encoder import SiglipEncoder, build_siglip, save_siglip
from jf_lightning.schedules import lr_factor
from jf_lightning.shapes import world as shapes_world
from jf_lightning.shapes.generated_dirs import check_output_dir, write_output_dir
from jf_lightning.shapes.shards import read_manifest

RECORD = "pretraining.json"


@dataclass(frozen=True)
class SiglipPretrainingConfig:
    """What a pretrained encoder depends on: its ``pretraining.json`` records these, and a directory
    holding other values is never overwritten."""

    world: str
    """A shapes world written by ``write_shapes_world`` (its generation pairs are the image-text data)."""
    preset: str = "tiny"
    """Model preset whose ``siglip`` dims are built."""
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    seed: int = 0
    max_text_len: int = 48
    """Captions are cut or padded to this many tokens (the text tower pools the last position, as SigLIP's).
    Demos whose SigLIP padded to the longest caption (30) or to 32 answered colour questions at 0.64 and
    0.72; every demo with 48 read 0.8 or more (experiments/tiny.md)."""
    dense_weight: float = 0.0
    """Weight of a per-patch loss: a linear head on each patch feature names the (shape, colour) of the
    object under it (``shapes_world.patch_labels``, read from the scene in each generation sample's
    json). 0 = SigLIP's sigmoid loss alone."""


class ContrastivePair(nn.Module):
    """The SigLIP vision tower to pretrain and a text tower of the same width, scored by a sigmoid;
    with ``num_patch_labels``, also a linear head that classifies each patch feature."""

    def __init__(self, siglip: SiglipConfig, vocab_size: int, max_text_len: int, pad_id: int, num_patch_labels: int = 0):
        super().__init__()
        self.vision: SiglipEncoder = build_siglip(replace(siglip, source=None))
        self.patch_head = nn.Linear(siglip.width, num_patch_labels) if num_patch_labels else None
        self.text = SiglipTextModel(
            SiglipTextConfig(
                vocab_size=vocab_size,
                hidden_size=siglip.width,
                intermediate_size=int(siglip.width * siglip.mlp_ratio),
                num_hidden_layers=siglip.depth,
                num_attention_heads=siglip.num_heads,
                max_position_embeddings=max_text_len,
                projection_size=siglip.width,
                pad_token_id=pad_id,
                bos_token_id=pad_id,
                eos_token_id=pad_id,
            )
        )
        # The SigLIP paper's initialisation: temperature 10, bias -10 (most pairs are negatives).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # pixels: (B, 3, S, S) in [-1, 1]; ids: (B, L) -> logits (B, B), image i against caption j, and
        # the patch head's logits (B, T, K) when there is one
        patches = self.vision(pixels)  # (B, T, D)
        image = F.normalize(patches.mean(dim=1), dim=-1)  # (B, D): the "gap" SigLIP's pooling
        text = F.normalize(self.text(input_ids=ids).pooler_output, dim=-1)  # (B, D)
        logits = image @ text.T * self.logit_scale.exp() + self.logit_bias
        return logits, (self.patch_head(patches) if self.patch_head is not None else None)


def sigmoid_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss: each pair is a binary positive (the diagonal) / negative decision, summed over
    the row and averaged over images. Written here because transformers computes it only inside
    ``SiglipModel.forward``, whose vision tower is not timm's. Off-diagonal pairs with the same caption
    ("a photo of a red circle" twice in a batch) are neither: they are left out of the loss."""
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    same_text = (ids[:, None, :] == ids[None, :, :]).all(dim=-1)  # (B, B)
    sign = eye.float() * 2 - 1  # +1 positives, -1 negatives
    weight = (eye | ~same_text).float()
    return -(F.logsigmoid(sign * logits) * weight).sum() / n


def world_manifest(world: Path) -> dict[str, Any]:
    """The world's manifest (shards and the parameters it was written with), or a one-line error."""
    manifest = read_manifest(world)
    if manifest is None:
        raise ValueError(f"{world} holds no shapes world (no manifest.json): write it first")
    return manifest


class _PairTable:
    """Every (image, caption, patch labels) pair of the world's generation shards, read once and held in
    memory, served in the order a ``ResampledStream`` reads them (shards drawn with replacement, each
    read through), so the batches are the ones streaming gave, to the bit.

    Streaming would decode each tar member again each of the ~6 times a pair is drawn (1,000 steps x 128
    of 20,000 pairs): that reading takes 47 of a streamed step's 309 ms (benchmarks/siglip_pretraining.py).
    A 32 px world costs 3 KB a pair (uint8 pixels), 61 MB for tiny.yaml's 20,000.
    """

    def __init__(self, world: Path, siglip: SiglipConfig, max_text_len: int, seed: int, patch_labels: bool):
        manifest = world_manifest(world)
        urls = SourceConfig(urls=[str(world / p) for p in manifest["shards"]["gen"]["train"]], kind="gen").resolved().urls
        self.tokenizer = AutoTokenizer.from_pretrained(world / "tokenizer")
        self.image_size, self.grid = siglip.image_size, siglip.image_size // siglip.patch_size
        shards = [[decode(sample, "gen") for sample in iter_members(url, "gen")] for url in urls]
        raws = [raw for shard in shards for raw in shard]
        if not raws:
            raise ValueError(f"{world}: its generation shards hold no image-caption pair")
        bounds = itertools.accumulate((len(shard) for shard in shards), initial=0)
        self.shard_ranges = [range(a, b) for a, b in itertools.pairwise(bounds)]  # pair indices per shard
        # (N, 3, S, S) uint8: und_transform's geometry (resize the long side, pad); scaled per batch
        self.pixels = torch.stack([F_v2.pil_to_tensor(und_resize_and_pad(r.image, self.image_size)) for r in raws])
        self.labels = (
            torch.from_numpy(np.stack([self._patch_labels(r) for r in raws])) if patch_labels else None
        )  # (N, T)
        self.ids = self.tokenizer(
            [r.text for r in raws],
            padding="max_length",
            truncation=True,
            max_length=max_text_len,
            add_special_tokens=False,
            return_tensors="pt",
        ).input_ids  # (N, L), right-padded
        self._order = self._stream_order(source_shard_rng(f"siglip/{seed}", "gen", 0))

    def _stream_order(self, shard_rng: random.Random) -> Iterator[int]:
        while True:
            yield from shard_rng.choice(self.shard_ranges)

    def _patch_labels(self, raw: RawSample) -> np.ndarray:
        scene = (raw.meta or {}).get("scene")
        if scene is None:
            raise ValueError(f"shard {raw.url}: sample {raw.key!r} has no scene json: dense_weight > 0 needs a shapes world")
        return shapes_world.patch_labels(shapes_world.Scene.from_dict(scene), self.image_size, self.grid)

    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        index = torch.tensor(list(itertools.islice(self._order, batch_size)))  # (B,)
        pixels = unit_range(self.pixels[index])  # (B, 3, S, S) in [-1, 1]
        return pixels, self.ids[index], (self.labels[index] if self.labels is not None else None)


@torch.no_grad()
def held_out_scores(model: ContrastivePair, data: _PairTable, batch_size: int, batches: int = 4) -> dict[str, float]:
    """On fresh batches: ``retrieval_top1``, the share of images whose own caption scores highest among
    the batch's captions (a repeated caption counts as its own; chance about 1 / batch_size); with a
    patch head, ``patch_shape_accuracy``, the share of patches on a shape whose predicted shape is
    right (what the understanding and REPA paths need from a patch)."""
    was_training = model.training
    model.eval()
    hits = total = shape_hits = on_shape = 0
    for _ in range(batches):
        pixels, ids, labels = data.next(batch_size)
        logits, patch_logits = model(pixels, ids)
        best = logits.argmax(dim=1)  # (B,) caption index per image
        hits += int((ids[best] == ids).all(dim=-1).sum())
        total += batch_size
        if patch_logits is not None:
            on = labels > 0  # (B, T)
            # a pair class k > 0 is shape (k - 1) // len(COLORS); a predicted background (0) gives -1, a miss
            pred, true = (patch_logits.argmax(-1)[on] - 1, labels[on] - 1)
            n_colors = len(shapes_world.COLOR_NAMES)
            shape_hits += int((pred.div(n_colors, rounding_mode="floor") == true.div(n_colors, rounding_mode="floor")).sum())
            on_shape += int(on.sum())
    model.train(was_training)
    scores = {"retrieval_top1": hits / total}
    if on_shape:
        scores["patch_shape_accuracy"] = shape_hits / on_shape
    return scores


def _check_target(out: Path, config: SiglipPretrainingConfig, world: dict[str, Any]) -> dict[str, Any] | None:
    """The existing record when ``out`` already holds this encoder, pretrained on this version of the
    world; None when ``out`` is free."""
    existing = check_output_dir(out, RECORD, "config", asdict(config), "a SigLIP")
    if existing is not None and existing.get("world") != world:
        raise ValueError(
            f"{out} holds a SigLIP pretrained on another version of {config.world} "
            f"({existing.get('world')}, now {world}): delete it or pass another output directory"
        )
    return existing


def _train(config: SiglipPretrainingConfig, log) -> tuple[dict[str, Any], SiglipEncoder]:
    siglip = preset(config.preset).siglip
    world = Path(config.world)
    data = _PairTable(world, siglip, config.max_text_len, config.seed, patch_labels=config.dense_weight > 0)
    num_labels = shapes_world.PATCH_LABELS if config.dense_weight > 0 else 0
    model = ContrastivePair(siglip, len(data.tokenizer), config.max_text_len, data.tokenizer.pad_token_id, num_labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, config.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=warmup))
    start, losses, dense_losses = time.perf_counter(), [], []
    for step in range(config.steps):
        pixels, ids, labels = data.next(config.batch_size)
        logits, patch_logits = model(pixels, ids)
        loss = sigmoid_loss(logits, ids)
        if patch_logits is not None:
            dense = F.cross_entropy(patch_logits.flatten(0, 1), labels.flatten())
            dense_losses.append(dense.item())
            loss = loss + config.dense_weight * dense
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            dense_note = f", patch loss {np.mean(dense_losses[-100:]):.3f}" if dense_losses else ""
            log(f"siglip pretraining step {step + 1}/{config.steps}: loss {np.mean(losses[-100:]):.3f}{dense_note}")
    record = {
        "config": asdict(config),
        "first_loss": float(np.mean(losses[:20])),
        "final_loss": float(np.mean(losses[-20:])),
        **({"final_patch_loss": float(np.mean(dense_losses[-20:]))} if dense_losses else {}),
        **held_out_scores(model, data, config.batch_size),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return record, model.vision


def siglip_ready(out_dir: str | os.PathLike, config: SiglipPretrainingConfig) -> bool:
    """Whether ``out_dir`` already holds this pretraining, on the world as it is now."""
    manifest = read_manifest(config.world)
    return manifest is not None and _check_target(Path(out_dir).absolute(), config, manifest["params"]) is not None


def pretrain_siglip(out_dir: str | os.PathLike, config: SiglipPretrainingConfig, log=print) -> dict[str, Any]:
    """Pretrain, save the vision tower (timm format) and ``pretraining.json`` into ``out_dir``; return
    the record. Does nothing when ``out_dir`` already holds the same pretraining."""
    out = Path(out_dir).absolute()
    world = world_manifest(Path(config.world))["params"]  # the encoder depends on them too
    existing = _check_target(out, config, world)
    if existing is not None:
        return existing
    # Seeded privately: the caller's global RNG is left as it was, so whatever runs next in the same
    # process draws the same numbers whether the encoder was made here or found already there.
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        record, vision = _train(config, log)
    record["world"] = world

    def fill(tmp: Path) -> dict[str, Any]:
        save_siglip(vision, preset(config.preset).siglip, str(tmp))
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        return record

    return write_output_dir(out, fill, lambda: _check_target(out, config, world))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, help="a shapes world directory (manifest.json)")
    parser.add_argument("--out", required=True, help="output directory for the timm-format encoder")
    defaults = SiglipPretrainingConfig(world="")
    options = ("preset", "steps", "batch_size", "lr", "seed", "dense_weight")
    for name in options:
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    config = SiglipPretrainingConfig(world=args.world, **{name: getattr(args, name) for name in options})
    try:
        record = pretrain_siglip(args.out, config)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    print(
        f"{args.out}: SigLIP pretrained in {record['seconds']} s: loss {record['first_loss']:.2f} -> "
        f"{record['final_loss']:.2f}, image-to-caption top-1 {record['retrieval_top1']:.2f} "
        f"in batches of {config.batch_size}"
        + (f", patch shape accuracy {record['patch_shape_accuracy']:.2f}" if "patch_shape_accuracy" in record else "")
    )


if __name__ == "__main__":
    main()
