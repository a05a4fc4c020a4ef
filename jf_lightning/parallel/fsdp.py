"""FSDP2 (``fully_shard``) applied to a built, frozen JanusFlow from outside the model.

The order, each step on the blocks first and then on the parts that hold them:

1. activation checkpointing (a switch): every block recomputes its activations in backward
   (``torch.distributed._composable.checkpoint``: it keeps parameter names, so checkpoints written
   with and without it are the same);
2. ``torch.compile`` (a switch): every block compiled in place (``nn.Module.compile``: names kept too);
3. ``fully_shard`` of every block: the LLM decoder layers, the SigLIP blocks (the understanding
   encoder's and a separate REPA target's), the ConvNeXt blocks of the generation encoder/decoder;
4. ``fully_shard`` of every part that the training step or the samplers call directly (not through
   the model's ``forward``): the LLM's token embedding, its final norm, its LM head, and each
   top-level part of the model (the generation encoder and decoder, their aligners, the understanding
   encoder and aligner, the REPA head): FSDP2 gathers a group's parameters only in its module's own
   ``forward``, so each directly called module must be a group of its own;
5. ``fully_shard`` of the root (the JanusFlow: what is left, the begin-of-understanding embedding).

Frozen parts: SigLIP is sharded like the trained parts (stage 3 trains it, and at ViT-L it is 1.2 GB in
fp32 that sharding divides by the world size; frozen, it is only gathered in forward, with no gradient
reduction). The VAE is replicated (``ignored_params``): no stage trains it, the step calls its
``encode`` outside any forward hook, the samplers its ``decode``, and a copy per rank (0.33 GB fp32 for
the SDXL VAE) costs less than gathering it at every call.

Precision: with ``bf16-mixed`` the groups compute in bf16 and reduce gradients in fp32
(``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``), over fp32 sharded weights that the
optimizer and the EMA update; Lightning's autocast stays on (it covers the replicated VAE).
``bf16-true``/``16-true`` would cast the sharded master weights themselves and are refused.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from jf_lightning.inputs import UserInputError
from jf_lightning.models.gen_codec import ConvNeXtBlock

MIXED = {"bf16-mixed": torch.bfloat16}
REFUSED = ("bf16-true", "16-true", "16-mixed")


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy:
    """bf16 compute with fp32 gradient reduction under ``bf16-mixed``; fp32 throughout under ``32-true``."""
    if precision in REFUSED:
        raise UserInputError(
            f"trainer.precision {precision} with FSDP: use bf16-mixed (bf16 compute, fp32 weights and gradient "
            "reduction) or 32-true"
        )
    dtype = MIXED.get(precision)
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)


def _siglip_towers(model: nn.Module) -> list[nn.Module]:
    """The timm ViTs of the understanding encoder and of a separate REPA target (once each)."""
    towers = {}
    for part in (getattr(model, "vision_und_enc_model", None), getattr(model, "repa_target_encoder", None)):
        tower = getattr(part, "vision_tower", None)
        if tower is not None:
            towers[id(tower)] = tower
    return list(towers.values())


def shard_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks, in forward order: LLM decoder layers, SigLIP blocks, ConvNeXt blocks."""
    blocks = list(model.language_model.model.layers)
    for tower in _siglip_towers(model):
        blocks += list(tower.blocks)
    blocks += [m for m in model.modules() if isinstance(m, ConvNeXtBlock)]
    return blocks


def shard_parts(model: nn.Module) -> list[nn.Module]:
    """The modules called directly, each its own group (after the blocks they hold)."""
    llm = model.language_model
    if llm.get_output_embeddings().weight is llm.get_input_embeddings().weight:
        raise UserInputError(
            "FSDP needs an LLM with untied input and output embeddings (tie_word_embeddings)"
        )
    # the LLM trunk itself stays unwrapped: transformers finds its hidden-state recorders by the trunk's
    # class, which fully_shard replaces; its final norm is a group instead
    parts = [llm.get_input_embeddings(), llm.model.norm, llm.get_output_embeddings()]
    replicated = {id(m) for m in replicated_modules(model)}
    for name, child in model.named_children():
        if name != "language_model" and id(child) not in replicated and any(True for _ in child.parameters()):
            parts.append(child)
    return list({id(m): m for m in parts}.values())  # REPA target may be the understanding SigLIP


def replicated_modules(model: nn.Module) -> list[nn.Module]:
    """Frozen parts kept whole on every rank: the VAE (see the module docstring)."""
    vae = getattr(model, "vae", None)
    return [vae] if vae is not None else []


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    precision: str = "32-true",
    activation_checkpointing: bool = False,
    compile_blocks: bool = False,
) -> None:
    """Shard ``model`` (a JanusFlow) in place over the 1-D data-parallel ``mesh``, in the module's order."""
    blocks = shard_blocks(model)
    for block in blocks:
        if activation_checkpointing:
            checkpoint(block)
        if compile_blocks:
            block.compile()
    ignored = {p for m in replicated_modules(model) for p in m.parameters()}
    policy = mixed_precision_policy(precision)
    # reshard_after_forward on every group, the root too: between steps every parameter is its sharded
    # DTensor, which the EMA averages and swaps shard by shard
    kwargs = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": True, "ignored_params": ignored}
    for module in blocks + shard_parts(model) + [model]:
        fully_shard(module, **kwargs)


def shard_stage(stage) -> None:
    """Shard a stage's built model over its ``device_mesh`` (set by Lightning's ``ModelParallelStrategy``),
    with the stage's ``activation_checkpointing`` and ``compile_blocks`` switches and the trainer's precision."""
    mesh = stage.device_mesh
    if "tensor_parallel" in (mesh.mesh_dim_names or ()):
        if mesh["tensor_parallel"].size() != 1:
            raise UserInputError(
                f"tensor_parallel_size {mesh['tensor_parallel'].size()}: the model has no tensor-parallel plan; "
                "use jf_lightning.parallel.strategy.FSDP2Strategy (data-parallel size = world size)"
            )
        mesh = mesh["data_parallel"]
    precision = str(stage.trainer.precision) if stage._trainer is not None else "32-true"
    h = stage.hparams
    apply_fsdp(
        stage.model, mesh, precision, h.get("activation_checkpointing", False), h.get("compile_blocks", False)
    )
