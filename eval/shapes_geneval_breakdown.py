"""Per-prompt GenEval breakdown of a shapes-world checkpoint, on noise seeds validation never uses.

    python eval/shapes_geneval_breakdown.py <run>/checkpoints/last.ckpt --data data \
        --tasks colors,single_object,two_object --seeds-per-spec 8 [--json out.json]

Every spec of each task (colors: 18, single_object: 3, two_object: 6, ...) times ``--seeds-per-spec``
noise seeds, sampled with the checkpoint's EMA weights (20 Euler steps, CFG 2 by default: the demo's
validation sampler), scored by ShapesDetector and GenEval's rules. Prints each task's accuracy, its
failures by kind (empty canvas, wrong colour, other objects), each prompt's accuracy and the commonest
failure reasons. ``--data`` is the directory the run started in held as ``data/`` (its tokenizer and
pretrained SigLIP): the checkpoint records those paths relative to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from jf_lightning.data.templates import Templater
from jf_lightning.inference.generate import generate_images
from jf_lightning.inference.prompts import generation_prompt_ids
from jf_lightning.shapes.breakdown import (
    format_summary,
    held_out_items,
    load_checkpoint_stage,
    outcomes_as_records,
    score_images,
    summarize_outcomes,
)
from jf_lightning.shapes.detector import ShapesDetector


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data"), help="holds shapes/tokenizer and shapes-siglip")
    parser.add_argument("--tasks", default="colors", help="comma-separated GenEval tasks")
    parser.add_argument("--seeds-per-spec", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-weight", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="sample under bf16 autocast")
    parser.add_argument("--json", type=Path, help="also write every image's outcome here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tokenizer_dir, siglip_dir = args.data / "shapes" / "tokenizer", args.data / "shapes-siglip"
    for path in (args.checkpoint, tokenizer_dir):
        if not path.exists():
            sys.exit(f"{path} does not exist: pass the checkpoint and --data of the run")
    if args.json is not None and args.json.exists():
        sys.exit(f"{args.json} exists: choose another --json path (nothing is overwritten)")
    overrides = {"siglip.source": str(siglip_dir)} if siglip_dir.exists() else None
    stage = load_checkpoint_stage(args.checkpoint, overrides)
    cfg = stage.model.cfg
    templater = Templater(AutoTokenizer.from_pretrained(str(tokenizer_dir)), cfg.num_und_tokens, cfg.num_gen_tokens, "pretrain")
    items = held_out_items(args.tasks.split(","), args.seeds_per_spec)
    prompt_ids = [generation_prompt_ids(templater, spec["prompt"]) for spec, _ in items]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        images = generate_images(
            stage.model, prompt_ids, [seed for _, seed in items], templater.pad, args.steps, args.cfg_weight, args.batch_size
        )
    outcomes = score_images(items, images, ShapesDetector())
    print(format_summary(summarize_outcomes(outcomes)))
    if args.json is not None:
        args.json.write_text(json.dumps(outcomes_as_records(outcomes), indent=1))


if __name__ == "__main__":
    main()
