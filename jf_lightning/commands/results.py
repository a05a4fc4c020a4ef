"""Where ``jf eval`` results go: JSON on stdout and in ``--out`` (FID, CLIP score), a per-item JSONL that
every ``torchrun`` process writes its share of (GenEval, understanding), and, when asked, an MLflow run.

Metric names are the ones the training callbacks log (``val/fid/mjhq``, ``val/clip_score``, ...), so a
score logged into a training run (``--mlflow-run``) sits beside the callbacks' and ``jf compare`` reads
both alike; ``--experiment`` logs into a new run instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from jf_lightning.inputs import UserInputError

if TYPE_CHECKING:
    from jf_lightning.commands.model_source import Launch


def parse_image_folder_args(
    prog: str, description: str, argv: list[str], add_arguments: Callable[[argparse.ArgumentParser], None]
) -> argparse.Namespace:
    """The arguments of a command that scores a folder of generated images: ``--images``, the command's
    own (``add_arguments``), ``--batch-size``, ``--device`` and the result arguments."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--images", type=Path, required=True, help="folder of generated images (searched recursively)"
    )
    add_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    add_result_arguments(parser)
    return parser.parse_args(argv)


def add_result_arguments(parser: argparse.ArgumentParser, out: bool = True) -> None:
    """``--out`` (the JSON results; ``out=False`` where a command's ``--out`` is its own) and MLflow's."""
    group = parser.add_argument_group("results")
    if out:
        group.add_argument("--out", type=Path, help="also write the JSON results to this file")
    group.add_argument("--mlflow-run", help="log the metrics into this MLflow run (its id)")
    group.add_argument("--experiment", help="log the metrics into a new MLflow run of this experiment")
    group.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    group.add_argument("--step", type=int, default=0, help="the step the metrics are logged at (default 0)")


def log_to_mlflow(args: argparse.Namespace, metrics: dict[str, float], run_name: str) -> str:
    """Log ``metrics`` into ``--mlflow-run`` or a new run of ``--experiment``; returns the run id."""
    from mlflow.tracking import MlflowClient

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run_id = args.mlflow_run
    if run_id is None:
        experiment = client.get_experiment_by_name(args.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(args.experiment)
        run_id = client.create_run(experiment_id, tags={"mlflow.runName": run_name}).info.run_id
    client.get_run(run_id)  # an unknown run id fails here, in one line
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=args.step)
    if args.mlflow_run is None:
        client.set_terminated(run_id)
    return run_id


def log_if_asked(prog: str, args: argparse.Namespace, metrics: dict[str, float]) -> None:
    """Log ``metrics`` into MLflow when ``--mlflow-run`` or ``--experiment`` asks, naming the run on stderr."""
    if args.mlflow_run or args.experiment:
        run_id = log_to_mlflow(args, metrics, prog.replace(" ", "-"))
        print(f"logged {len(metrics)} metrics into MLflow run {run_id}", file=sys.stderr)


def report(prog: str, args: argparse.Namespace, compute: Callable[[], dict[str, float]]) -> None:
    """Run ``compute`` and send its metrics everywhere ``args`` asks; a bad input or store is one line
    on stderr (exit code 2)."""
    from mlflow.exceptions import MlflowException

    try:
        metrics = compute()
        text = json.dumps(metrics, indent=2, sort_keys=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        log_if_asked(prog, args, metrics)
    except (UserInputError, FileNotFoundError, ValueError, MlflowException) as err:
        message = str(err.message if isinstance(err, MlflowException) else err).strip().splitlines()
        print(f"{prog}: error: {message[0] if message else type(err).__name__}", file=sys.stderr)
        sys.exit(2)
    print(text)


def merged_rows(out: Path, launch: Launch, lines: list[str], n: int) -> list[dict] | None:
    """Write this process's ``lines`` (JSONL rows with their ``_index`` among all ``n``) as ``<out>.rank<r>``;
    the process that finds every part there merges them into ``out`` in item order and gets its rows
    (the others: None)."""
    from jf_lightning.commands.chat import merge_parts  # torch and the model code: only where they run

    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f"{out.name}.rank{launch.rank}")
    tmp = part.with_name(part.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(part)  # a part appears whole, so the merge never reads half of one
    if not merge_parts(out, launch.world_size, n):
        return None
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def report_summary(
    prog: str,
    args: argparse.Namespace,
    evaluate: Callable[[], dict | None],
    show: Callable[[dict], str],
    metrics: Callable[[dict], dict[str, float]],
) -> None:
    """Run ``evaluate``; where it returns the summary (the process that merged the files), print
    ``show(summary)`` and log ``metrics(summary)`` when asked. A bad input is one line on stderr (exit 1)."""
    try:
        summary = evaluate()
    except (UserInputError, FileNotFoundError) as err:
        sys.exit(f"{prog}: error: {err}")
    if summary is not None:
        print(show(summary))
        log_if_asked(prog, args, metrics(summary))
