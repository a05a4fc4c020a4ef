"""compute_losses on hand-laid batches: finite losses, their weighting, reproducible flow noise, and
which parts each loss's gradient reaches (REPA's never reaches its target encoder)."""

from __future__ import annotations

import pytest
import torch

from jf_lightning.models.config import apply_overrides, resolve_config, tiny
from jf_lightning.stages import SFTStage
from tests.stages.conftest import built, tiny_batch


def grads_by_part(stage, loss_key: str) -> dict[str, bool]:
    """Backward one loss alone; for every top-level part: did any parameter get a nonzero gradient."""
    stage.zero_grad(set_to_none=True)
    losses = stage.compute_losses(tiny_batch(stage.model_config))
    losses[loss_key].backward()
    reached: dict[str, bool] = {}
    for name, p in stage.model.named_parameters():
        top = name.split(".")[0]
        hit = p.grad is not None and bool(p.grad.abs().sum() > 0)
        reached[top] = reached.get(top, False) or hit
    return reached


def test_all_three_losses_are_finite_and_total_is_their_weighted_sum():
    stage = built(SFTStage, ar_weight=2.0, rf_weight=3.0, repa_weight=0.5)
    losses = stage.compute_losses(tiny_batch(stage.model_config))
    for key in ("ar_loss", "rf_loss", "repa_loss", "loss"):
        assert torch.isfinite(losses[key]), key
    expected = 2.0 * losses["ar_loss"] + 3.0 * losses["rf_loss"] + 0.5 * losses["repa_loss"]
    assert torch.allclose(losses["loss"], expected)


def test_ar_loss_reaches_the_llm_and_understanding_parts_only(sft_stage):
    reached = grads_by_part(sft_stage, "ar_loss")
    for part in ("language_model", "vision_und_enc_model", "vision_und_enc_aligner", "beg_of_und_embed"):
        assert reached[part], part
    # samples never attend across each other: generation parts cannot affect the labelled tokens
    for part in ("vision_gen_enc_model", "vision_gen_dec_model", "vision_gen_dec_aligner", "repa_head"):
        assert not reached[part], part


def test_rf_loss_reaches_the_generation_path_only(sft_stage):
    reached = grads_by_part(sft_stage, "rf_loss")
    for part in ("language_model", "vision_gen_enc_model", "vision_gen_enc_aligner", "vision_gen_dec_aligner_norm",
                 "vision_gen_dec_aligner", "vision_gen_dec_model"):  # fmt: skip
        assert reached[part], part
    for part in ("vision_und_enc_model", "vision_und_enc_aligner", "beg_of_und_embed", "repa_head"):
        assert not reached[part], part


def test_repa_loss_never_reaches_its_target_encoder_nor_blocks_after_its_layer(sft_stage):
    assert any(
        p.requires_grad for p in sft_stage.model.vision_und_enc_model.parameters()
    )  # SFT trains SigLIP
    reached = grads_by_part(sft_stage, "repa_loss")
    for part in ("repa_head", "language_model", "vision_gen_enc_model", "vision_gen_enc_aligner"):
        assert reached[part], part
    for part in ("vision_und_enc_model", "vision_gen_dec_model", "vision_gen_dec_aligner"):
        assert not reached[part], part
    layer = sft_stage.model_config.repa.layer
    blocks = sft_stage.model.language_model.model.layers
    assert all(p.grad is not None for p in blocks[layer - 1].parameters())
    assert all(p.grad is None for b in blocks[layer:] for p in b.parameters())


def test_flow_noise_is_reproducible_per_batch_index(sft_stage):
    cfg = sft_stage.model_config
    first = sft_stage.compute_losses(tiny_batch(cfg, batch_index=3))["rf_loss"]
    again = sft_stage.compute_losses(tiny_batch(cfg, batch_index=3))["rf_loss"]
    other = sft_stage.compute_losses(tiny_batch(cfg, batch_index=4))["rf_loss"]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_a_time_mean_schedule_shifts_the_times_from_its_step_on(monkeypatch):
    stage = built(SFTStage, time_mean=[[0, 0.0], [5, -4.0]])
    batch = tiny_batch(stage.model_config)

    def times_at(step: int) -> torch.Tensor:
        monkeypatch.setattr(SFTStage, "global_step", property(lambda self: step))
        return stage.flow_inputs(batch, torch.Generator().manual_seed(0))[2]  # (N,)

    before, at_switch, later = times_at(4), times_at(5), times_at(900)
    assert torch.equal(times_at(0), before) and torch.equal(at_switch, later)
    # the same normal draws, moved by -4 before the sigmoid
    assert torch.allclose(torch.logit(at_switch), torch.logit(before) - 4.0, atol=1e-4)
    stage.eval()  # validation measures at the first mean whatever the step
    assert torch.equal(times_at(900), before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time_mean": [[5, -0.5]]}, "time_mean must start at step 0"),
        ({"time_mean": [[0, 0.0], [0, -0.5]]}, "time_mean start steps must increase"),
    ],
)
def test_a_bad_time_mean_schedule_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SFTStage(**kwargs)


def test_gen_only_batch_has_no_ar_loss_and_understanding_only_model_no_flow():
    stage = built(SFTStage, ablation="E")  # no understanding encoder: the batch has text + generation
    batch = tiny_batch(stage.model_config)
    batch.labels.fill_(-100)
    losses = stage.compute_losses(batch)
    assert losses["ar_loss"] is None
    assert torch.allclose(losses["loss"], losses["rf_loss"] + losses["repa_loss"])
    stage = built(SFTStage, ablation="D")
    losses = stage.compute_losses(tiny_batch(stage.model_config))
    assert losses["rf_loss"] is None and losses["repa_loss"] is None and torch.isfinite(losses["ar_loss"])


def test_overrides_set_dotted_keys_on_a_copy():
    base = tiny()
    cfg = apply_overrides(base, {"repa.layer": 3, "vae.block_out_channels": [8, 16]})
    assert cfg.repa.layer == 3 and cfg.vae.block_out_channels == (8, 16)  # YAML lists become tuples
    assert base == tiny()


def test_unknown_override_names_the_key_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model override 'repa.lyer': did you mean 'repa.layer'\? valid keys are .*repa\.layer"):
        resolve_config("tiny", None, {"repa.lyer": 3})


def test_ablation_then_overrides():
    cfg = resolve_config("tiny", "B", {"repa.hidden_size": 64})
    assert cfg.und_encoder == "shared_gen" and cfg.repa.target == "siglip" and cfg.repa.hidden_size == 64


def test_validation_means_weigh_each_loss_by_its_own_elements(sft_stage):
    """A batch without generation rows must not dilute val/rf_loss (it logs weight 0)."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    cfg = sft_stage.model_config
    with_gen = tiny_batch(cfg, seed=1)
    und_only = tiny_batch(resolve_config("tiny", "D"), seed=2)  # same layout minus the generation row
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(sft_stage, DataLoader([with_gen, und_only], batch_size=None), verbose=False)
    expected = sft_stage.compute_losses(with_gen, sft_stage.flow_generator(0, salt=1))
    assert metrics["val/rf_loss"] == pytest.approx(expected["rf_loss"].item(), rel=1e-5)
    assert metrics["val/repa_loss"] == pytest.approx(expected["repa_loss"].item(), rel=1e-5)
