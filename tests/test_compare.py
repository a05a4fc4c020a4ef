"""``compare``: the ablation table from an MLflow store (final or best values, missing metrics, rows named
by the recipe tag), its Markdown / CSV / PNG outputs, its one-line errors, the tags the CLI gives runs,
and the whole path against a real MLflow tracking server."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from PIL import Image

from jf_lightning import compare
from jf_lightning.compare import RunRecord, build_table, select_metrics, to_markdown, unique_names

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"
# (recipe tag or None, run name, {metric: values at steps 0, 1, ...})
RUNS = [
    ("ablation_A", "PretrainingStage-1", {"train/loss": [3.0, 2.0, 2.5], "val/und_accuracy": [0.5, 0.7, 0.6],
                                          "val/fid/mjhq": [20.0, 18.0]}),
    ("ablation_F", "PretrainingStage-2", {"train/loss": [3.0, 1.5, 1.8], "val/und_accuracy": [0.6, 0.8]}),
    (None, "scratch", {"train/loss": [4.0]}),
]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, list[str]]:
    """A local sqlite store with experiment ``abl`` holding RUNS (oldest first); its URI and run ids."""
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("abl", artifact_location=str(tmp / "artifacts"))
    ids = []
    for recipe, name, metrics in RUNS:
        run = client.create_run(experiment, run_name=name, tags={"recipe": recipe} if recipe else {})
        points = [Metric(key, value, 1000 + step, step) for key, values in metrics.items()
                  for step, value in enumerate(values)]  # fmt: skip
        client.log_batch(run.info.run_id, metrics=points)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
        time.sleep(0.01)  # distinct start times: the table lists an experiment's runs oldest first
    return uri, ids


def records() -> list[RunRecord]:
    return [RunRecord(f"id{i}" * 8, recipe or name, {k: v[-1] for k, v in m.items()},
                      {k: list(enumerate(v)) for k, v in m.items()}) for i, (recipe, name, m) in enumerate(RUNS)]  # fmt: skip


def test_table_of_final_values_names_rows_by_recipe_and_leaves_gaps():
    runs = records()
    metrics = select_metrics(["val/fid/mjhq", "val/clip_score", "train/loss", "val/und_accuracy"], runs)
    assert metrics == ["val/fid/mjhq", "train/loss", "val/und_accuracy"]  # no run has a CLIP score
    header, rows = build_table(runs, metrics)
    assert header == ["run", "run_id", *metrics]
    assert [row[0] for row in rows] == ["ablation_A", "ablation_F", "scratch"]  # else the run name
    assert [row[2:] for row in rows] == [[18.0, 2.5, 0.6], [None, 1.8, 0.8], [None, 4.0, None]]


def test_best_values_are_the_lowest_loss_and_fid_and_the_highest_score():
    _, rows = build_table(records(), ["val/fid/mjhq", "train/loss", "val/und_accuracy"], best=True)
    assert [row[2:] for row in rows] == [[18.0, 2.0, 0.7], [None, 1.5, 0.8], [None, 4.0, None]]


def test_markdown_marks_gaps_and_each_columns_best():
    header, rows = build_table(records(), ["train/loss", "val/und_accuracy"])
    lines = to_markdown(header, rows).splitlines()
    assert lines[0] == "| run | run_id | train/loss | val/und_accuracy |"
    assert lines[3] == "| ablation_F | id1id1id | **1.8** | **0.8** |"
    assert lines[4] == "| scratch | id2id2id | 4 | - |"


def test_globs_and_runs_of_one_recipe():
    runs = records()
    runs[1].name = "ablation_A"
    assert select_metrics(["val/*", "train/loss", "train/*"], runs) == [
        "val/fid/mjhq",
        "val/und_accuracy",
        "train/loss",
    ]
    assert [row[0] for row in build_table(runs, ["train/loss"])[1]] == ["ablation_A", "ablation_A", "scratch"]
    assert unique_names(runs) == ["ablation_A (id0id0id)", "ablation_A (id1id1id)", "scratch"]  # the curves'


def test_compare_an_experiment_writes_table_csv_and_curves(store, tmp_path, capsys):
    uri, ids = store
    compare.main(["--experiment", "abl", "--tracking-uri", uri, "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| run | run_id | val/fid/mjhq | val/und_accuracy | train/loss |"  # Table 6's order
    assert out[2].startswith(f"| ablation_A | {ids[0][:8]} | 18 | 0.6 | 2.5 |")
    assert out[5].startswith("(no run logged val/clip_score, val/geneval/overall")
    with (tmp_path / "cmp" / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert (
        [r["run_id"] for r in rows] == ids
        and rows[1]["val/fid/mjhq"] == ""
        and rows[1]["train/loss"] == "1.8"
    )
    assert (tmp_path / "cmp" / "table.md").read_text().splitlines()[0] == out[0]
    with Image.open(tmp_path / "cmp" / "curves.png") as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 300


def test_chosen_runs_best_values(store, tmp_path, capsys):
    uri, ids = store
    compare.main(["--runs", ids[1], ids[0], "--metrics", "train/loss", "--best", "--tracking-uri", uri,
                  "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[2:4] == [f"| ablation_F | {ids[1][:8]} | **1.5** |", f"| ablation_A | {ids[0][:8]} | 2 |"]
    assert out[4].startswith("best values of 2 run(s)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "no experiment named 'nope' (this store has: Default, abl)"),
        (["--runs", "0123abcd"], "no run with id '0123abcd' in this store"),
        (["--experiment", "abl", "--filter", "tags.recipe = 'x'"], "experiment 'abl' has no runs matching"),
        (["--experiment", "abl", "--metrics", "val/fid"], "none of the runs logged any of val/fid"),
    ],
)
def test_mistakes_are_one_line_exit_code_2(store, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        compare.main([*args, "--tracking-uri", store[0], "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert (
        exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith(f"jf compare: error: {message}")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_one_line_within_seconds(tmp_path, capsys):
    from jf_lightning.cli import main  # through the CLI's subcommand table

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--experiment", "tiny", "--tracking-uri", uri, "--out", str(tmp_path)])
    assert time.perf_counter() - start < 5
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"jf compare: error: cannot reach the MLflow tracking server at {uri} (connection refused)\n"
    )
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # set for compare's client only


def test_a_missing_local_store_is_not_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit):
        compare.main(["--experiment", "tiny"])
    assert capsys.readouterr().err.startswith("jf compare: error: no MLflow store at sqlite:///mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


def test_the_cli_tags_runs_with_what_compare_needs(tmp_path, monkeypatch):
    from jf_lightning.cli import JanusFlowCLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["jf"])
    cli = JanusFlowCLI(args=["-c", str(TINY), '--trainer.logger.init_args.tags={"recipe": "mine", "owner": "me"}'],
                       run=False)  # fmt: skip
    tags = cli.trainer.logger.tags
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags == {"recipe": "mine", "owner": "me", "stage": "PretrainingStage", "ablation": "none",
                    "preset": "tiny", "git_commit": commit, "git_dirty": tags["git_dirty"]}  # fmt: skip
    assert tags["git_dirty"] in ("True", "False")
    assert compare.run_tags(str(TINY), "SFTStage", "B", "ablation-256")["recipe"] == "tiny"


def test_git_state_is_unknown_outside_a_tree_or_without_git(tmp_path, monkeypatch):
    assert compare.git_state(tmp_path) == ("unknown", "unknown")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert compare.git_state(ROOT) == ("unknown", "unknown")


SMALL = """
prepare:
  - class_path: jf_lightning.shapes.prepare.ShapesWorld
    init_args: {out_dir: data/shapes, train_samples: 32, val_samples: 8, image_size: 32, image_after_question: 1.0}
  - class_path: jf_lightning.shapes.prepare.ShapesSiglip
    init_args: {out_dir: data/shapes-siglip, world: data/shapes, steps: 1, batch_size: 8, dense_weight: 1.0}
trainer:
  callbacks:
    - class_path: jf_lightning.callbacks.understanding.UnderstandingAccuracyCallback
      init_args:
        questions: {class_path: jf_lightning.shapes.evaluation.ShapesHeldOutQuestions, init_args: {n_questions: 2}}
        max_new_tokens: 2
"""
FIT = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
       "--data.val_batches=1", "--data.batch_size=4", "--data.num_workers=0", "--trainer.devices=1",
       "--trainer.strategy=auto", "--model.init_args.cooldown_steps=0"]  # fmt: skip


@pytest.fixture
def mlflow_server(tmp_path):
    """A real tracking server on a free loopback port (own store, proxied artifacts); its URI."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
             "--artifacts-destination", str(tmp_path / "art")],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # its own process group, workers too; a throwaway store
        server.wait()


@pytest.mark.slow
def test_two_tiny_runs_on_a_tracking_server_compared(mlflow_server, tmp_path, monkeypatch, capsys):
    from jf_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["jf"])
    (tmp_path / "small.yaml").write_text(SMALL)
    config = ["-c", str(TINY), "-c", "small.yaml"]
    main(["prepare", *config])
    logger = f"--trainer.logger.init_args.tracking_uri={mlflow_server}"
    main(["fit", *config, *FIT, logger])
    # the second run skips validation (cheaper, and a gap in the table) under a recipe tag of its own
    main(["fit", *config, *FIT, logger, "--model.init_args.repa_weight=0", "--trainer.limit_val_batches=0",
          '--trainer.logger.init_args.tags={"recipe": "tiny_norepa"}'])  # fmt: skip
    capsys.readouterr()

    main(["compare", "--experiment", "tiny", "--tracking-uri", mlflow_server])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | run_id | val/und_accuracy | train/loss | val/rf_loss | val/ar_loss |"
    number = r"(\*\*)?-?[\d.e+-]+(\*\*)?"
    assert re.fullmatch(rf"\| tiny \| \w{{8}} \| {number} \| {number} \| {number} \| {number} \|", lines[2])
    assert re.fullmatch(rf"\| tiny_norepa \| \w{{8}} \| - \| {number} \| - \| - \|", lines[3])
    with (tmp_path / "compare" / "table.csv").open() as f:
        assert [row["run"] for row in csv.DictReader(f)] == ["tiny", "tiny_norepa"]
    with Image.open(tmp_path / "compare" / "curves.png") as image:
        assert image.format == "PNG" and image.width >= 800

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    tags = [run.data.tags for run in runs]
    assert [t["recipe"] for t in tags] == ["tiny", "tiny_norepa"]
    for t in tags:
        assert (t["stage"], t["ablation"], t["preset"]) == ("PretrainingStage", "none", "tiny")
        assert re.fullmatch(r"[0-9a-f]{40}", t["git_commit"]) and t["git_dirty"] in ("True", "False")
    assert "config.yaml" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}  # proxied artifacts
