"""``jf eval und`` on a tiny checkpoint: answers and scores files, the same over two processes, and the scores
in an MLflow run."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from jf_lightning.commands.eval_und import main
from tests.metrics.tiny_eval_models import write_llava_shard


def test_answers_and_scores(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    ckpt, _ = tiny_checkpoint
    shard = write_llava_shard(tmp_path / "pope.tar", [
        ("<image>\nIs there a circle?", "yes", {}), ("<image>\nIs there a dog?", "no", {}),
        ("<image>\nIs there a cat?", "no", {"question_type": "adversarial"}),
    ])  # fmt: skip
    args = [
        "--ckpt",
        str(ckpt),
        "--shards",
        shard,
        "--name",
        "pope",
        "--rule",
        "pope",
        "--max-new-tokens",
        "2",
    ]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main([*args, "--out", str(tmp_path / "one.jsonl"), "--summary", str(tmp_path / "one.json"),
          "--experiment", "und", "--tracking-uri", uri, "--step", "3"])  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [r["references"] for r in rows] == [["yes"], ["no"], ["no"]] and rows[2][
        "question_type"
    ] == "adversarial"
    summary = json.loads((tmp_path / "one.json").read_text())
    assert set(summary) == {"benchmark", "rule", "questions", "pope", "pope/precision", "pope/recall", "pope/f1",
                            "pope/yes_ratio"}  # fmt: skip
    printed = capsys.readouterr()
    assert json.loads(printed.out) == summary
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("und").experiment_id])
    assert printed.err.strip().endswith(f"logged 5 metrics into MLflow run {run.info.run_id}")
    assert run.data.metrics == {f"val/und/{k}": v for k, v in summary.items() if k.startswith("pope")}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/und/pope/f1")] == [3]
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        main(
            [
                *args,
                "--batch-size",
                "1",
                "--out",
                str(tmp_path / "two.jsonl"),
                "--summary",
                str(tmp_path / "two.json"),
            ]
        )
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert json.loads((tmp_path / "two.json").read_text()) == summary
