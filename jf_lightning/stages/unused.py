"""DDP whatever a batch holds: a batch without understanding images leaves the understanding encoder
out of the graph, one without generation samples the generation codec and the REPA head, one without
labelled tokens the LM head; DDP's reducer then waits for gradients that never come and stops at the
next step ("parameters that were not used in producing the loss").

Two ways out, measured by ``benchmarks/ddp_unused.py`` (2 CPU processes, tiny preset, figures in
experiments/scale.md): DDP's ``find_unused_parameters=True`` (an autograd-graph traversal per step),
or zero-weighted terms putting every trainable parameter in the graph (``zero_weighted_terms``). The
stages use the first: it cost no more, and it keeps single-process semantics: a part no rank used
keeps ``grad = None``, so AdamW leaves it alone, where zero gradients would still move it by its
momentum.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn


def allow_unused_parameters(trainer) -> None:
    """Set ``find_unused_parameters=True`` on ``trainer``'s DDP strategy before it wraps the model,
    unless the strategy was given a value (``ddp_find_unused_parameters_false``, or its own kwargs)."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    if isinstance(strategy, DDPStrategy):
        strategy._ddp_kwargs.setdefault("find_unused_parameters", True)  # read when DDP wraps the model


def zero_weighted_terms(module: nn.Module) -> torch.Tensor:
    """0 x (one element of every trainable parameter): added to the loss, it puts each of them in the
    graph with a zero gradient (the alternative ``benchmarks/ddp_unused.py`` measures)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0
