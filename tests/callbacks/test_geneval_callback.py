"""The GenEval callback with the real-image detector (a tiny Mask2Former + tiny CLIP through
transformers) on a subset of GenEval's prompts, in a Trainer with an MLflow logger."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import MLFlowLogger

from jf_lightning.callbacks.ema import EMA
from jf_lightning.callbacks.geneval import GenEvalCallback
from jf_lightning.metrics.geneval import GENEVAL_TASKS, GenEvalMetadataFile
from jf_lightning.metrics.mask2former_detector import Mask2FormerDetector
from tests.callbacks.tiny_stage import TinyData, TinyStage
from tests.metrics.tiny_eval_models import save_tiny_clip, save_tiny_mask2former


@pytest.mark.slow
def test_subset_prompts_subset_logged_under_val_geneval(tmp_path):
    prompts = GenEvalMetadataFile(n_per_task=1)  # the shipped 553, first of each task
    specs = prompts.specs()
    assert [s["tag"] for s in specs] == list(GENEVAL_TASKS)
    favoured = specs[0]["include"][0]["class"]
    detector = Mask2FormerDetector(
        str(save_tiny_mask2former(tmp_path / "m2f", favour=favoured)),
        str(save_tiny_clip(tmp_path / "clip")),
    )
    callback = GenEvalCallback(prompts, detector, steps=1, batch_size=4, grid_images=4)
    logger = MLFlowLogger(
        experiment_name="geneval", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_location=str(tmp_path / "artifacts"),
    )  # fmt: skip
    torch.manual_seed(0)
    stage = TinyStage(preset="tiny", lr=0.1, warmup_steps=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0,
        callbacks=[EMA(decay=0.9), callback], logger=logger, default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(stage, datamodule=TinyData())
    logged = logger.experiment.get_run(logger.run_id).data.metrics
    keys = {f"val/geneval/{t}" for t in (*GENEVAL_TASKS, "overall", "empty", "count_bias")}
    assert keys | {"val/time/geneval"} <= set(logged)
    assert logged["val/geneval/single_object"] == 1.0  # the detector sees the favoured class everywhere
    assert logged["val/geneval/empty"] == 0.0 and logged["val/time/geneval"] > 0
    assert logged["val/geneval/overall"] == pytest.approx(
        sum(logged[f"val/geneval/{t}"] for t in GENEVAL_TASKS) / 6
    )
    artifacts = {a.path for a in logger.experiment.list_artifacts(logger.run_id, "samples")}
    assert artifacts == {"samples/geneval_step_000002.png"}
