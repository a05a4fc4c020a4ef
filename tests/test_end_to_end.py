"""The embedded default, end to end: ``prepare`` then ``fit -c experiments/tiny.yaml`` for a few steps
on a small shapes world, then ``validate`` from its checkpoint; the MLflow store holds both runs with
their metrics, params and the config artifact."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.data.conftest import png, write_shard
from tests.data.test_hostile import hostile_und as hostile_records
from tests.data.test_hostile import truncated

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
# A smaller world and SigLIP and cheaper evaluation callbacks than tiny.yaml's (a second -c replaces the
# prepare and trainer.callbacks lists); the autoguide snapshot at step 2 is used by the validation at
# step 3 and restored by validate.
SMALL = """
prepare:
  - class_path: jf_lightning.shapes.prepare.ShapesWorld
    init_args: {out_dir: data/shapes, train_samples: 64, val_samples: 16, image_size: 32, image_after_question: 1.0,
                question_mix: {caption: 1, color: 3, count: 1, shape: 1, position: 1}}
  - class_path: jf_lightning.shapes.prepare.ShapesSiglip
    init_args: {out_dir: data/shapes-siglip, world: data/shapes, steps: 2, batch_size: 8, dense_weight: 1.0}
trainer:
  callbacks:
    - class_path: jf_lightning.callbacks.autoguidance.Autoguidance
      init_args: {snapshot_step: 2, weight: 2.0}
    - class_path: jf_lightning.callbacks.sample_grid.SampleGridCallback
      init_args: {every_n_steps: 1000, prompts: [a photo of a red circle], seeds: [0], steps: 2}
    - class_path: jf_lightning.callbacks.understanding.UnderstandingAccuracyCallback
      init_args:
        questions: {class_path: jf_lightning.shapes.evaluation.ShapesHeldOutQuestions, init_args: {n_questions: 2}}
        max_new_tokens: 2
    - class_path: jf_lightning.callbacks.geneval.GenEvalCallback
      init_args:
        prompts: {class_path: jf_lightning.shapes.evaluation.ShapesGenEvalPrompts, init_args: {n_per_task: 1}}
        detector: jf_lightning.shapes.detector.ShapesDetector
        prefix: val/shapes_geneval
        steps: 2
"""
OVERRIDES = [
    "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.log_every_n_steps=1",
    "--data.val_batches=1", "--checkpoint.every_n_train_steps=2",
    "--trainer.devices=1", "--trainer.strategy=auto",  # tiny.yaml trains on 2 DDP processes; that test is below
    "--model.init_args.cooldown_steps=2",  # tiny.yaml's last 800 of 3,300 steps, scaled to these 3
]  # fmt: skip
# every_n_train_steps 2 does not divide max_steps 3, like the demo's 500 and 2,800: last.ckpt must still
# hold step 3, or validate below would not reproduce the fit run's last validation.


def jf(cwd: Path, *args: str, returncode: int = 0) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "jf_lightning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == returncode, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_fit_then_validate_logs_to_mlflow(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    # fit never writes its inputs: it names the missing one and the command that makes it, in one line
    out = jf(tmp_path, "fit", "-c", str(TINY), "-c", "small.yaml", *OVERRIDES, returncode=1)
    assert out.strip().splitlines()[-1] == (
        f"jf_lightning: error: data/shapes is missing (ShapesWorld of the config's `prepare` list): make it "
        f"first with `python -m jf_lightning prepare -c {TINY} -c small.yaml`"
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "data").exists()
    jf(tmp_path, "prepare", "-c", str(TINY), "-c", "small.yaml")
    assert (tmp_path / "data" / "shapes" / "manifest.json").is_file()
    assert (tmp_path / "data" / "shapes-siglip" / "pretraining.json").is_file()  # and the SigLIP it loads
    out = jf(tmp_path, "fit", "-c", str(TINY), "-c", "small.yaml", *OVERRIDES)
    summary = next(line for line in out.splitlines() if line.startswith("MLflow run "))
    run_id = re.search(r"MLflow run (\w+)", summary).group(1)
    ckpt = re.search(r"checkpoint: (\S+)", summary).group(1)
    assert Path(ckpt).is_file() and Path(ckpt).name == "last.ckpt"
    assert Path(ckpt).parent.parent == tmp_path / "mlruns" / "1" / run_id  # beside MLflow's artifacts/
    assert re.search(r"fit [\w ]+: 3 steps in [\w ]+ \(\d+ ms/step\), validation", summary), summary

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    metrics = run.data.metrics
    for key in ("train/loss", "train/ar_loss", "train/rf_loss", "train/repa_loss", "val/ar_loss", "val/rf_loss",
                "val/repa_loss", "train/lr/llm", "train/lr/adapters", "val/und_accuracy", "val/shapes_geneval/overall",
                "time/fit_s", "time/validation_s", "time/train_step_ms"):  # fmt: skip
        assert key in metrics, key
    assert len(client.get_metric_history(run_id, "train/loss")) == 3
    assert run.data.params["model.class_path"] == "jf_lightning.stages.PretrainingStage"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "config.yaml" in artifacts and "samples" in artifacts
    config = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    assert "max_steps: 3" in config

    # evaluating a checkpoint on more prompts (README): the override reaches the last callback, GenEval
    jf(tmp_path, "validate", "-c", str(TINY), "-c", "small.yaml", *OVERRIDES, f"--ckpt_path={ckpt}",
       "--trainer.callbacks.init_args.prompts.init_args.n_per_task=2")  # fmt: skip
    runs = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and runs[0].info.run_id != run_id
    # the checkpoint restores the weights fit validated with (the EMA): same noise, same losses
    for key in ("val/rf_loss", "val/ar_loss", "val/repa_loss"):
        assert runs[0].data.metrics[key] == pytest.approx(metrics[key], rel=1e-5), key
    config = Path(client.download_artifacts(runs[0].info.run_id, "config.yaml", str(tmp_path / "v"))).read_text()
    assert "n_per_task: 2" in config


@pytest.mark.slow
def test_fit_on_two_ddp_processes_through_hostile_shards(tmp_path):
    # The same config on 2 CPU processes (DDP over gloo), with a hostile shard beside each real source
    # of images: one MLflow run, logged by rank 0 alone, that finishes and holds the skip counts.
    (tmp_path / "small.yaml").write_text(SMALL)
    jf(tmp_path, "prepare", "-c", str(TINY), "-c", "small.yaml")
    marker = tmp_path / "unpickled"
    (tmp_path / "hostile").mkdir()
    hostile_und = write_shard(tmp_path / "hostile" / "und-0.tar", hostile_records(png, marker))
    blue = [{"__key__": f"g{i}", "png": png((30, 70, 230), (40, 30)), "txt": b"a blue square"} for i in range(3)]
    hostile_gen = truncated(tmp_path / "hostile" / "gen-0.tar", blue, write_shard, keep=0.55)  # 2 records, then cut
    sources = [f"{{urls: data/shapes/{kind}/train-*.tar, kind: {kind}}}" for kind in ("und", "gen", "text")]
    sources += [f"{{urls: {hostile_und}, kind: und}}", f"{{urls: {hostile_gen}, kind: gen}}"]
    (tmp_path / "hostile.yaml").write_text("data:\n  sources:\n" + "".join(f"    - {s}\n" for s in sources))
    overrides = [o for o in OVERRIDES if not o.startswith(("--data.val_batches", "--trainer.devices", "--trainer.strategy"))]
    out = jf(tmp_path, "fit", "-c", str(TINY), "-c", "small.yaml", "-c", "hostile.yaml", *overrides,
             "--data.val_batches=2", "--trainer.strategy=ddp", "--trainer.devices=2")  # fmt: skip
    assert out.count("MLflow run ") == 1, out[-3000:]
    run_id = re.search(r"MLflow run (\w+)", out).group(1)
    assert Path(re.search(r"checkpoint: (\S+)", out).group(1)).is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in ("val/rf_loss", "val/und_accuracy", "val/shapes_geneval/overall"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run_id, "train/loss")) == 3
    skipped = {k.removeprefix("data/skipped/"): v for k, v in run.data.metrics.items() if k.startswith("data/skipped/")}
    for reason in ("bad_image", "bad_json", "missing_member", "bad_text", "empty_text", "too_long", "truncated_shard"):
        assert skipped.get(reason, 0) >= 1, (reason, skipped)
    assert not marker.exists()  # the hostile shard's pickle members never ran
