"""The throughput callback: a short fit logs samples/s, tokens/s (real and padded), model TFLOP/s and
MFU against the configured peak; the rates agree with the batches' own counts; no MFU on CPU
without a configured peak."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from mlflow import MlflowClient
from torch.utils.data import DataLoader, Dataset

from jf_lightning.callbacks.throughput import PEAK_BF16, Throughput, default_peak_flops
from jf_lightning.callbacks.tracking import BackgroundMLFlowLogger
from jf_lightning.models.flops import FlopModel
from jf_lightning.stages import PretrainingStage
from tests.stages.conftest import tiny_batch

KEYS = ("samples_per_s", "tokens_per_s", "padded_tokens_per_s", "tflops_per_device", "mfu")


class Batches(Dataset):
    def __init__(self, cfg, n: int):
        self.batches = [tiny_batch(cfg, seed=i, batch_index=i, seq_len=200) for i in range(n)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.batches[i]


def fit(tmp_path, callback: Throughput, steps: int = 4) -> tuple[MlflowClient, str, PretrainingStage]:
    torch.manual_seed(0)
    stage = PretrainingStage(preset="tiny", warmup_steps=1)
    data = Batches(stage.model_config, steps)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = BackgroundMLFlowLogger("throughput", tracking_uri=uri, save_dir=str(tmp_path / "runs"))
    trainer = Trainer(max_steps=steps, logger=logger, log_every_n_steps=2, callbacks=[callback], accelerator="cpu",
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(stage, DataLoader(data, batch_size=None))
    return MlflowClient(uri), logger.run_id, stage


def test_a_fit_logs_throughput_and_mfu_against_the_configured_peak(tmp_path):
    client, run_id, stage = fit(tmp_path, Throughput(peak_flops=1e12))
    metrics = client.get_run(run_id).data.metrics
    for key in KEYS:
        assert metrics[f"throughput/{key}"] > 0, key
    assert [m.step for m in client.get_metric_history(run_id, "throughput/mfu")] == [2, 4]
    assert metrics["throughput/mfu"] == pytest.approx(
        metrics["throughput/tflops_per_device"]
    )  # peak 1 TFLOP/s
    # the rates are the batches' counts over one window's time: their ratios are the counts' ratios
    batch = tiny_batch(stage.model_config, seq_len=200)
    samples, real, padded = 4, int((batch.segment_ids > 0).sum()), batch.segment_ids.numel()
    assert metrics["throughput/tokens_per_s"] / metrics["throughput/samples_per_s"] == pytest.approx(
        real / samples
    )
    assert metrics["throughput/padded_tokens_per_s"] / metrics["throughput/tokens_per_s"] == pytest.approx(
        padded / real
    )
    flops = FlopModel.from_model(stage.model).step(batch)["total"]
    per_sample = metrics["throughput/tflops_per_device"] * 1e12 / metrics["throughput/samples_per_s"]
    assert per_sample == pytest.approx(flops / samples, rel=1e-6)


def test_no_mfu_on_cpu_without_a_peak(tmp_path):
    client, run_id, _ = fit(tmp_path, Throughput(), steps=2)
    metrics = client.get_run(run_id).data.metrics
    assert "throughput/samples_per_s" in metrics and "throughput/mfu" not in metrics
    assert default_peak_flops(torch.device("cpu")) is None


def test_the_peak_table_names_specific_models_before_their_family():
    names = [name for name, _ in PEAK_BF16]
    for i, name in enumerate(names):
        assert not any(earlier in name for earlier in names[:i]), name  # "H100" must not shadow "H100 PCIe"
