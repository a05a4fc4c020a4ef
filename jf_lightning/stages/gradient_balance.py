"""How hard each loss pulls on each model part: per-loss gradient norms, for choosing loss weights.

Why this exists: under Adam, a parameter that several losses share moves mostly along the loss with
the larger gradient there, whatever the loss values say. On the tiny preset, after 3,000 steps at equal
weights, the RF loss reached the LLM with a far smaller gradient than the AR loss, so the LLM (the only
path from the prompt to the image tokens) was trained by AR and REPA alone and the generator ignored
its prompts (``experiments/tiny.md`` has the figures that set tiny.yaml's loss weights).

    python -m jf_lightning gradient-balance -c experiments/tiny.yaml [--ckpt last.ckpt] [--batches 4]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from jf_lightning.batch import PackedBatch
from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.stages.base import JanusFlowStage

LOSSES = ("ar_loss", "rf_loss", "repa_loss")


def loss_gradient_norms(stage: JanusFlowStage, batches: Iterable[PackedBatch]) -> dict[str, dict[str, float]]:
    """``{part: {loss: mean L2 norm of d(unweighted loss)/d(part's trainable parameters)}}`` over
    ``batches``, for every top-level model part with trainable parameters. A loss that does not
    reach a part (AR on the generation decoder) has norm 0."""
    parts = {
        name: [p for p in child.parameters() if p.requires_grad]
        for name, child in stage.model.named_children()
    }
    parts = {name: params for name, params in parts.items() if params}
    sums = {name: dict.fromkeys(LOSSES, 0.0) for name in parts}
    n = 0
    stage.train()
    for batch in batches:
        losses = stage.compute_losses(batch)
        present = [key for key in LOSSES if losses[key] is not None]
        params = [p for ps in parts.values() for p in ps]
        for i, key in enumerate(present):
            grads = torch.autograd.grad(
                losses[key], params, retain_graph=i < len(present) - 1, allow_unused=True
            )
            start = 0
            for name, ps in parts.items():
                mine = grads[start : start + len(ps)]
                start += len(ps)
                sums[name][key] += sum(float(g.float().pow(2).sum()) for g in mine if g is not None) ** 0.5
        n += 1
    if n == 0:
        raise ValueError("loss_gradient_norms needs at least one batch")
    return {name: {key: value / n for key, value in losses.items()} for name, losses in sums.items()}


def report(stage: JanusFlowStage, datamodule: JanusFlowDataModule, ckpt: str | None, batches: int) -> str:
    """The table ``gradient-balance`` prints: per part, each loss's gradient norm over ``batches``
    training batches, raw and weighted by the stage's loss weights; at ``ckpt``'s weights if given."""
    stage.configure_model()
    if ckpt:
        stage.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    norms = loss_gradient_norms(stage, (next(loader) for _ in range(batches)))
    weights = {key: float(stage.hparams[key.replace("_loss", "_weight")]) for key in LOSSES}
    lines = [f"{'part':<28}" + "".join(f"{key:>12}" for key in LOSSES) + "   (weighted: x " +
             ", ".join(f"{weights[k]:g}" for k in LOSSES) + ")"]  # fmt: skip
    for part, row in norms.items():
        raw = "".join(f"{row[k]:>12.4g}" for k in LOSSES)
        weighted = ", ".join(f"{row[k] * weights[k]:.4g}" for k in LOSSES)
        lines.append(f"{part:<28}{raw}   ({weighted})")
    return "\n".join(lines)
