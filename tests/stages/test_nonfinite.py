"""Non-finite steps: skipped (weights and EMA unchanged) and counted; too many in a row stop the run with
one line naming the term and step; no checkpoint holds a NaN; finite runs are unchanged."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from jf_lightning.callbacks.atomic_checkpoint import AtomicCheckpointIO
from jf_lightning.callbacks.ema import EMA
from jf_lightning.inputs import UserInputError
from jf_lightning.stages import AdaptationStage
from tests.stages.conftest import built, tiny_batch


class Record(Callback):
    """After every batch: the step, the live trainable weights, the EMA averages, the skip count."""

    def __init__(self, ema: EMA):
        self.ema, self.rows = ema, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        live = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        averages = {n: a.clone() for n, a in self.ema.averages.items()}
        skipped = trainer.callback_metrics.get("train/skipped_nonfinite")
        self.rows.append((trainer.global_step, live, averages, None if skipped is None else float(skipped)))


def _fit(root, module, steps: int, nan_steps=(), callbacks=(), **kwargs) -> Record:
    """Fit ``module`` for ``steps`` batches; the losses of the steps in ``nan_steps`` turn NaN (rf_loss)."""
    compute = module.compute_losses

    def compute_losses(batch, generator=None):
        losses = compute(batch, generator)
        if module.training and module.trainer.global_step in nan_steps:
            nan = torch.tensor(float("nan"))
            losses["rf_loss"], losses["loss"] = losses["rf_loss"] * nan, losses["loss"] * nan
        return losses

    module.compute_losses = compute_losses
    ema = EMA(decay=0.5)
    record = Record(ema)
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[ema, record, *callbacks], default_root_dir=root,
        gradient_clip_val=1.0, **kwargs,
    )  # fmt: skip
    batches = [tiny_batch(module.model_config, seed=i, batch_index=i) for i in range(steps)]
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return record


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_nonfinite_loss_skips_the_step_and_counts_it(tmp_path):
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    rows = _fit(tmp_path, module, steps=4, nan_steps=(1,), enable_checkpointing=False).rows
    assert [r[0] for r in rows] == [1, 2, 3, 4]  # Lightning counts the skipped step
    assert [r[3] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    (_, live0, avg0, _), (_, live1, avg1, _), (_, live2, avg2, _) = rows[:3]
    assert _equal(live0, live1) and _equal(avg0, avg1)  # nothing moved on the skipped step
    assert not _equal(live1, live2) and not _equal(avg1, avg2)  # the next finite step trains again
    assert all(torch.isfinite(t).all() for t in rows[-1][1].values())
    assert module.nonfinite.in_row == 0


def test_too_many_in_a_row_stop_with_one_line_and_leave_a_finite_checkpoint(tmp_path):
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1, max_nonfinite_steps=3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=0)
    with pytest.raises(UserInputError) as info:
        _fit(
            tmp_path,
            module,
            steps=8,
            nan_steps=range(2, 8),
            callbacks=[checkpoint],
            plugins=[AtomicCheckpointIO()],
        )
    message = str(info.value)
    assert (
        "\n" not in message
        and "rf_loss" in message
        and "step 4" in message
        and "3 optimizer steps" in message
    )
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4  # checkpoints were written after the first NaN, and hold none
    for key in ("state_dict", "current_model_state"):
        assert all(torch.isfinite(t).all() for t in saved[key].values() if t.is_floating_point()), key


def test_a_nonfinite_gradient_norm_is_named(tmp_path):
    class InfGradient(Callback):
        def on_after_backward(self, trainer, pl_module):
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")

    module = built(AdaptationStage, lr=1e-2, warmup_steps=1, max_nonfinite_steps=1)
    with pytest.raises(UserInputError, match="^gradient norm not finite at step 0: 1 optimizer steps"):
        _fit(tmp_path, module, steps=2, callbacks=[InfGradient()], enable_checkpointing=False)


def test_an_absurd_learning_rate_stops_the_run(tmp_path):
    module = built(AdaptationStage, lr=1e30, warmup_steps=1, max_nonfinite_steps=2)
    with pytest.raises(UserInputError, match="not finite at step"):
        _fit(tmp_path, module, steps=8, enable_checkpointing=False)
    assert all(torch.isfinite(p).all() for p in module.parameters())


class Unguarded(AdaptationStage):
    """The stage as it was before the guard: no check before the optimizer step."""

    on_before_optimizer_step = LightningModule.on_before_optimizer_step


def test_finite_runs_are_unchanged(tmp_path):
    guarded, unguarded = (built(cls, lr=1e-2, warmup_steps=1) for cls in (AdaptationStage, Unguarded))
    a = _fit(tmp_path / "a", guarded, steps=3, enable_checkpointing=False).rows
    b = _fit(tmp_path / "b", unguarded, steps=3, enable_checkpointing=False).rows
    for (step_a, live_a, avg_a, skipped), (step_b, live_b, avg_b, _) in zip(a, b, strict=True):
        assert step_a == step_b and skipped == 0.0
        assert _equal(live_a, live_b) and _equal(avg_a, avg_b)
