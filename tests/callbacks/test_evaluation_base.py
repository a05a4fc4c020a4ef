"""The evaluation callbacks' shared machinery: cadence, EMA weights, timing, logging, grids, rank split."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from jf_lightning.callbacks.ema import EMA
from jf_lightning.callbacks.evaluation import EvaluationCallback
from jf_lightning.callbacks.generated_images import GeneratedImagesCallback, ImageScorer


class Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return (self.layer(batch[0]) - 5).square().mean()  # moves the weight: EMA != live

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    return DataLoader(TensorDataset(torch.ones(8, 2)), batch_size=1)


def _trainer(tmp_path, callbacks, max_steps=4, val_every=None):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, limit_val_batches=1, num_sanity_val_steps=0,
        val_check_interval=val_every or max_steps, callbacks=callbacks, logger=CSVLogger(tmp_path),
        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip


class WeightProbe(EvaluationCallback):
    """Reports the weight it sees, the mode and the steps it ran at."""

    name = "probe"

    def __init__(self, every_n_steps=None):
        super().__init__(every_n_steps)
        self.seen: list[tuple[int, float, bool, bool]] = []

    def evaluate(self, trainer, pl_module):
        w = pl_module.layer.weight.detach().clone()
        self.seen.append((trainer.global_step, w.sum().item(), pl_module.training, torch.is_grad_enabled()))
        return {"val/probe": w.sum().item()}


def test_runs_on_its_own_cadence_with_the_ema_weights_and_logs_its_time(tmp_path):
    ema, probe = EMA(decay=0.5), WeightProbe(every_n_steps=2)
    module = Linear()
    trainer = _trainer(tmp_path, [ema, probe], max_steps=6, val_every=3)
    trainer.fit(module, _loader(), _loader())
    assert [s for s, *_ in probe.seen] == [2, 4, 6]  # not at the validations (steps 3, 6)
    assert all(not training and not grad for *_, training, grad in probe.seen)
    live = module.layer.weight.sum().item()  # the EMA was copied in at train end: compare with the average
    assert probe.seen[-1][1] == pytest.approx(
        sum(a.sum().item() for n, a in ema.averages.items() if "weight" in n)
    )
    assert probe.seen[-1][1] == pytest.approx(live)
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    header = metrics.splitlines()[0].split(",")
    assert "val/probe" in header and "val/time/probe" in header


def test_runs_at_every_validation_without_a_cadence(tmp_path):
    probe = WeightProbe()
    trainer = _trainer(tmp_path, [probe], max_steps=4, val_every=2)
    trainer.fit(Linear(), _loader(), _loader())
    assert [s for s, *_ in probe.seen] == [2, 4]
    assert "val/time/probe" in trainer.callback_metrics
    # validate trains nothing: a callback on a training cadence scores there too
    probe_n = WeightProbe(every_n_steps=100)
    results = _trainer(tmp_path, [probe_n]).validate(Linear(), _loader(), verbose=False)
    assert "val/probe" in results[0] and len(probe_n.seen) == 1


class Recorder(ImageScorer):
    """Counts the real items it is fed and reports their mean pixel (padding excluded)."""

    def reset(self):
        self.index, self.means = [], []

    def update(self, images, index):
        for img, i in zip(images, index, strict=True):
            if i >= 0:
                self.index.append(i)
                self.means.append(img.float().mean().item())

    def compute(self, trainer):
        return {"val/recorded": float(len(self.index)), "val/mean_pixel": sum(self.means) / len(self.means)}


def _seeded_images(trainer, pl_module, prompts, seeds):
    return torch.stack([torch.full((3, 8, 8), s % 256, dtype=torch.uint8) for s in seeds])  # (b, 3, 8, 8)


def test_generated_images_reach_every_scorer_once_and_the_grid(tmp_path, monkeypatch):
    recorder = Recorder()
    callback = GeneratedImagesCallback(
        [f"prompt {i}" for i in range(7)], [recorder], seed=10, batch_size=3, grid_images=5
    )
    callback.name = "images"
    monkeypatch.setattr(callback, "generate", _seeded_images)
    results = _trainer(tmp_path, [callback]).validate(Linear(), _loader(), verbose=False)[0]
    assert sorted(recorder.index) == list(range(7))
    assert results["val/recorded"] == 7 and results["val/mean_pixel"] == pytest.approx(13)  # seeds 10..16
    grids = list(tmp_path.rglob("samples/images_step_000000.png"))
    assert len(grids) == 1
