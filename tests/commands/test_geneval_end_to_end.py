"""generate -> GenEval folder -> Mask2Former + CLIP -> GenEval's JSONL and summary, on tiny models."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from jf_lightning.commands import eval_geneval, generate
from jf_lightning.metrics.geneval import (
    GENEVAL_METADATA,
    GENEVAL_TASKS,
    load_geneval_metadata,
    summary_scores,
)
from tests.metrics.tiny_eval_models import save_tiny_clip, save_tiny_mask2former


@pytest.mark.slow
def test_generate_then_score(tiny_checkpoint, tmp_path, capsys):
    ckpt, _ = tiny_checkpoint
    specs = load_geneval_metadata(GENEVAL_METADATA)
    picked = [next(s for s in specs if s["tag"] == tag) for tag in GENEVAL_TASKS]  # one prompt per task
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(s) + "\n" for s in picked))
    favoured = picked[0]["include"][0]["class"]  # the single-object prompt's class
    detector = save_tiny_mask2former(tmp_path / "m2f", favour=favoured, size=32)
    clip = save_tiny_clip(tmp_path / "clip")
    out = tmp_path / "images"
    generate.main(["--ckpt", str(ckpt), "--prompts", str(tmp_path / "meta.jsonl"), "--out", str(out),
                   "--n", "2", "--steps", "2", "--batch-size", "4"])  # fmt: skip
    capsys.readouterr()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    eval_geneval.main(["--images", str(out), "--detector", str(detector), "--clip", str(clip),
                       "--experiment", "geneval", "--tracking-uri", uri])  # fmt: skip
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["filename"] for r in rows] == [
        str(out / f"{i:05d}" / "samples" / f"{k:04d}.png") for i in range(6) for k in range(2)
    ]
    assert set(rows[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert [json.loads(r["metadata"]) for r in rows[::2]] == picked
    # the detector sees the favoured class everywhere (with masks and boxes) and nothing else above 0.3
    assert all(r["correct"] for r in rows[:2])
    assert favoured in json.loads(rows[0]["details"])
    assert not any(r["correct"] for r in rows[2:] if favoured not in r["prompt"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary == summary_scores(rows) and summary["images"] == 12 and summary["prompts"] == 6
    assert list(summary["tasks"]) == [*GENEVAL_TASKS, "overall"]
    assert summary["tasks"]["single_object"] == 1.0
    assert f"overall score (mean over tasks): {summary['tasks']['overall']:.5f}" in printed
    (run,) = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("geneval").experiment_id]
    )
    assert run.data.metrics == {f"val/geneval/{task}": score for task, score in summary["tasks"].items()}
