"""Parameter counts of a preset, built on the meta device (no weights, no download).

    python -m jf_lightning.models.summary janusflow-1.3b [--ablation F]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from jf_lightning.models.config import PRESETS, preset, with_ablation
from jf_lightning.models.janusflow import JanusFlow

_GROUPS = {
    "LLM": ("language_model",),
    "understanding encoder (SigLIP / ConvNeXt)": ("vision_und_enc_model",),
    "generation encoder + decoder": ("vision_gen_enc_model", "vision_gen_dec_model"),
    "aligners + begin embedding": (
        "vision_und_enc_aligner",
        "beg_of_und_embed",
        "vision_gen_enc_aligner",
        "vision_gen_dec_aligner",
        "vision_gen_dec_aligner_norm",
    ),
    "REPA head": ("repa_head",),
    "REPA target SigLIP (frozen)": ("repa_target_encoder",),
    "VAE (frozen)": ("vae",),
}


def parameter_groups(model: nn.Module) -> dict[str, int]:
    """Unique parameters per group (a module shared between groups counts once, in the first)."""
    seen: set[int] = set()
    counts = {}
    for group, prefixes in _GROUPS.items():
        total = 0
        for name, p in model.named_parameters(remove_duplicate=False):
            if name.split(".")[0] in prefixes and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        counts[group] = total
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--ablation", choices=list("ABCDEF"), default=None)
    args = parser.parse_args(argv)
    cfg = preset(args.preset)
    if args.ablation:
        cfg = with_ablation(cfg, args.ablation)
    with torch.device("meta"):
        model = JanusFlow(cfg)
    counts = parameter_groups(model)
    print(f"{args.preset}{' ablation ' + args.ablation if args.ablation else ''}: parameters (meta device)")
    for group, n in counts.items():
        if n:
            print(f"  {group:<45} {n / 1e6:10.2f} M")
    print(f"  {'total':<45} {sum(counts.values()) / 1e6:10.2f} M")
    llm = model.language_model
    embeddings = llm.get_input_embeddings().weight.numel() + llm.get_output_embeddings().weight.numel()
    print(f"  {'LLM without input/output embeddings':<45} {(counts['LLM'] - embeddings) / 1e6:10.2f} M")


if __name__ == "__main__":
    main()
