"""Understanding benchmarks from LLaVA-layout shards, each under its answer rule, logged as val/und/<name>."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from jf_lightning.callbacks.understanding import Benchmark, UnderstandingBenchmarkCallback
from jf_lightning.data.questions import ShardQuestions
from tests.callbacks.tiny_stage import TinyData, TinyStage
from tests.metrics.tiny_eval_models import write_llava_shard as write_shard


@pytest.fixture
def shards(tmp_path):
    vqa = write_shard(tmp_path / "vqa.tar", [
        ("<image>\nHow many circles?", "two", {"answers": ["2"] * 4 + ["3"] * 6, "question_type": "count"}),
        ("<image>\nWhat color?", "red", {}),
        ("<image>\nWhat shape?", "square", {}),
    ])  # fmt: skip
    pope = write_shard(tmp_path / "pope.tar", [
        ("<image>\nIs there a circle?", "yes", {}), ("<image>\nIs there a dog?", "no", {}),
        ("<image>\nIs there a cat?", "no", {}), ("<image>\nIs there a square?", "yes", {}),
    ])  # fmt: skip
    return vqa, pope


def test_shard_questions_read_the_llava_layout(shards):
    qs = ShardQuestions(shards[0]).questions(32)
    assert [q.question for q in qs] == [
        "<image>\nHow many circles?",
        "<image>\nWhat color?",
        "<image>\nWhat shape?",
    ]
    assert qs[0].references == ("2",) * 4 + ("3",) * 6 and qs[1].references == ("red",)
    assert qs[0].question_type == "count" and qs[0].image.size == (20, 24)
    assert len(ShardQuestions(shards[0], limit=2).questions(32)) == 2


def _validate(tmp_path, callback):
    torch.manual_seed(0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, limit_val_batches=1, callbacks=[callback], logger=False,
        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.validate(TinyStage(preset="tiny"), datamodule=TinyData(), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_each_benchmark_under_its_rule(tmp_path, shards, monkeypatch):
    callback = UnderstandingBenchmarkCallback(
        [Benchmark("vqav2", ShardQuestions(shards[0])), Benchmark("pope", ShardQuestions(shards[1]), "pope")],
        max_new_tokens=4,
    )
    given = {"How many circles?": "two", "What color?": "Red.", "What shape?": "circle",
             "Is there a circle?": "Yes, there is.", "Is there a dog?": "yes", "Is there a cat?": "No.",
             "Is there a square?": "There is not."}  # fmt: skip

    def oracle(trainer, module, templater, questions):
        rows = [templater.encode(" " + given[q.question.split("\n")[1]]) + [templater.eos] for q in questions]
        return torch.tensor([r + [templater.eos] * (12 - len(r)) for r in rows])

    monkeypatch.setattr(callback, "answer_ids", oracle)
    scores = _validate(tmp_path, callback)
    # "two" against 4 x "2" and 6 x "3": every leave-one-out subset holds >= 3 "2"s (1.0); red; not circle
    assert scores["val/und/vqav2"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    # POPE: TP 1 (circle), FP 1 (dog), TN 1 (cat), FN 1 (square)
    assert scores["val/und/pope"] == 0.5 and scores["val/und/pope/f1"] == 0.5
    assert scores["val/und/pope/yes_ratio"] == 0.5 and scores["val/time/und"] > 0


def test_real_answers_from_a_tiny_model(tmp_path, shards):
    callback = UnderstandingBenchmarkCallback([Benchmark("gqa", ShardQuestions(shards[0]))], max_new_tokens=2)
    scores = _validate(tmp_path, callback)
    assert 0.0 <= scores["val/und/gqa"] <= 1.0 and "val/time/und" in scores
    with pytest.raises(ValueError, match="distinct names"):
        UnderstandingBenchmarkCallback([Benchmark("a", ShardQuestions(shards[0]))] * 2)
