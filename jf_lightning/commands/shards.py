"""``jf shards <tool> ...``: write WebDataset shards in the layout data/README.md documents, from an
image folder with captions, LLaVA conversations, a Hugging Face data set, or text corpora; and
``jf shards encode``: add pre-encoded generation targets (``latent.npy``, ``siglip.npy``) to gen shards.

Every tool writes into a new folder (or resumes its own), one shard per task over ``--processes``
processes, checks each sample through the training reader, and prints one line per kind of bad input
it skipped."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from jf_lightning.data.writing.hf_dataset import HFDatasetJob
from jf_lightning.data.writing.image_folder import ImageFolderJob
from jf_lightning.data.writing.llava import LlavaJob
from jf_lightning.data.writing.text import TextJob
from jf_lightning.data.writing.writer import write_shards
from jf_lightning.inputs import UserInputError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="folder to write the shards to (new, or this tool's own to resume)"
    )
    parser.add_argument(
        "--samples-per-shard", type=int, default=1000, help="samples per shard (default 1000)"
    )
    parser.add_argument("--processes", type=int, default=1, help="worker processes, one shard each at a time")
    parser.add_argument("--prefix", default="shard", help="shard file names: <prefix>-000000.tar ...")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jf shards", description=__doc__.split("\n\n")[0])
    tools = parser.add_subparsers(dest="tool", required=True)

    p = tools.add_parser(
        "image-folder", help="images + captions (side-car .txt, or a JSONL/CSV) -> gen or und"
    )
    p.add_argument("root", help="the image folder")
    p.add_argument(
        "--kind", choices=("gen", "und"), required=True, help="gen: caption = prompt; und: caption"
    )
    p.add_argument(
        "--captions",
        help="JSONL or CSV of file,caption rows (files relative to root); default: side-car .txt",
    )
    p.add_argument("--file-column", default="file")
    p.add_argument("--caption-column", default="caption")
    _common(p)

    p = tools.add_parser("llava", help="LLaVA conversation JSON + image folder -> und")
    p.add_argument("conversations", help="JSON list (or JSONL) of {image, conversations} entries")
    p.add_argument("--images", required=True, help="folder the entries' image paths are relative to")
    _common(p)

    p = tools.add_parser("hf-dataset", help="a datasets save_to_disk folder or parquet files -> shards")
    p.add_argument("path", help="save_to_disk folder, parquet file, folder of parquet files, or a glob")
    p.add_argument("--kind", choices=("gen", "und", "text"), required=True)
    p.add_argument(
        "--text-column",
        required=True,
        help="caption / prompt / document column (und: a list = conversations)",
    )
    p.add_argument("--image-column", help="image column (gen and und)")
    p.add_argument("--split", help="split of a saved DatasetDict")
    p.add_argument(
        "--image-root", help="folder relative image paths are read under (default: the data set's)"
    )
    _common(p)

    p = tools.add_parser("text", help="text files or JSONL -> text")
    p.add_argument("inputs", nargs="+", help="files, globs or folders")
    p.add_argument(
        "--mode",
        choices=("file", "line", "jsonl"),
        default="file",
        help="one document per file, per line, or per JSONL line (--text-field)",
    )
    p.add_argument("--text-field", default="text")
    _common(p)

    p = tools.add_parser("encode", help="add latent.npy + siglip.npy to gen shards (new shards)")
    p.add_argument("inputs", nargs="+", help="gen shard patterns (brace patterns, globs)")
    p.add_argument("--out", required=True, help="folder for the pre-encoded shards (same file names)")
    p.add_argument(
        "--model-config",
        help="a YAML holding the run's model.init_args: the config.yaml a run saves, or the output of "
        "`jf fit -c recipe.yaml --print_config`",
    )
    p.add_argument(
        "--checkpoint", help="a fit checkpoint: its model configuration and its VAE and SigLIP weights"
    )
    p.add_argument("--preset", default="tiny", help="without the two above: the run's model preset")
    p.add_argument(
        "--ablation", help="without --model-config / --checkpoint: the run's Table 6 ablation (A-F)"
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config key set on top (repeat), e.g. siglip.source=/models/siglip",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: this rank's GPU if any, else cpu)")
    p.add_argument(
        "--siglip-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage of siglip.npy (float16 halves it; training reads float32)",
    )
    p.add_argument("--drop-images", action="store_true", help="leave the images out of the new shards")
    p.add_argument("--decode-threads", type=int, default=4, help="threads decoding and resizing images (4)")
    return parser


def overrides_from(pairs: list[str]) -> dict:
    """``key=value`` strings -> {key: YAML value} (numbers, booleans, lists and null as in a config)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"--override {pair!r}: write key=value, e.g. siglip.source=/models/siglip")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _abs(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)  # the same settings from any working directory


def _job(args: argparse.Namespace):
    n = args.samples_per_shard
    if args.tool == "image-folder":
        captions = _abs(args.captions)
        return ImageFolderJob(_abs(args.root), args.kind, captions, args.file_column, args.caption_column, n)
    if args.tool == "llava":
        return LlavaJob(_abs(args.conversations), _abs(args.images), n)
    if args.tool == "hf-dataset":
        root = _abs(args.image_root)
        return HFDatasetJob(
            _abs(args.path), args.kind, args.text_column, args.image_column, args.split, root, n
        )
    return TextJob([_abs(p) for p in args.inputs], args.mode, args.text_field, n)


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.tool == "encode":
            # torch and the models: imported only here
            from jf_lightning.data.writing.encode import run_encode
            from jf_lightning.data.writing.targets import ModelSource

            overrides = overrides_from(args.override)
            source = ModelSource(args.preset, args.ablation, overrides, args.checkpoint, args.model_config)
            keep = not args.drop_images
            summary = run_encode(
                args.inputs, args.out, source, args.batch_size, args.device, args.siglip_dtype, keep,
                args.decode_threads,
            )  # fmt: skip
        else:
            summary = write_shards(_job(args), args.out, args.processes, args.prefix)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in summary.lines():
        print(line)
