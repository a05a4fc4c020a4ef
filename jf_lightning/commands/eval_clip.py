"""``jf eval clip``: CLIP score of a folder of images with the prompts they were drawn from."""

from __future__ import annotations

import argparse
from pathlib import Path

from jf_lightning.commands.results import parse_image_folder_args, report

HELP = "CLIP score (torchmetrics, CLIP ViT-L/14) of a folder of images with their prompts"


def add_clip_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=Path, required=True,
                   help="the images' prompts: a JSON file by file stem (MJHQ's meta_data.json), a folder in "
                        "GenEval's layout (<n>/metadata.jsonl), or a text file of one line per image in sorted "
                        "order")  # fmt: skip
    p.add_argument("--model", default="openai/clip-vit-large-patch14", help="CLIP hub id or local directory")
    p.add_argument("--key", default="val/clip_score", help="metric name (default val/clip_score)")


def run(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from PIL import Image

    from jf_lightning.inference.images import from_pil
    from jf_lightning.metrics.clip_score import clip_score_metric
    from jf_lightning.metrics.fid import image_files
    from jf_lightning.metrics.prompt_files import prompts_for_images

    files = image_files(args.images)
    prompts = [p.text for p in prompts_for_images(files, args.prompts)]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    metric = clip_score_metric(args.model, device)
    for i in range(0, len(files), args.batch_size):
        chunk = files[i : i + args.batch_size]
        images = [from_pil([Image.open(f)])[0] for f in chunk]  # (3, H, W) uint8 each: sizes may differ
        metric.update([img.to(device) for img in images], prompts[i : i + args.batch_size])
    return {args.key: float(metric.compute())}


def main(argv: list[str]) -> None:
    args = parse_image_folder_args("jf eval clip", HELP, argv, add_clip_arguments)
    report("jf eval clip", args, lambda: run(args))
