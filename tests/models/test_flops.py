"""The analytic FLOP count of a packed training step (``models/flops.py``) against torch's
FlopCounterMode on the tiny model's forward + backward, for each stage's freeze policy.

Tolerance 1%. What the comparison leaves out or adjusts: the model runs with eager attention (the LLM's
``eager`` implementation, timm's ``fused_attn`` off), because FlopCounterMode does not count CPU's fused
SDPA kernel; FlopCounterMode's formula for a convolution's backward ignores ``groups`` (a depthwise 7x7
conv's backward counted as a dense one, 128x too much at the tiny width), so it is counted here by the
forward formula per gradient computed. Norms, activations, softmax and the loss are in neither count.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jf_lightning.models.flops import FlopModel
from tests.stages.conftest import STAGES, built, tiny_batch


def _conv_backward(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    # w_shape (C_out, C_in / groups, kh, kw): forward MACs per output element; once per gradient asked for
    output_mask = args[-1]
    return (
        2 * math.prod(grad_out_shape) * math.prod(w_shape[1:]) * (int(output_mask[0]) + int(output_mask[1]))
    )


def measured_step(stage, batch) -> int:
    stage.model.language_model.set_attn_implementation("eager")
    for module in stage.model.modules():
        if hasattr(module, "fused_attn"):  # timm's attention
            module.fused_attn = False
    stage.train()
    mapping = {torch.ops.aten.convolution_backward: _conv_backward}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        stage.compute_losses(batch)["loss"].backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_the_analytic_count_matches_the_measured_one(name):
    stage = built(STAGES[name], preset="tiny")
    batch = tiny_batch(stage.model_config)
    counted = FlopModel.from_model(stage.model).step(batch, attention="rows", tokens="all")
    measured = measured_step(stage, batch)
    assert counted["total"] == pytest.approx(measured, rel=0.01)


def test_useful_work_counts_samples_not_padding_and_frozen_parts_forward_only():
    stage = built(STAGES["pretraining"], preset="tiny")
    batch = tiny_batch(stage.model_config, seq_len=300)  # rows padded well past their samples
    fm = FlopModel.from_model(stage.model)
    executed, useful = fm.step(batch, attention="rows", tokens="all"), fm.step(batch)
    assert useful["llm"] / executed["llm"] == pytest.approx(
        int((batch.segment_ids > 0).sum()) / batch.segment_ids.numel()
    )
    assert useful["attention"] < executed["attention"]
    # stage 2 freezes SigLIP: its FLOPs are forward only, a third of what training it (stage 3) costs
    sft = FlopModel.from_model(built(STAGES["sft"], preset="tiny").model).step(batch)
    assert sft["und"] == pytest.approx(3 * useful["und"])
