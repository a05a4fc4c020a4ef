"""The Autoguidance callback: which weights its snapshot holds, that they never train, that the
sampling callbacks find them, and that they survive a checkpoint into ``validate``."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from jf_lightning.callbacks.autoguidance import Autoguidance, autoguide_for
from jf_lightning.callbacks.ema import EMA
from jf_lightning.stages import AdaptationStage
from tests.stages.conftest import built, tiny_batch

SNAPSHOT = 2


def probe(model) -> torch.Tensor:
    return model.vision_gen_dec_aligner.weight  # trained in every stage


class EmaRecorder(Callback):
    """The EMA's weights after every step (the EMA callback runs before this one, Autoguidance before both)."""

    def __init__(self, ema: EMA):
        self.ema, self.averages = ema, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.averages.append(self.ema.averages["model.vision_gen_dec_aligner.weight"].clone())


def _trainer(tmp_path, callbacks, steps: int = 3) -> Trainer:
    return Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, callbacks=callbacks,
        default_root_dir=tmp_path,
    )  # fmt: skip


def _fit(tmp_path, steps: int = 3):
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    ema = EMA(decay=0.5)
    guidance, recorder = Autoguidance(snapshot_step=SNAPSHOT, weight=2.0), EmaRecorder(ema)
    batches = [tiny_batch(module.model_config, seed=i, batch_index=i) for i in range(steps)]
    trainer = _trainer(tmp_path, [guidance, ema, recorder], steps)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return module, guidance, recorder, trainer, batches


def test_snapshot_holds_the_ema_weights_of_its_step_and_never_trains(tmp_path):
    module, guidance, rec, trainer, _ = _fit(tmp_path)
    guide = guidance.guide
    assert torch.equal(probe(guide), rec.averages[SNAPSHOT - 1])  # step 2's average...
    assert not torch.allclose(probe(guide), rec.averages[-1])  # ...not the last one
    assert not any(p.requires_grad for p in guide.parameters()) and not guide.training
    # frozen parts are the live model's own tensors, trained ones are copies
    assert guide.language_model.lm_head.weight is module.model.language_model.lm_head.weight
    assert probe(guide) is not probe(module.model)
    found = autoguide_for(trainer, module)
    assert found is not None and found.model is guide and found.weight == 2.0


def test_no_guide_before_the_snapshot_or_with_weight_zero(tmp_path):
    module = built(AdaptationStage)
    trainer = _trainer(tmp_path, [Autoguidance(snapshot_step=5)])
    assert autoguide_for(trainer, module) is None
    off = Autoguidance(snapshot_step=1, weight=0.0)
    off._take(module.model)
    assert off.autoguide(module) is None
    with pytest.raises(ValueError, match="snapshot_step >= 1"):
        Autoguidance(snapshot_step=0)


def test_checkpoint_carries_the_snapshot_into_validate(tmp_path):
    _, guidance, _, trainer, batches = _fit(tmp_path)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = probe(guidance.guide).detach().clone()

    fresh = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    restored = Autoguidance(snapshot_step=SNAPSHOT, weight=2.0)
    seen = []

    class Look(Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            seen.append(autoguide_for(trainer, pl_module))

    _trainer(tmp_path, [EMA(decay=0.5), restored, Look()]).validate(
        fresh, DataLoader(batches[:1], batch_size=None), ckpt_path=ckpt
    )
    assert seen and seen[0] is not None
    torch.testing.assert_close(probe(seen[0].model), saved)
    assert seen[0].model.language_model.lm_head.weight is fresh.model.language_model.lm_head.weight


def test_state_key_is_the_one_checkpoints_carry():
    assert Autoguidance(snapshot_step=2).state_key == "Autoguidance{'snapshot_step': 2}"


def test_a_snapshot_that_lacks_trained_weights_is_refused(tmp_path):
    module = built(AdaptationStage)
    guidance = Autoguidance(snapshot_step=1)
    guidance.load_state_dict({"guide": {"vision_gen_dec_aligner.weight": probe(module.model).detach().clone()}})
    with pytest.raises(RuntimeError, match="does not fit the model"):
        guidance.autoguide(module)
