"""Where ``jf eval`` results go: JSON on stdout and in ``--out``, and, when asked, an MLflow run.

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

from jf_lightning.inputs import UserInputError


def add_result_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("results")
    out.add_argument("--out", type=Path, help="also write the JSON results to this file")
    out.add_argument("--mlflow-run", help="log the metrics into this MLflow run (its id)")
    out.add_argument("--experiment", help="log the metrics into a new MLflow run of this experiment")
    out.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    out.add_argument("--step", type=int, default=0, help="the step the metrics are logged at (default 0)")


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
        if args.mlflow_run or args.experiment:
            run_id = log_to_mlflow(args, metrics, prog.replace(" ", "-"))
            print(f"logged {len(metrics)} metrics into MLflow run {run_id}", file=sys.stderr)
    except (UserInputError, FileNotFoundError, ValueError, MlflowException) as err:
        message = str(err.message if isinstance(err, MlflowException) else err).strip().splitlines()
        print(f"{prog}: error: {message[0] if message else type(err).__name__}", file=sys.stderr)
        sys.exit(2)
    print(text)
