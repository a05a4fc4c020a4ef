"""Evaluation callbacks in a real tiny Trainer, oracle checks of the scores, and the rank-split logic."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import MLFlowLogger
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from jf_lightning.callbacks.ema import EMA, averaged_weights
from jf_lightning.callbacks.evaluation import evaluation_mode, rank_share, templater_for
from jf_lightning.callbacks.geneval import GenEvalCallback, objects_asked
from jf_lightning.callbacks.sample_grid import SampleGridCallback
from jf_lightning.callbacks.understanding import UnderstandingAccuracyCallback
from jf_lightning.inference.images import caption_tile, from_pil, make_grid, to_uint8
from jf_lightning.metrics.geneval import GENEVAL_TASKS
from jf_lightning.models.config import tiny
from jf_lightning.shapes import geneval_specs, world
from jf_lightning.shapes.detector import ShapesDetector
from jf_lightning.shapes.evaluation import ShapesGenEvalPrompts, ShapesHeldOutQuestions
from jf_lightning.shapes.tokenizer import build_shapes_tokenizer
from jf_lightning.stages.base import JanusFlowStage

GENEVAL_KEYS = {f"val/shapes_geneval/{t}" for t in (*GENEVAL_TASKS, "overall")}


def shapes_geneval(n_per_task: int, **kwargs) -> GenEvalCallback:
    """GenEval on the shapes world, as tiny.yaml configures it."""
    prompts = ShapesGenEvalPrompts(n_per_task)
    return GenEvalCallback(prompts, ShapesDetector(), prefix="val/shapes_geneval", **kwargs)


def shapes_understanding(n_questions: int, **kwargs) -> UnderstandingAccuracyCallback:
    return UnderstandingAccuracyCallback(ShapesHeldOutQuestions(n_questions), **kwargs)


class TinyStage(JanusFlowStage):
    """The real stage (model built in ``configure_model``, freeze policy, EMA-ready) on stand-in
    batches: the callbacks only need ``.model``."""

    def training_step(self, batch, batch_idx):
        return self.model.vision_gen_dec_aligner.weight.square().mean()  # moves weights: EMA != live

    def validation_step(self, batch, batch_idx):
        pass


def _stage() -> TinyStage:
    torch.manual_seed(0)
    stage = TinyStage(preset="tiny", lr=0.1, warmup_steps=1)
    stage.configure_model()
    return stage


class TinyData(pl.LightningDataModule):
    """The datamodule contract the callbacks rely on: ``.tokenizer`` and ``.template``."""

    def __init__(self, template="pretrain"):
        super().__init__()
        self.tokenizer, self.template = build_shapes_tokenizer(), template

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1)


def _trainer(tmp_path, callbacks, logger=False, max_steps=2) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


# --------------------------------------------------------------------------------------- in a real fit


@pytest.mark.slow
def test_callbacks_log_metrics_and_sample_grids_during_fit(tmp_path):
    # the sqlite store real runs use (MLflow's file store cannot hold both "val/und_accuracy" and
    # "val/und_accuracy/color": the first is a file, the second needs it to be a directory)
    logger = MLFlowLogger(
        experiment_name="callbacks",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_location=str(tmp_path / "artifacts"),
    )
    grid = SampleGridCallback(
        every_n_steps=1, prompts=["a photo of a red circle", "a photo of two squares"], seeds=[0], steps=1
    )
    geneval = shapes_geneval(1, steps=1, batch_size=4)
    und = shapes_understanding(4, max_new_tokens=2, batch_size=3)
    stage = _stage()
    trainer = _trainer(tmp_path, [EMA(decay=0.9), grid, geneval, und], logger=logger)
    trainer.fit(stage, datamodule=TinyData())

    metrics = trainer.callback_metrics
    und_keys = {"val/und_accuracy"} | {k for k in metrics if k.startswith("val/und_accuracy/")}
    assert GENEVAL_KEYS <= set(metrics) and len(und_keys) >= 2
    for key in GENEVAL_KEYS | und_keys:
        assert 0.0 <= float(metrics[key]) <= 1.0, key
    logged = logger.experiment.get_run(logger.run_id).data.metrics
    assert GENEVAL_KEYS | {"val/und_accuracy"} <= set(logged)

    # one grid per optimizer step (step 2 is also the end of training: not drawn twice)
    assert sorted(p.name for p in grid.dirpath.iterdir()) == ["step_000001.png", "step_000002.png"]
    assert grid.dirpath == tmp_path / logger.experiment_id / logger.run_id / "samples"  # this run's own
    artifacts = {a.path for a in logger.experiment.list_artifacts(logger.run_id, "samples")}
    assert artifacts == {"samples/step_000001.png", "samples/step_000002.png"}
    with Image.open(grid.dirpath / "step_000002.png") as png:
        assert png.height > png.width > 32  # a column of two captioned tiles
    assert stage.training  # modes restored after sampling


def test_sample_grid_draws_the_trajectory_beside_the_grid(tmp_path):
    grid = SampleGridCallback(
        every_n_steps=100, prompts=["a photo of a circle", "a photo of a square"], seeds=[5, 6], steps=3,
        trajectory_columns=6, captions=False,
    )
    trainer = _trainer(tmp_path, [grid], max_steps=1)
    trainer.fit(_stage(), datamodule=TinyData())
    assert sorted(p.name for p in grid.dirpath.iterdir()) == ["step_000001.png", "trajectory_000001.png"]
    with Image.open(grid.dirpath / "trajectory_000001.png") as png:
        # 3 steps have 4 points (noise, two steps, the image) x 2 prompts of 32 px, 2 px padding
        assert png.size == (4 * 32 + 5 * 2, 2 * 32 + 3 * 2)


def test_sample_grid_refuses_a_one_column_trajectory():
    with pytest.raises(ValueError, match="trajectory_columns=1"):
        SampleGridCallback(steps=3, trajectory_columns=1)


def test_sample_grid_is_drawn_at_the_end_of_training_off_the_schedule(tmp_path):
    grid = SampleGridCallback(every_n_steps=100, prompts=["a photo of a circle"], seeds=[5], steps=1)
    trainer = _trainer(tmp_path, [grid], max_steps=1)
    trainer.fit(_stage(), datamodule=TinyData())
    assert [p.name for p in grid.dirpath.iterdir()] == ["step_000001.png"]
    assert grid.dirpath.parent == tmp_path  # no logger: under the root dir


# ----------------------------------------------------------------------------------------- oracles


def _oracle_images(specs, size=32, blank=False) -> torch.Tensor:
    """Ground-truth renders of the specs (or white canvases), (N, 3, size, size) uint8."""
    images = []
    for i, spec in enumerate(specs):
        scene = world.Scene() if blank else geneval_specs.scene_for_spec(spec, np.random.default_rng(i))
        images.append(world.render_scene(scene, size))
    return from_pil(images)


def _validate(tmp_path, callback) -> dict[str, float]:
    trainer = _trainer(tmp_path, [callback])
    trainer.validate(_stage(), datamodule=TinyData(), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("blank", [False, True])
def test_geneval_scores_ground_truth_renders_high_and_blank_images_zero_and_empty(tmp_path, monkeypatch, blank):
    callback = shapes_geneval(4)
    monkeypatch.setattr(
        callback, "generate", lambda trainer, module, specs, seeds: _oracle_images(specs, blank=blank)
    )
    scores = _validate(tmp_path, callback)
    assert GENEVAL_KEYS <= set(scores)
    asked = [objects_asked(spec) for spec in callback.specs]
    if blank:
        assert scores["val/shapes_geneval/overall"] == 0.0
        assert scores["val/shapes_geneval/empty"] == 1.0
        assert scores["val/shapes_geneval/count_bias"] == pytest.approx(-sum(asked) / len(asked))
    else:
        assert scores["val/shapes_geneval/overall"] >= 0.98
        assert scores["val/shapes_geneval/empty"] == 0.0
        assert abs(scores["val/shapes_geneval/count_bias"]) < 0.05  # renders hold what was asked


def test_geneval_resizes_before_detection(tmp_path, monkeypatch):
    callback = shapes_geneval(2, image_size=96)
    seen = []
    monkeypatch.setattr(callback, "generate", lambda trainer, module, specs, seeds: _oracle_images(specs))
    monkeypatch.setattr(callback.detector, "detect", lambda img: seen.append(img.shape) or [])
    _validate(tmp_path, callback)
    assert seen and set(seen) == {(96, 96, 3)}


def _oracle_answer_ids(wrong=False):
    def answer_ids(trainer, module, templater, questions):
        rows = []
        for q in questions:
            ids = templater.encode(" " + ("no" if wrong else q.answer)) + [templater.eos]
            rows.append(ids + [templater.eos] * (8 - len(ids)))
        return torch.tensor(rows)

    return answer_ids


@pytest.mark.parametrize("wrong", [False, True])
def test_understanding_scores_an_oracle_one_and_a_constant_answer_lower(tmp_path, monkeypatch, wrong):
    callback = shapes_understanding(24)
    monkeypatch.setattr(callback, "answer_ids", _oracle_answer_ids(wrong))
    scores = _validate(tmp_path, callback)
    per_type = {k: v for k, v in scores.items() if k.startswith("val/und_accuracy/")}
    assert set(per_type) == {f"val/und_accuracy/{t}" for t in ("color", "count", "shape", "position")}
    if wrong:
        assert scores["val/und_accuracy"] < 0.5
    else:
        assert scores["val/und_accuracy"] == 1.0 and set(per_type.values()) == {1.0}


# ------------------------------------------------------------------------------ ranks and weights


class _ThreadGroup:
    """A process group made of threads: ``all_gather`` stacks every rank's tensor, as DDP's does."""

    def __init__(self, world_size):
        self.barrier, self.slots = threading.Barrier(world_size), [None] * world_size

    def strategy(self, rank):
        def all_gather(tensor):
            self.slots[rank] = tensor
            self.barrier.wait()
            out = torch.stack(self.slots)
            self.barrier.wait()
            return out

        return SimpleNamespace(all_gather=all_gather, root_device=torch.device("cpu"))


def _evaluate_on_ranks(callback, world_size) -> list[dict[str, float]]:
    group, results = _ThreadGroup(world_size), [None] * world_size
    data = TinyData()

    def run(rank):
        trainer = SimpleNamespace(
            global_rank=rank, world_size=world_size, strategy=group.strategy(rank), datamodule=data
        )
        module = torch.nn.Module()
        module.model = SimpleNamespace(cfg=tiny())
        results[rank] = callback.evaluate(trainer, module)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_rank_shares_are_disjoint_equal_and_complete():
    for n, world_size in [(7, 1), (7, 2), (7, 3), (2, 4)]:
        shares = [rank_share(n, r, world_size) for r in range(world_size)]
        assert len({len(s) for s in shares}) == 1  # same work on every rank (FSDP lockstep)
        real = sorted(i for s in shares for i in s if i >= 0)
        assert real == list(range(n))


def test_scores_do_not_depend_on_the_number_of_ranks(monkeypatch):
    geneval = shapes_geneval(3)
    # right images for half the specs, blank for the rest: a score that depends on the order
    monkeypatch.setattr(
        geneval,
        "generate",
        lambda trainer, module, specs, seeds: torch.cat(
            [_oracle_images([s], blank=seed % 2 == 1) for s, seed in zip(specs, seeds)]
        ),
    )
    und = shapes_understanding(7)
    monkeypatch.setattr(und, "answer_ids", _oracle_answer_ids())
    single = (_evaluate_on_ranks(geneval, 1)[0], _evaluate_on_ranks(und, 1)[0])
    assert 0.2 < single[0]["overall"] < 0.8 and single[1]["und_accuracy"] == 1.0
    for world_size in (2, 3):
        assert all(r == single[0] for r in _evaluate_on_ranks(geneval, world_size))
        assert all(r == single[1] for r in _evaluate_on_ranks(und, world_size))


def test_prompts_follow_the_datamodules_template_unless_overridden():
    stage = _stage()
    for data_style, forced, expected in [
        ("sft", None, "sft"),
        ("pretrain", None, "pretrain"),
        ("pretrain", "sft", "sft"),
    ]:
        trainer = SimpleNamespace(datamodule=TinyData(template=data_style))
        templater = templater_for(trainer, stage, forced)
        assert templater.style == expected
        assert templater.num_und_tokens == stage.model.cfg.num_und_tokens
        assert templater.num_gen_tokens == stage.model.cfg.num_gen_tokens


def test_evaluation_mode_restores_each_submodules_mode():
    stage = _stage().train()
    stage.model.vision_gen_enc_model.eval()  # a frozen part a stage keeps in eval mode
    with evaluation_mode(stage):
        assert not any(m.training for m in stage.modules()) and not torch.is_grad_enabled()
    assert stage.training and not stage.model.vision_gen_enc_model.training and torch.is_grad_enabled()


def test_averaged_weights_swaps_the_ema_in_and_back():
    stage, ema = _stage(), EMA(decay=0.5)
    trainer = SimpleNamespace(callbacks=[ema], strategy=SimpleNamespace(root_device=torch.device("cpu")))
    ema.setup(trainer, stage, "fit")
    live = stage.model.vision_gen_dec_aligner.weight
    before = live.detach().clone()
    with torch.no_grad():
        ema.averages["model.vision_gen_dec_aligner.weight"].fill_(0.25)
    with averaged_weights(trainer, stage):
        assert live.eq(0.25).all()
    assert torch.equal(live, before)


# ------------------------------------------------------------------------------------ image helpers


def test_to_uint8_and_grid_layout():
    pixels = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(3, 3, 2, 2)
    assert to_uint8(pixels)[0, 0].flatten().tolist() == [0, 128, 255, 255]
    images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    assert make_grid(images, nrow=3, padding=2).size == (3 * 10 + 2, 2 * 10 + 2)
    tile = caption_tile(images[0], "a photo of a red circle left of a blue square", min_size=64)
    assert tile.shape[0] == 3 and tile.shape[2] == 64 and tile.shape[1] > 64
    assert tile[:, 64:].float().mean() < 255  # the caption band holds some ink
