"""``jf eval fid``: FID of a folder of images against a reference folder or statistics file."""

from __future__ import annotations

import argparse
from pathlib import Path

from jf_lightning.commands.results import parse_image_folder_args, report

HELP = "FID of a folder of images against real images (a folder, or MJHQ-30K) or a statistics file"


def add_fid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", type=Path, required=True,
                   help="real images (a folder; MJHQ-30K's mjhq30k_imgs with meta_data.json in or beside it "
                        "adds per-category FID) or an .npz statistics file (ours or clean-fid's)")  # fmt: skip
    p.add_argument("--prompts", type=Path,
                   help="MJHQ's meta_data.json naming each generated image's category by file stem: adds "
                        "<prefix>/<category>")  # fmt: skip
    p.add_argument("--backend", choices=("clean-fid", "torchmetrics"), default="clean-fid")
    p.add_argument("--dims", type=int, default=2048, choices=(64, 192, 768, 2048),
                   help="feature size: 2048 (FID); torchmetrics also an earlier block's (not comparable)")  # fmt: skip
    p.add_argument("--mode", choices=("clean", "legacy_tensorflow"), default="clean", help="clean-fid's mode")
    p.add_argument("--weights", type=Path,
                   help="Inception weights file or its folder (default: the library's cache, "
                        "/tmp/inception-2015-12-05.pt for clean-fid)")  # fmt: skip
    p.add_argument(
        "--cache-dir", type=Path, help="reference statistics cache (default ~/.cache/jf_lightning/fid)"
    )
    p.add_argument("--prefix", default="val/fid/mjhq", help="metric name (default val/fid/mjhq)")
    p.add_argument("--num-workers", type=int, default=0, help="image-reading processes")


def run(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from jf_lightning.metrics.fid import feature_extractor, fid_scores, image_files, reference_stats
    from jf_lightning.metrics.prompt_files import prompts_for_images

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = feature_extractor(
        args.backend, args.weights, args.mode, device, args.dims
    )  # missing weights: at once
    files = image_files(args.images)
    categories = [p.category for p in prompts_for_images(files, args.prompts)] if args.prompts else None
    reference = reference_stats(args.reference, extractor, args.cache_dir, args.batch_size, args.num_workers)
    features = extractor.files(files, args.batch_size, args.num_workers, progress=True)  # (N, 2048)
    scores = fid_scores(features, reference, extractor, categories)
    prefix = args.prefix.rstrip("/")
    return {prefix if k == "" else f"{prefix}/{k}": v for k, v in scores.items()}


def main(argv: list[str]) -> None:
    args = parse_image_folder_args("jf eval fid", HELP, argv, add_fid_arguments)
    report("jf eval fid", args, lambda: run(args))
