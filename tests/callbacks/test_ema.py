"""The EMA callback: the average it keeps, what validation and the checkpoint see, and that frozen
parameters are shared with the live model rather than copied."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from jf_lightning.callbacks.ema import EMA
from jf_lightning.stages import AdaptationStage
from tests.stages.conftest import built, tiny_batch

DECAY = 0.5


def probe(module) -> torch.Tensor:
    return module.model.vision_gen_dec_aligner.weight  # trained in every stage


class Recorder(Callback):
    """Live weights after every step; the weights validation hooks see; live weights after validation."""

    def __init__(self):
        self.live, self.in_validation, self.after_validation = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.live.append(probe(pl_module).detach().clone())

    def on_validation_epoch_end(self, trainer, pl_module):
        self.in_validation.append(probe(pl_module).detach().clone())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.in_validation:
            self.after_validation.append(probe(pl_module).detach().clone())


def _fit(tmp_path, steps: int = 3):
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    ema, recorder = EMA(decay=DECAY), Recorder()
    batches = [tiny_batch(module.model_config, seed=i, batch_index=i) for i in range(steps)]
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=2,
        callbacks=[ema, recorder], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None))
    return module, ema, recorder, trainer


def test_ema_average_validation_swap_and_checkpoint(tmp_path):
    module, _, rec, trainer = _fit(tmp_path)
    expected = rec.live[0]  # the first update copies, then ema = decay * ema + (1 - decay) * live
    history = [expected]
    for live in rec.live[1:]:
        expected = DECAY * expected + (1 - DECAY) * live
        history.append(expected)
    # validation (after step 2) saw the average, and training resumed on the live weights
    assert torch.allclose(rec.in_validation[0], history[1])
    assert torch.equal(rec.after_validation[0], rec.live[1])
    # after fit the model holds the average (WeightAveraging's on_train_end)
    assert torch.allclose(probe(module), history[-1])
    # the checkpoint's state_dict is the average, the live weights are kept beside it
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    key = "model.vision_gen_dec_aligner.weight"
    assert torch.allclose(ckpt["state_dict"][key], history[-1])
    assert "current_model_state" in ckpt


def test_frozen_parameters_are_shared_not_copied(tmp_path):
    module, ema, _, _ = _fit(tmp_path, steps=2)
    copy = ema._average_model.module
    assert copy.model.language_model.lm_head.weight is module.model.language_model.lm_head.weight  # frozen
    assert copy.model.vision_gen_dec_aligner.weight is not module.model.vision_gen_dec_aligner.weight


def test_decay_none_turns_it_off(tmp_path):
    module = built(AdaptationStage)
    ema = EMA(decay=None)
    batches = [tiny_batch(module.model_config)]
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[ema],
                      default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, DataLoader(batches, batch_size=None))
    assert ema._average_model is None
