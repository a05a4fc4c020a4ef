"""``jf eval und``: score a checkpoint on an understanding benchmark in the LLaVA shard layout under the
benchmark's own answer rule (``vqa`` for VQAv2 / GQA, ``pope`` for POPE, ``exact``).

    python -m jf_lightning eval und --ckpt run/last.ckpt --shards 'pope/test-{0000..0008}.tar' --rule pope

Writes every answer (``--out``, default ``<name>_answers.jsonl``: question, references, answer,
question type) and the scores as JSON (``--summary``, default ``<name>_scores.json``), and prints the
scores. Launched by ``torchrun``, each process answers every ``WORLD_SIZE``-th question and the last to
finish writes the files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jf_lightning.commands.model_source import Launch, add_model_arguments, load_for_inference, precision
from jf_lightning.commands.results import add_result_arguments, merged_rows, report_summary
from jf_lightning.inputs import UserInputError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jf eval und", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, nargs="+", help="the benchmark's shard pattern(s)")
    parser.add_argument(
        "--name", default="und", help="the benchmark's name in the outputs (vqav2, gqa, pope)"
    )
    parser.add_argument("--rule", choices=("vqa", "pope", "exact"), default="vqa", help="answer rule")
    parser.add_argument("--limit", type=int, help="only the first this many questions")
    parser.add_argument("--out", help="answers JSONL (default <name>_answers.jsonl)")
    parser.add_argument("--summary", help="scores JSON (default <name>_scores.json)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="longest answer, in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per decoding call")
    add_model_arguments(parser)
    add_result_arguments(parser, out=False)
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict | None:
    """Answer this process's share; the scores once the files are written (None on the other ranks)."""
    from jf_lightning.data.questions import ShardQuestions
    from jf_lightning.inference.answer import answer_ids
    from jf_lightning.inference.prompts import decode_answers
    from jf_lightning.metrics.understanding import benchmark_scores

    launch = Launch.from_env()
    loaded, templater, device = load_for_inference(args)
    try:
        questions = ShardQuestions(args.shards, args.limit).questions(loaded.model.cfg.image_size)
    except (FileNotFoundError, ValueError) as err:
        raise UserInputError(str(err)) from None
    mine = launch.share(len(questions))
    ids = answer_ids(
        loaded.model, templater, [questions[i].image for i in mine], [questions[i].question for i in mine],
        args.max_new_tokens, args.batch_size, precision(device, args.bf16),
    )  # fmt: skip
    answers = decode_answers(templater.tokenizer, ids, templater.eos)
    lines = [
        json.dumps({"question": questions[i].question, "references": list(questions[i].references), "answer": a,
                    "question_type": questions[i].question_type, "_index": i}) + "\n"
        for i, a in zip(mine, answers, strict=True)
    ]  # fmt: skip
    rows = merged_rows(Path(args.out or f"{args.name}_answers.jsonl"), launch, lines, len(questions))
    if rows is None:
        return None
    scores = benchmark_scores(args.rule, [r["answer"] for r in rows], [r["references"] for r in rows])
    summary = {"benchmark": args.name, "rule": args.rule, "questions": len(rows),
               **{(f"{args.name}/{k}" if k else args.name): v for k, v in scores.items()}}  # fmt: skip
    Path(args.summary or f"{args.name}_scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    report_summary(
        "jf eval und", args, lambda: evaluate(args), lambda summary: json.dumps(summary, indent=2),
        lambda summary: {f"val/und/{k}": v for k, v in summary.items() if k.split("/")[0] == args.name},
    )  # fmt: skip
