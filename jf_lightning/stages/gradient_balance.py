"""How hard each loss pulls on each model part: per-loss gradient norms, for choosing loss weights.

Why this exists: under Adam, a parameter that several losses share moves mostly along the loss with
the larger gradient there, whatever the loss values say. On the tiny preset, after 3,000 steps at equal
weights, the RF loss reached the LLM with a gradient ~50x smaller than the AR loss and ~8x smaller than
REPA. The LLM (the only path from the prompt to the image tokens) was then trained by AR and REPA alone,
and the generator ignored its prompts. ``experiments/tiny.yaml`` sets its loss weights from this
measurement.

    python -m jf_lightning.stages.gradient_balance -c experiments/tiny.yaml [--ckpt last.ckpt] [--batches 4]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import torch

from jf_lightning.data.batch import PackedBatch
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


def _from_experiment(config: str, ckpt: str | None) -> tuple[JanusFlowStage, JanusFlowDataModule]:
    """The stage and datamodule exactly as ``fit -c config`` builds them (our CLI, no logger, no run);
    the config's shapes world and pretrained SigLIP are written first if absent."""
    from jf_lightning.cli import JanusFlowCLI, prepare_inputs  # the CLI imports the stages: lazily

    cli = JanusFlowCLI(args=["-c", config, "--trainer.logger=false"], run=False)
    prepare_inputs(cli.config)
    stage, datamodule = cli.model, cli.datamodule
    stage.configure_model()
    if ckpt:
        stage.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    datamodule.setup("fit")
    return stage, datamodule


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", required=True, help="experiment YAML (its model and data sections)")
    parser.add_argument("--ckpt", help="Lightning checkpoint to measure (default: the fresh init)")
    parser.add_argument("--batches", type=int, default=4, help="training batches to average over")
    args = parser.parse_args(argv)
    stage, datamodule = _from_experiment(args.config, args.ckpt)
    loader = iter(datamodule.train_dataloader())
    norms = loss_gradient_norms(stage, (next(loader) for _ in range(args.batches)))
    weights = {key: float(stage.hparams[key.replace("_loss", "_weight")]) for key in LOSSES}
    print(f"{'part':<28}" + "".join(f"{key:>12}" for key in LOSSES) + "   (weighted: x " +
          ", ".join(f"{weights[k]:g}" for k in LOSSES) + ")")
    for part, row in norms.items():
        raw = "".join(f"{row[k]:>12.4g}" for k in LOSSES)
        weighted = ", ".join(f"{row[k] * weights[k]:.4g}" for k in LOSSES)
        print(f"{part:<28}{raw}   ({weighted})")


if __name__ == "__main__":
    main()
