"""The EMA callback: the average it keeps (bit for bit torch's AveragedModel), what validation and the
checkpoint see, that frozen parameters are not averaged, and that a resumed fit continues exactly,
from our checkpoints and from those of Lightning's WeightAveraging."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from jf_lightning.callbacks.ema import EMA, averaged_weights
from jf_lightning.stages import AdaptationStage
from tests.stages.conftest import built, tiny_batch

DECAY = 0.5
PROBE = "model.vision_gen_dec_aligner.weight"  # trained in every stage
FROZEN = "model.language_model.lm_head.weight"  # frozen in the adaptation stage


def trainable(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


class Reference(Callback):
    """torch's AveragedModel with the EMA multi-avg fn, updated where Lightning's WeightAveraging updates
    (at the batch end where the optimizer step count advanced); records it beside the EMA callback's."""

    def __init__(self, ema: EMA):
        self.ema, self.steps, self.ours, self.torch = ema, [], [], []

    def setup(self, trainer, pl_module, stage):
        self.model = AveragedModel(pl_module, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
        self.step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self.step:
            self.model.update_parameters(pl_module)
            self.step = trainer.global_step
        averaged = dict(self.model.module.named_parameters())
        self.steps.append(trainer.global_step)
        self.ours.append({name: avg.clone() for name, avg in self.ema.averages.items()})
        self.torch.append({name: averaged[name].detach().clone() for name in self.ema.averages})


class Recorder(Callback):
    """Live weights after every step; the weights validation hooks see; live weights after validation."""

    def __init__(self):
        self.live, self.in_validation, self.after_validation = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.live.append(trainable(pl_module))

    def on_validation_epoch_end(self, trainer, pl_module):
        self.in_validation.append(trainable(pl_module))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if len(self.after_validation) < len(self.in_validation):
            self.after_validation.append(trainable(pl_module))


def _trainer(tmp_path, callbacks, steps: int, **kwargs) -> Trainer:
    return Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, callbacks=callbacks,
        default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip


def _batches(module, count: int):
    return [tiny_batch(module.model_config, seed=i, batch_index=i) for i in range(count)]


def test_the_average_is_torchs_averaged_model_bit_for_bit(tmp_path):
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    ema = EMA(decay=DECAY)
    reference, recorder = Reference(ema), Recorder()
    batches = _batches(module, 6)
    trainer = _trainer(
        tmp_path, [ema, reference, recorder], steps=3, accumulate_grad_batches=2, val_check_interval=4
    )
    trainer.fit(module, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None))

    assert reference.steps == [
        0,
        1,
        1,
        2,
        2,
        3,
    ]  # updates only after optimizer steps, not accumulating batches
    for ours, theirs in zip(reference.ours[1:], reference.torch[1:]):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    # the first update copied the live weights, the next ones moved towards them
    assert torch.equal(reference.ours[1][PROBE], recorder.live[1][PROBE])
    assert not torch.equal(reference.ours[3][PROBE], recorder.live[3][PROBE])
    # validation (after step 2) saw the average, and training resumed on the live weights
    assert all(torch.equal(recorder.in_validation[0][n], reference.ours[3][n]) for n in ema.averages)
    assert all(torch.equal(recorder.after_validation[0][n], recorder.live[3][n]) for n in ema.averages)
    # after fit the model holds the average
    assert all(torch.equal(p, reference.torch[-1][n]) for n, p in trainable(module).items())


def test_checkpoint_holds_the_average_and_the_live_weights(tmp_path):
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    ema = EMA(decay=DECAY)
    saved = {}

    class Save(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                trainer.save_checkpoint(tmp_path / "step2.ckpt")
                saved["live"], saved["averages"] = trainable(pl_module), dict(ema.state_dict())
                saved["frozen"] = pl_module.state_dict()[FROZEN].clone()

    trainer = _trainer(tmp_path, [ema, Save()], steps=2)
    trainer.fit(module, DataLoader(_batches(module, 2), batch_size=None))
    ckpt = torch.load(tmp_path / "step2.ckpt", weights_only=False)
    assert ckpt["callbacks"]["EMA"] == {"latest_update_step": 2, "n_averaged": 2}
    assert ckpt["state_dict"].keys() == ckpt["current_model_state"].keys()
    for name, live in saved["live"].items():
        assert torch.equal(ckpt["current_model_state"][name], live)
        assert torch.equal(ckpt["state_dict"][name], ema.averages[name])  # unchanged since: fit ended at 2
    assert not torch.equal(ckpt["state_dict"][PROBE], ckpt["current_model_state"][PROBE])
    assert torch.equal(ckpt["state_dict"][FROZEN], saved["frozen"])
    assert torch.equal(ckpt["current_model_state"][FROZEN], saved["frozen"])


def test_frozen_parameters_are_not_averaged(tmp_path):
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    ema = EMA(decay=DECAY)
    _trainer(tmp_path, [ema], steps=1).fit(module, DataLoader(_batches(module, 1), batch_size=None))
    assert set(ema.averages) == {name for name, p in module.named_parameters() if p.requires_grad}
    assert FROZEN not in ema.averages and PROBE in ema.averages
    assert ema.averages[PROBE] is not module.model.vision_gen_dec_aligner.weight
    assert all(avg.device == torch.device("cpu") and not avg.requires_grad for avg in ema.averages.values())


def test_decay_none_turns_it_off(tmp_path):
    module = built(AdaptationStage)
    ema = EMA(decay=None)
    _trainer(tmp_path, [ema], steps=1).fit(module, DataLoader(_batches(module, 1), batch_size=None))
    assert not ema.active and ema.averages == {}
    with pytest.raises(ValueError):
        EMA(decay=1.5)


def test_averaged_weights_outside_and_inside_validation(tmp_path):
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    ema = EMA(decay=DECAY)
    trainer = _trainer(tmp_path, [ema], steps=2)
    trainer.fit(module, DataLoader(_batches(module, 2), batch_size=None))
    live = module.model.vision_gen_dec_aligner.weight
    with torch.no_grad():
        live.fill_(1.0)
        ema.averages[PROBE].fill_(0.25)
    with averaged_weights(trainer, module):
        assert live.eq(0.25).all() and ema.swapped
    assert live.eq(1.0).all() and ema.averages[PROBE].eq(0.25).all() and not ema.swapped
    ema.on_validation_epoch_start(trainer, module)  # swapped in for validation: left as it is
    with averaged_weights(trainer, module):
        assert live.eq(0.25).all()
    assert live.eq(0.25).all()
    ema.on_validation_end(trainer, module)
    assert live.eq(1.0).all()


class TwoLayers(LightningModule):
    """A frozen layer and a trained one; deterministic, so two runs take the same steps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.frozen = torch.nn.Linear(3, 4).requires_grad_(False)
        self.head = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.head(self.frozen(batch)).square().mean()

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.1)


def _data():
    return DataLoader(torch.arange(24.0).view(8, 3).sin(), batch_size=1)


class OldEMA(WeightAveraging):
    """What the EMA callback was: Lightning's WeightAveraging with the EMA multi-avg fn, stored as "EMA"."""

    def __init__(self):
        super().__init__(use_buffers=False, multi_avg_fn=get_ema_multi_avg_fn(DECAY))

    @property
    def state_key(self) -> str:
        return "EMA"


class SaveAt(Callback):
    def __init__(self, path, step: int):
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class AtStart(Callback):
    """The EMA's state when training starts, after the checkpoint has been restored."""

    def __init__(self, ema: EMA):
        self.ema = ema

    def on_train_start(self, trainer, pl_module):
        self.averages = {name: avg.clone() for name, avg in self.ema.averages.items()}
        self.live = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
        self.counters = self.ema.state_dict()


class Continued(Callback):
    """The checkpoint's averages continued by torch's AveragedModel, from the step training resumes at."""

    def __init__(self, averaged_state: dict[str, torch.Tensor], n_averaged: int):
        self.averaged_state, self.n_averaged = averaged_state, n_averaged

    def on_train_start(self, trainer, pl_module):
        self.model = AveragedModel(pl_module, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
        self.model.module.load_state_dict(self.averaged_state)
        self.model.n_averaged.fill_(self.n_averaged)
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self.step:
            self.model.update_parameters(pl_module)
            self.step = trainer.global_step


@pytest.mark.parametrize("writer", [EMA, OldEMA])
def test_resume_restores_the_average_and_the_live_weights_exactly(tmp_path, writer):
    ckpt = tmp_path / "step3.ckpt"
    first = writer() if writer is OldEMA else writer(decay=DECAY)
    _trainer(tmp_path, [first, SaveAt(ckpt, 3)], steps=3).fit(TwoLayers(), _data())
    saved = torch.load(ckpt, weights_only=False)
    assert ("averaging_state" in saved) == (writer is OldEMA)

    ema = EMA(decay=DECAY)
    start, continued = AtStart(ema), Continued(saved["state_dict"], n_averaged=3)
    _trainer(tmp_path, [ema, start, continued], steps=5).fit(TwoLayers(), _data(), ckpt_path=ckpt)
    assert start.counters == {"latest_update_step": 3, "n_averaged": 3}
    assert start.averages.keys() == {"head.weight", "head.bias"}
    for name, average in start.averages.items():
        assert torch.equal(average, saved["state_dict"][name])
    for name, live in start.live.items():
        assert torch.equal(live, saved["current_model_state"][name])
    assert not torch.equal(start.averages["head.weight"], start.live["head.weight"])
    # two more steps, as the checkpoint's writer would have taken them
    assert ema.state_dict() == {"latest_update_step": 5, "n_averaged": 5}
    expected = dict(continued.model.module.named_parameters())
    for name, average in ema.averages.items():
        assert torch.equal(average, expected[name])
