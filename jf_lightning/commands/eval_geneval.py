"""``jf eval geneval``: score a GenEval-layout folder (``<images>/<00000>/metadata.jsonl``,
``<images>/<00000>/samples/<0000>.png``; what ``jf generate --prompts geneval`` writes) with GenEval's
rules, a Mask2Former instance segmenter and CLIP colours.

    python -m jf_lightning eval geneval --images out/geneval --detector path/to/mask2former --clip path/to/clip

Writes GenEval's per-image results JSONL (``--out``, default ``<images>/results.jsonl``: the fields
GenEval's ``evaluate_images.py`` writes, so its ``summary_scores.py`` reads it) and the summary as JSON
(``--summary``, default ``<images>/summary.json``: per task, ``overall`` = the mean of the task scores,
and the image / prompt shares), and prints the summary. Launched by ``torchrun``, each process scores
every ``WORLD_SIZE``-th image and the last to finish writes the files.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from jf_lightning.commands.model_source import Launch, device_for
from jf_lightning.commands.results import add_result_arguments, merged_rows, report_summary
from jf_lightning.inputs import UserInputError


def geneval_images(folder: str | Path) -> list[tuple[Path, dict]]:
    """(image path, its prompt's spec) for every ``<digits>/samples/<digits>.png``, in folder order."""
    root = Path(folder)
    if not root.is_dir():
        raise UserInputError(f"--images {folder}: no such folder")
    items = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        meta = sub / "metadata.jsonl"
        if not meta.is_file():
            raise UserInputError(f"{sub}: no metadata.jsonl (GenEval's layout has one per prompt folder)")
        try:
            spec = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserInputError(f"{meta}: invalid JSON ({err.msg})") from None
        if not isinstance(spec, dict) or "tag" not in spec or "include" not in spec:
            raise UserInputError(f"{meta}: a GenEval spec needs 'tag' and 'include' keys")
        samples = sub / "samples"
        names = sorted(p.name for p in samples.iterdir()) if samples.is_dir() else []
        items += [(samples / n, spec) for n in names if re.fullmatch(r"\d+\.png", n)]
    if not items:
        raise UserInputError(f"--images {folder}: no <00000>/samples/<0000>.png images in GenEval's layout")
    return items


def parse_args(argv: list[str]) -> argparse.Namespace:
    from jf_lightning.metrics.clip_colors import DEFAULT_CLIP
    from jf_lightning.metrics.mask2former_detector import DEFAULT_MASK2FORMER

    parser = argparse.ArgumentParser(prog="jf eval geneval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="a GenEval-layout folder")
    parser.add_argument("--out", help="per-image results JSONL (default <images>/results.jsonl)")
    parser.add_argument("--summary", help="summary JSON (default <images>/summary.json)")
    parser.add_argument(
        "--detector", default=DEFAULT_MASK2FORMER, help="transformers Mask2Former: hub id or directory"
    )
    parser.add_argument(
        "--clip", default=DEFAULT_CLIP, help="transformers CLIP for colours: hub id or directory"
    )
    parser.add_argument("--device", help="cuda, cpu (default: this process's GPU when there is one)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per detector call")
    for name, default in (("threshold", 0.3), ("counting-threshold", 0.9), ("position-threshold", 0.1)):
        parser.add_argument(
            f"--{name}", type=float, default=default, help=f"GenEval's {name} (default {default})"
        )
    parser.add_argument("--max-objects", type=int, default=16, help="GenEval's max_objects per class")
    parser.add_argument("--prefix", default="val/geneval", help="MLflow metric prefix (default val/geneval)")
    add_result_arguments(parser, out=False)
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict | None:
    """Score this process's images; the summary once the files are written (None on the other ranks)."""
    from PIL import Image, ImageOps
    from tqdm import tqdm

    from jf_lightning.metrics.geneval import GenEvalOptions, result_row, score_image, summary_scores
    from jf_lightning.metrics.mask2former_detector import Mask2FormerDetector

    launch = Launch.from_env()
    items = geneval_images(args.images)
    options = GenEvalOptions(
        args.threshold, args.counting_threshold, args.max_objects, 1.0, args.position_threshold
    )
    detector = Mask2FormerDetector(args.detector, args.clip, device_for(args.device))
    mine = launch.share(len(items))
    lines = []
    for start in tqdm(
        range(0, len(mine), args.batch_size), disable=launch.rank != 0, desc="geneval", unit="batch"
    ):
        index = mine[start : start + args.batch_size]
        images = [ImageOps.exif_transpose(Image.open(items[i][0])).convert("RGB") for i in index]
        for i, image, found in zip(index, images, detector.detect_batch(images), strict=True):
            path, spec = items[i]
            ok, why, grouped = score_image(detector, image, spec, options, detections=found)
            lines.append(json.dumps({**result_row(str(path), spec, ok, why, grouped), "_index": i}) + "\n")
    rows = merged_rows(Path(args.out or Path(args.images) / "results.jsonl"), launch, lines, len(items))
    if rows is None:
        return None
    summary = summary_scores(rows)
    Path(args.summary or Path(args.images) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """GenEval's printout: the shares, the task breakdown and the overall score."""
    shares = (
        f"correct images {summary['correct_images']:.2%}, correct prompts {summary['correct_prompts']:.2%}"
    )
    lines = [f"images {summary['images']}, prompts {summary['prompts']}, {shares}"]
    lines += [f"{task:<16} = {score:.2%}" for task, score in summary["tasks"].items() if task != "overall"]
    lines.append(f"overall score (mean over tasks): {summary['tasks'].get('overall', 0.0):.5f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    report_summary(
        "jf eval geneval", args, lambda: evaluate(args), format_summary,
        lambda summary: {f"{args.prefix}/{task}": score for task, score in summary["tasks"].items()},
    )  # fmt: skip
