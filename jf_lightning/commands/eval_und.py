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
import sys
from pathlib import Path

from jf_lightning.commands.chat import merge_parts
from jf_lightning.commands.model_source import Launch, add_model_arguments, load_for_inference, precision
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
    mlflow = parser.add_argument_group("MLflow (when asked)")
    mlflow.add_argument("--mlflow-run", help="log the scores into this MLflow run (its id)")
    mlflow.add_argument("--experiment", help="log the scores into a new MLflow run of this experiment")
    mlflow.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    mlflow.add_argument("--step", type=int, default=0, help="the step the scores are logged at (default 0)")
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
    out = Path(args.out or f"{args.name}_answers.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f"{out.name}.rank{launch.rank}")
    part.with_name(part.name + ".tmp").write_text("".join(lines), encoding="utf-8")
    part.with_name(part.name + ".tmp").replace(part)
    if not merge_parts(out, launch.world_size, len(questions)):
        return None
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    scores = benchmark_scores(args.rule, [r["answer"] for r in rows], [r["references"] for r in rows])
    summary = {"benchmark": args.name, "rule": args.rule, "questions": len(rows),
               **{(f"{args.name}/{k}" if k else args.name): v for k, v in scores.items()}}  # fmt: skip
    Path(args.summary or f"{args.name}_scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        summary = evaluate(args)
    except (UserInputError, FileNotFoundError) as err:
        sys.exit(f"jf eval und: error: {err}")
    if summary is None:
        return
    print(json.dumps(summary, indent=2))
    if args.mlflow_run or args.experiment:
        from jf_lightning.commands.results import log_to_mlflow

        metrics = {f"val/und/{k}": v for k, v in summary.items() if k.split("/")[0] == args.name}
        print(f"logged into MLflow run {log_to_mlflow(args, metrics, 'jf-eval-und')}", file=sys.stderr)
