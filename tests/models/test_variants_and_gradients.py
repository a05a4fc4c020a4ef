"""Table 6 variants build and train; REPA gradients stop at the target; frozen parts stay put."""

import pytest
import torch

from jf_lightning.flow.rectified_flow import interpolate, repa_loss, rf_loss, velocity_target
from jf_lightning.models.config import tiny, with_ablation
from jf_lightning.models.janusflow import JanusFlow
from tests.models.builders import gen_sample, pack_rows, text_sample, und_sample


def _mixed_batch(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = cfg.image_size
    rows = [[text_sample([50, 51, 52])]]
    n_und = n_gen = 0
    if cfg.has_understanding:
        rows[0].insert(0, und_sample(cfg.num_und_tokens, [20, 21], [30]))
        n_und = 1
    if cfg.generation:
        rows.append([gen_sample([40, 41], cfg.num_gen_tokens), gen_sample([42], cfg.num_gen_tokens, dropped=True)])
        n_gen = 2
    seq_len = max(sum(len(s.tokens) for s in row) for row in rows)
    und = torch.rand(n_und, 3, size, size, generator=g) * 2 - 1
    gen = torch.rand(n_gen, 3, size, size, generator=g) * 2 - 1
    return pack_rows(rows, seq_len, und, gen)


def _losses(model, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = model.vae.encode(batch.gen_pixels) if batch.num_gen else None
    noise = torch.randn(x.shape, generator=g) if x is not None else None
    t = torch.rand(batch.num_gen, generator=g)
    out = model(batch, interpolate(x, noise, t) if x is not None else None, t)
    losses = {"ar": out.ar_loss}
    if batch.num_gen:
        losses["rf"] = rf_loss(out.velocity, velocity_target(x, noise))
        if out.repa_pred is not None:
            losses["repa"] = repa_loss(out.repa_pred, model.repa_targets(batch))
    return losses


@pytest.mark.parametrize("ablation", ["A", "B", "C", "D", "E", "F"])
def test_every_table6_variant_runs_forward_and_backward(ablation):
    cfg = with_ablation(tiny(), ablation)
    torch.manual_seed(0)
    model = JanusFlow(cfg).train()
    losses = _losses(model, _mixed_batch(cfg))
    assert ("rf" in losses) == (ablation != "D")
    assert ("repa" in losses) == (ablation in "BCEF")
    total = sum(v for v in losses.values() if v is not None)
    total.backward()
    assert torch.isfinite(total)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    if ablation in "BCE":  # a SigLIP kept only as the REPA target never trains
        assert all(not p.requires_grad for p in model.repa_target_encoder.parameters())
    if ablation == "C":  # its own ConvNeXt understanding encoder, same init as the generation encoder
        assert model.vision_und_enc_model.encoder is not model.vision_gen_enc_model


def test_variant_c_understanding_encoder_starts_as_a_copy_of_the_generation_encoder():
    model = JanusFlow(with_ablation(tiny(), "C"))
    own = model.vision_und_enc_model.encoder.state_dict()
    for name, tensor in model.vision_gen_enc_model.state_dict().items():
        assert torch.equal(own[name], tensor)


@pytest.mark.parametrize("ablation", ["F", "B"])
def test_repa_gradient_never_reaches_the_understanding_encoder_or_target(ablation):
    cfg = with_ablation(tiny(), ablation)
    model = JanusFlow(cfg).train()
    batch = _mixed_batch(cfg)
    batch.und_slots = batch.und_slots[:0]  # REPA alone: no understanding image in the batch
    batch.und_pixels = batch.und_pixels[:0]
    _losses(model, batch)["repa"].backward()
    target = model.repa_target_encoder or model.vision_und_enc_model
    assert all(p.grad is None for p in target.parameters())
    assert model.repa_head.mlp[0].weight.grad is not None
    llm_layers = model.language_model.model.layers
    assert llm_layers[cfg.repa.layer - 1].mlp.down_proj.weight.grad is not None
    assert llm_layers[cfg.repa.layer].mlp.down_proj.weight.grad is None  # blocks after k get none


def test_frozen_parameters_stay_bit_identical_after_an_optimizer_step():
    cfg = tiny()
    model = JanusFlow(cfg).train()
    frozen = [model.vision_und_enc_model, model.language_model]  # stage 1's policy
    for part in frozen:
        part.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    aligner_before = model.vision_gen_enc_aligner.weight.detach().clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    losses = _losses(model, _mixed_batch(cfg))
    sum(v for v in losses.values() if v is not None).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), name
    assert not torch.equal(model.vision_gen_enc_aligner.weight, aligner_before)  # the trained part moved


def test_inconsistent_configs_are_refused_with_the_field_name():
    cfg = tiny()
    cfg.repa.layer = cfg.llm.num_layers
    with pytest.raises(ValueError, match="repa.layer"):
        JanusFlow(cfg)
    cfg = tiny()
    cfg.und_encoder = "shared_gen"
    with pytest.raises(ValueError, match="repa.target"):
        JanusFlow(cfg)
