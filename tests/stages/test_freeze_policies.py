"""Freeze policies: exactly which parts train in each stage and ablation, and that frozen parts stay
frozen (no grad, not in the optimizer, unchanged by a step, in eval mode through trainer.fit)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from jf_lightning.models.config import tiny, with_ablation
from tests.stages.conftest import ABLATIONS, STAGES, built, tiny_batch

GEN = {"vision_gen_enc_model", "vision_gen_enc_aligner", "vision_gen_dec_aligner_norm", "vision_gen_dec_aligner",
       "vision_gen_dec_model"}  # fmt: skip
UND = {"vision_und_enc_aligner", "beg_of_und_embed"}


def expected_adapters(ablation: str) -> set[str]:
    """Written out per ablation (not derived from the code under test)."""
    return {
        "A": GEN | UND,  # no REPA head
        "B": GEN | {"beg_of_und_embed", "repa_head"},  # understanding reuses g_enc and its aligner
        "C": GEN | UND | {"vision_und_enc_model", "repa_head"},  # C's ConvNeXt encoder is new
        "D": UND,  # understanding only
        "E": GEN | {"repa_head"},  # generation only
        "F": GEN | UND | {"repa_head"},
    }[ablation]


def expected_trainable(stage: str, ablation: str) -> set[str]:
    parts = set(expected_adapters(ablation))  # a copy: the module-level sets must stay as written
    if stage in ("pretraining", "sft"):
        parts |= {"language_model"}
    if stage == "sft" and ablation in ("A", "D", "F"):  # the SigLIP that serves understanding
        parts |= {"vision_und_enc_model"}
    return parts


def top_level_names(model, trainable: bool) -> set[str]:
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad == trainable}


@pytest.mark.parametrize("lr_scales", [None, {"adapters": 2.0}])
@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("stage", STAGES)
def test_exactly_the_policy_parts_train_and_are_optimized(stage, ablation, lr_scales):
    module = built(STAGES[stage], ablation=ablation, lr_scales=lr_scales)
    model = module.model
    expected = expected_trainable(stage, ablation)
    assert top_level_names(model, trainable=True) == expected
    # no part is half trained (a whole top-level part is either trained or frozen)
    assert not top_level_names(model, trainable=True) & top_level_names(model, trainable=False)
    for part in model.always_frozen():
        assert not any(p.requires_grad for p in part.parameters())
    optimizer = module.configure_optimizers()["optimizer"]
    in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(in_optimizer) == sorted(id(p) for p in module.parameters() if p.requires_grad)  # each once


def test_siglip_kept_only_as_repa_target_is_frozen_even_in_sft():
    module = built(STAGES["sft"], ablation="B")
    target = module.model.repa_target_encoder
    assert target is not None and not any(p.requires_grad for p in target.parameters())
    module.train()
    assert not any(m.training for m in target.modules())


def test_frozen_modules_stay_eval_after_train():
    module = built(STAGES["adaptation"])
    module.train()
    assert not any(m.training for m in module.model.language_model.modules())
    assert not any(m.training for m in module.model.vision_und_enc_model.modules())
    assert module.model.vision_gen_enc_model.training and module.model.repa_head.training


def test_configure_model_is_idempotent():
    module = built(STAGES["sft"])
    model = module.model
    module.configure_model()
    assert module.model is model


def test_warmup_is_linear_then_constant():
    module = built(STAGES["sft"], lr=1e-3, warmup_steps=4)
    opt = module.configure_optimizers()
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    assert opt["lr_scheduler"]["interval"] == "step"
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["weight_decay"] == 0.0
    assert optimizer.defaults["fused"]  # on CPU: torch's default there is a per-tensor Python loop
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_cooldown_falls_linearly_to_the_last_step_of_max_steps():
    module = built(STAGES["pretraining"], lr=1e-3, warmup_steps=2, cooldown_steps=3)
    module.trainer = Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False)
    opt = module.configure_optimizers()
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3])


@pytest.mark.parametrize("max_steps", [-1, 2])
def test_a_cooldown_longer_than_training_is_refused(max_steps):
    module = built(STAGES["pretraining"], cooldown_steps=3)
    module.trainer = Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="cooldown_steps 3 needs trainer.max_steps"):
        module.configure_optimizers()
    with pytest.raises(ValueError, match="cooldown_steps is -1"):
        built(STAGES["pretraining"], cooldown_steps=-1)


def test_under_bf16_the_fused_optimizer_still_has_its_gradients_clipped():
    # Lightning's MixedPrecision refuses to clip for fused optimizers (an fp16 GradScaler concern)
    module = built(STAGES["sft"])
    module.trainer = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.ones_like(p)
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) == pytest.approx(1.0, rel=1e-4)


def test_lr_scales_give_each_part_group_its_own_lr_through_the_warmup():
    module = built(STAGES["sft"], lr=1e-3, warmup_steps=2, lr_scales={"adapters": 3.0})
    opt = module.configure_optimizers()
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"llm", "siglip", "adapters"}
    model = module.model
    assert {id(p) for p in groups["llm"]["params"]} == {id(p) for p in model.language_model.parameters()}
    assert {id(p) for p in groups["siglip"]["params"]} == {id(p) for p in model.vision_und_enc_model.parameters()}
    assert any(p is model.beg_of_und_embed for p in groups["adapters"]["params"])
    in_optimizer = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(in_optimizer) == sorted(id(p) for p in module.parameters() if p.requires_grad)  # each once
    lrs = []
    for _ in range(3):
        lrs += [groups["llm"]["lr"], groups["adapters"]["lr"]]
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([5e-4, 1.5e-3, 1e-3, 3e-3, 1e-3, 3e-3])  # (llm, adapters) per step


def test_lr_scales_refuse_an_unknown_group():
    with pytest.raises(ValueError, match="lr_scales names unknown part groups \\['vae'\\]"):
        STAGES["sft"](lr_scales={"vae": 2.0})

def _fit(module, steps: int = 2):
    batches = [tiny_batch(module.model_config, seed=i, batch_index=i) for i in range(steps)]
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=1,
        gradient_clip_val=1.0,
    )  # fmt: skip
    # batch_size=None: the list items are already whole batches (no collation)
    trainer.fit(module, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None))
    return trainer


@pytest.mark.parametrize("stage,ablation", [("adaptation", "F"), ("pretraining", "C")])
def test_a_training_step_changes_only_trainable_parameters(stage, ablation):
    module = built(STAGES[stage], ablation=ablation)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    _fit(module)
    for name, p in module.named_parameters():
        if p.requires_grad:
            continue
        assert torch.equal(p, before[name]), f"frozen {name} changed"
    changed = [
        name for name, p in module.named_parameters() if p.requires_grad and not torch.equal(p, before[name])
    ]
    assert any(n.startswith("model.vision_gen_dec_model") for n in changed)
    assert not any(p.grad is not None for p in module.parameters() if not p.requires_grad)
    # frozen parts are still in eval mode after fit (which validated in between), trained ones in train
    frozen_tops = top_level_names(module.model, trainable=False) - top_level_names(
        module.model, trainable=True
    )
    for name in frozen_tops:
        assert not any(m.training for m in getattr(module.model, name).modules()), name
    assert module.model.vision_gen_dec_model.training


def test_tiny_preset_config_is_untouched_by_ablations():
    cfg = tiny()
    with_ablation(cfg, "C")
    assert cfg.und_encoder == "siglip"


def test_checkpoint_round_trip_rebuilds_model_and_policy(tmp_path):
    module = built(STAGES["adaptation"], lr=3e-4)
    trainer = _fit(module, steps=1)
    trainer.save_checkpoint(tmp_path / "stage.ckpt")
    loaded = STAGES["adaptation"].load_from_checkpoint(tmp_path / "stage.ckpt")
    assert loaded.hparams.lr == 3e-4
    for (name, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert top_level_names(loaded.model, trainable=True) == expected_trainable("adaptation", "F")
