"""Run comparison: the paper's ablation table (Table 6) and the runs' curves, from an MLflow store.

``python -m jf_lightning compare --experiment tiny`` (or ``--runs <id> <id> ...``) prints one row per
run, named by its ``recipe`` tag (else its run name), with the final (last logged) value of each chosen
metric, or with ``--best`` its best value (the lowest for losses and FID, the highest otherwise); it
writes the table as ``table.md`` and ``table.csv`` and every metric's curves against the step as
``curves.png`` under ``--out``. The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
the CLI's local ``sqlite:///mlflow.db``. Table building is pure functions over :class:`RunRecord`.

The CLI tags every run with what a comparison groups by (:func:`run_tags`): recipe, stage, ablation,
preset, git commit and whether the tree had uncommitted changes.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import os
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_METRICS = (
    "val/fid/mjhq", "val/clip_score", "val/geneval/overall", "val/und_accuracy", "val/und/pope",
    "val/und/vqav2", "val/und/gqa", "train/loss", "val/rf_loss", "val/ar_loss",
)  # fmt: skip
# An unreachable server should be said in seconds, not after MLflow's default 7 retries of 120 s each.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class CompareError(Exception):
    """A mistake in what was asked (said in one line, exit code 2)."""


@dataclass
class RunRecord:
    run_id: str
    name: str  # the recipe tag, else the run name
    final: dict[str, float]  # last logged value of every metric the run has
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (step, value), chosen metrics


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "fid" in metric


def select_metrics(patterns: list[str], runs: list[RunRecord]) -> list[str]:
    """The metrics any run has, in the order of ``patterns`` (each a name or a glob such as
    ``val/shapes_geneval/*``, whose matches come sorted)."""
    logged = sorted({key for run in runs for key in run.final})
    chosen: list[str] = []
    for pattern in patterns:
        chosen += [key for key in fnmatch.filter(logged, pattern) if key not in chosen]
    return chosen


def unique_names(runs: list[RunRecord]) -> list[str]:
    """Curve labels; runs of one recipe are told apart by their run id's first 8 characters."""
    counts = Counter(run.name for run in runs)
    return [run.name if counts[run.name] == 1 else f"{run.name} ({run.run_id[:8]})" for run in runs]


def cell(run: RunRecord, metric: str, best: bool) -> float | None:
    if metric not in run.final:
        return None
    values = [value for _, value in run.history.get(metric, [])]
    if not best or not values:
        return run.final[metric]
    return min(values) if lower_is_better(metric) else max(values)


def build_table(
    runs: list[RunRecord], metrics: list[str], best: bool = False
) -> tuple[list[str], list[list]]:
    """Header ``[run, run_id, *metrics]`` and one row per run; ``None`` where a run lacks a metric."""
    rows = [[run.name, run.run_id, *(cell(run, metric, best) for metric in metrics)] for run in runs]
    return ["run", "run_id", *metrics], rows


def to_markdown(header: list[str], rows: list[list]) -> str:
    """A Markdown table, 4 significant digits, ``-`` for a missing value, each column's best in bold
    when the runs differ."""
    best = {}
    for i, metric in enumerate(header[2:], start=2):
        present = [row[i] for row in rows if row[i] is not None and not math.isnan(row[i])]
        if len(set(present)) > 1:
            best[i] = min(present) if lower_is_better(metric) else max(present)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row[0], row[1][:8]]
        for i, value in enumerate(row[2:], start=2):
            text = "-" if value is None else f"{value:.4g}"
            cells.append(f"**{text}**" if value is not None and value == best.get(i) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(header: list[str], rows: list[list], path: Path) -> None:
    """Full precision; an empty cell where a run lacks a metric."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


def draw_curves(runs: list[RunRecord], metrics: list[str], path: Path) -> None:
    """One subplot per metric (value against step), one line per run, one legend above them all."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no window
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.2 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for name, run in zip(unique_names(runs), runs):
            points = sorted(run.history.get(metric, []))
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, marker="o" if len(points) <= 20 else None, markersize=4)
        ax.set_title(metric + (" (lower is better)" if lower_is_better(metric) else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    legend = {}  # label -> line, over every subplot: a run may lack the first metric
    for ax in axes[: len(metrics)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="outside upper center", ncols=min(4, len(labels)), frameon=False)
    fig.savefig(path, dpi=100)


def fetch_runs(client: MlflowClient, run_ids: list[str] | None, experiment: str | None, filter_string: str):
    """The chosen runs (oldest first for an experiment)."""
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                raise CompareError(f"no run with id {run_id!r} in this store") from None
        return runs
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise CompareError(f"no experiment named {experiment!r} (this store has: {names})")
    runs = client.search_runs([found.experiment_id], filter_string, max_results=1000,
                              order_by=["attributes.start_time ASC"])  # fmt: skip
    if not runs:
        matching = f" matching {filter_string!r}" if filter_string else ""
        raise CompareError(f"experiment {experiment!r} has no runs{matching}")
    return list(runs)


def load_records(client: MlflowClient, runs, patterns: list[str]) -> tuple[list[RunRecord], list[str]]:
    """Runs as :class:`RunRecord` with the histories of the chosen metrics, and those metrics."""
    records = [RunRecord(run.info.run_id, run.data.tags.get("recipe") or run.info.run_name,
                         dict(run.data.metrics)) for run in runs]  # fmt: skip
    metrics = select_metrics(patterns, records)
    if not metrics:
        raise CompareError(f"none of the runs logged any of {', '.join(patterns)}")
    for record in records:
        for metric in (m for m in metrics if m in record.final):
            history = client.get_metric_history(record.run_id, metric)
            record.history[metric] = [(point.step, point.value) for point in history]
    return records, metrics


def run_tags(config_file: str | None, stage: str, ablation: str | None, preset: str | None) -> dict[str, str]:
    """MLflow tags of a run: ``recipe`` (the first config file's stem), ``stage``, ``ablation``,
    ``preset``, ``git_commit`` and ``git_dirty`` of the tree the config file is in."""
    commit, dirty = git_state(Path(config_file).absolute().parent if config_file else Path.cwd())
    recipe = Path(config_file).stem if config_file else "jf_lightning"
    return {"recipe": recipe, "stage": stage, "ablation": str(ablation or "none"), "preset": str(preset),
            "git_commit": commit, "git_dirty": dirty}  # fmt: skip


def git_state(directory: Path) -> tuple[str, str]:
    """(HEAD's commit, "True"/"False" for uncommitted changes to tracked files), or "unknown" for both
    outside a git tree or without git: never an error."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        return git("rev-parse", "HEAD"), str(bool(git("status", "--porcelain", "--untracked-files=no")))
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


def tracking_uri(given: str | None) -> str:
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise CompareError(f"no MLflow store at {uri} (give --tracking-uri or set MLFLOW_TRACKING_URI)")
    return uri


def unreachable(err: BaseException | None) -> str | None:
    """Why a tracking server could not be reached, when that is what ``err`` (or what it wraps) says."""
    while err is not None and not isinstance(err, requests.exceptions.RequestException):
        err = err.__cause__ or err.__context__  # MLflow raises its own exception inside `except`
    if isinstance(err, requests.exceptions.Timeout):
        return f"no answer within {os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT']} s"
    if isinstance(err, requests.exceptions.ConnectionError):
        return "connection refused" if "refused" in str(err).lower() else "connection failed"
    return None


@contextmanager
def quick_http():
    """MLflow's HTTP retries and timeout at QUICK_HTTP's values unless the environment sets them."""
    saved = {key: os.environ[key] for key in QUICK_HTTP if key in os.environ}
    os.environ.update({**QUICK_HTTP, **saved})
    try:
        yield
    finally:
        for key in QUICK_HTTP.keys() - saved.keys():
            os.environ.pop(key, None)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jf compare", description=__doc__.split("\n\n")[0])
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--runs", nargs="+", metavar="RUN_ID", help="run ids, one row each")
    chosen.add_argument("--experiment", help="every run of this experiment (oldest first)")
    parser.add_argument("--filter", default="", help="MLflow search filter for --experiment, "
                        "e.g. \"tags.stage = 'PretrainingStage' and attributes.status = 'FINISHED'\"")  # fmt: skip
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="NAME",
                        help="columns, in order: names or globs (val/shapes_geneval/*); default: Table 6's")  # fmt: skip
    parser.add_argument("--best", action="store_true", help="best value of each run (min for losses and FID)")
    parser.add_argument("--tracking-uri", help=f"default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}")
    parser.add_argument(
        "--out", type=Path, default=Path("compare"), help="where table.md/.csv and curves.png go"
    )
    return parser.parse_args(argv)


def compare(args: argparse.Namespace) -> None:
    uri = tracking_uri(args.tracking_uri)
    client = MlflowClient(uri)
    with quick_http():
        try:
            runs = fetch_runs(client, args.runs, args.experiment, args.filter)
            records, metrics = load_records(client, runs, args.metrics)
        except MlflowException as err:
            reason = unreachable(err)
            if reason is None:
                raise
            raise CompareError(f"cannot reach the MLflow tracking server at {uri} ({reason})") from None
    header, rows = build_table(records, metrics, args.best)
    table = to_markdown(header, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    write_csv(header, rows, args.out / "table.csv")
    draw_curves(records, metrics, args.out / "curves.png")
    print(table)
    missing = [m for m in args.metrics if not fnmatch.filter(metrics, m)]
    if missing:
        print(f"(no run logged {', '.join(missing)})")
    print(f"{'best' if args.best else 'final'} values of {len(rows)} run(s) from {uri}; wrote "
          + ", ".join(str(args.out / name) for name in ("table.md", "table.csv", "curves.png")))  # fmt: skip


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        compare(args)
    except (CompareError, MlflowException) as err:
        message = str(err.message if isinstance(err, MlflowException) else err).strip().splitlines()
        print(f"jf compare: error: {message[0] if message else type(err).__name__}", file=sys.stderr)
        sys.exit(2)
