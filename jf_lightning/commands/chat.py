"""``jf chat``: questions about images -> answers with a trained model (greedy decoding).

    python -m jf_lightning chat --ckpt run/last.ckpt --image cat.png --question "What color is the cat?"
    torchrun --nproc-per-node 8 -m jf_lightning chat --ckpt ... --questions qs.jsonl --out answers.jsonl

``--questions``: a JSONL with an ``image`` path (relative to the file's folder, or absolute) and a
``question`` per line; every other field is copied to the answer line, which adds ``answer``. The
question is the human turn as the training data writes it (``<image>\\n...``; without the marker the
image goes first). Launched by ``torchrun``, each process answers every ``WORLD_SIZE``-th question and
writes ``<out>.rank<r>``; the last process to finish merges them into ``<out>`` in question order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from jf_lightning.commands.model_source import Launch, add_model_arguments, load_for_inference, precision
from jf_lightning.inputs import UserInputError


def read_questions(path: str) -> list[dict]:
    """The rows of a questions JSONL, each with its ``image`` made absolute."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"--questions {path}: no such file")
    rows = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("image"), str)
            or not isinstance(row.get("question"), str)
        ):
            raise UserInputError(f"{path}:{lineno}: a line needs an 'image' path and a 'question' string")
        row["image"] = str((file.parent / row["image"]).resolve())
        rows.append(row)
    return rows


def open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise UserInputError(f"image {path}: cannot be read ({err})") from None


def answer_rows(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    """Answers to ``rows`` (every one of them, on this process)."""
    from jf_lightning.inference.answer import answer_ids
    from jf_lightning.inference.prompts import decode_answers

    loaded, templater, device = load_for_inference(args)
    images = [open_image(row["image"]) for row in rows]
    ids = answer_ids(
        loaded.model, templater, images, [row["question"] for row in rows], args.max_new_tokens,
        args.batch_size, precision(device, args.bf16),
    )  # fmt: skip
    return decode_answers(templater.tokenizer, ids, templater.eos)


def merge_parts(out: Path, world_size: int, n: int) -> bool:
    """Write ``out`` from every rank's part once all are there (False while one is missing)."""
    parts = [out.with_name(f"{out.name}.rank{r}") for r in range(world_size)]
    if not all(p.is_file() for p in parts):
        return False
    rows: list[dict | None] = [None] * n
    try:
        for part in parts:
            for line in part.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                rows[row.pop("_index")] = row
    except FileNotFoundError:  # another rank finished at the same moment and merged first
        return False
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    for part in parts:
        part.unlink(missing_ok=True)
    return True


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jf chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="one image")
    parser.add_argument("--question", help="the question about --image")
    parser.add_argument("--questions", help="a JSONL of {image, question, ...} lines")
    parser.add_argument("--out", help="answers JSONL (with --questions; default: print to stdout)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest answer, in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per decoding call")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if bool(args.questions) == bool(args.image or args.question) or bool(args.image) != bool(args.question):
        parser.error("give either --image and --question, or --questions")
    return args


def chat(args: argparse.Namespace) -> None:
    if args.image:
        print(answer_rows(args, [{"image": args.image, "question": args.question}])[0])
        return
    launch = Launch.from_env()
    rows = read_questions(args.questions)
    mine = launch.share(len(rows))
    answers = answer_rows(args, [rows[i] for i in mine])
    lines = [
        json.dumps({**rows[i], "answer": a, "_index": i}) + "\n" for i, a in zip(mine, answers, strict=True)
    ]
    if args.out is None:
        for line in lines:
            row = json.loads(line)
            del row["_index"]
            print(json.dumps(row))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f"{out.name}.rank{launch.rank}")
    tmp = part.with_name(part.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(part)  # a part appears whole, so the merge never reads half of one
    merge_parts(out, launch.world_size, len(rows))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        chat(args)
    except (UserInputError, FileNotFoundError) as err:
        sys.exit(f"jf chat: error: {err}")
