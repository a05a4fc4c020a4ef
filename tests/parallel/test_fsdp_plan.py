"""The FSDP2 plan on a one-process gloo group (the layout does not depend on the world size): what is
sharded and what replicated, the groups' precision, the switches, and that the sharded model computes
the unsharded one's loss and gradients, with activation checkpointing too."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from jf_lightning.callbacks.autoguidance import Autoguidance
from jf_lightning.callbacks.ema import EMA
from jf_lightning.flow.sampler import PromptBatch, cached_velocity
from jf_lightning.inputs import UserInputError
from jf_lightning.models.gen_codec import ConvNeXtBlock
from jf_lightning.parallel.fsdp import apply_fsdp, mixed_precision_policy, shard_blocks
from jf_lightning.parallel.strategy import FSDP2Strategy
from jf_lightning.stages import PretrainingStage
from tests.stages.conftest import built, tiny_batch


@pytest.fixture
def mesh(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def loss_and_grads(stage, batch) -> tuple[float, dict[str, torch.Tensor]]:
    stage.zero_grad(set_to_none=True)
    loss = stage.compute_losses(batch, torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    grads = {
        name: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad)
        for name, p in stage.named_parameters()
        if p.grad is not None
    }
    return loss.item(), grads


def test_blocks_and_parts_are_sharded_and_the_vae_replicated(mesh):
    stage = built(PretrainingStage)
    model = stage.model
    blocks = shard_blocks(model)
    llm_layers = list(model.language_model.model.layers)
    assert blocks[: len(llm_layers)] == llm_layers  # the decoder layers first, in forward order
    assert any(b in blocks for b in model.vision_und_enc_model.vision_tower.blocks)
    assert sum(isinstance(b, ConvNeXtBlock) for b in blocks) == sum(
        isinstance(m, ConvNeXtBlock) for m in model.modules()
    )
    apply_fsdp(model, mesh, "bf16-mixed")

    assert all(isinstance(b, FSDPModule) for b in blocks)
    for part in ("vision_gen_enc_model", "vision_gen_dec_model", "vision_und_enc_model", "repa_head"):
        assert isinstance(getattr(model, part), FSDPModule), part
    assert isinstance(model, FSDPModule) and not isinstance(model.vae, FSDPModule)
    for name, p in model.named_parameters():
        assert isinstance(p, DTensor) != name.startswith("vae."), name  # frozen SigLIP sharded, VAE whole
    assert not any(p.requires_grad for p in model.vision_und_enc_model.parameters())  # the freeze survives
    policy = model.language_model.model.layers[0]._get_fsdp_state()._mp_policy
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32


@pytest.mark.slow
def test_the_sharded_model_computes_the_same_loss_and_gradients(mesh):
    batch = tiny_batch(built(PretrainingStage).model_config)
    reference = loss_and_grads(built(PretrainingStage), batch)
    for checkpointing in (False, True):
        stage = built(PretrainingStage)
        apply_fsdp(stage.model, mesh, "32-true", activation_checkpointing=checkpointing)
        loss, grads = loss_and_grads(stage, batch)
        assert loss == pytest.approx(reference[0], rel=1e-6)
        assert grads.keys() == reference[1].keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_compile_switch_compiles_every_block_in_place(mesh):
    stage = built(PretrainingStage)
    names = [name for name, _ in stage.named_parameters()]
    apply_fsdp(stage.model, mesh, "32-true", compile_blocks=True)
    assert all(block._compiled_call_impl is not None for block in shard_blocks(stage.model))
    assert [name for name, _ in stage.named_parameters()] == names  # checkpoints keep their keys


def test_precisions_that_would_cast_the_sharded_weights_are_refused():
    assert mixed_precision_policy("32-true").param_dtype is None
    with pytest.raises(UserInputError, match="bf16-mixed"):
        mixed_precision_policy("bf16-true")


def test_the_samplers_direct_calls_run_on_the_sharded_model(mesh):
    """Sampling calls parts of the model outside its forward (the token embedding, the cached prefill,
    the generation encoder/decoder): each is a group of its own, gathered when called."""
    reference, stage = built(PretrainingStage), built(PretrainingStage)
    apply_fsdp(stage.model, mesh, "32-true")
    prompts = PromptBatch.build([[1, 5, 6, 7], [1, 8]], pad_id=0)
    cfg = reference.model_config
    z = torch.randn(
        2,
        cfg.vae.latent_channels,
        cfg.latent_size,
        cfg.latent_size,
        generator=torch.Generator().manual_seed(0),
    )
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        velocities = [cached_velocity(s.model, prompts)(z, t) for s in (reference, stage)]
    torch.testing.assert_close(velocities[1], velocities[0], rtol=1e-5, atol=1e-6)


def test_what_cannot_run_sharded_refuses_in_one_line():
    classic = SimpleNamespace(strategy=FSDPStrategy())
    gathered = SimpleNamespace(strategy=FSDP2Strategy(save_distributed_checkpoint=False))
    with pytest.raises(NotImplementedError, match="FSDP2Strategy"):
        EMA().setup(classic, None, "fit")
    with pytest.raises(NotImplementedError, match="save_distributed_checkpoint"):
        EMA().setup(gathered, None, "fit")
    with pytest.raises(NotImplementedError, match="drop the callback or train with DDP"):
        Autoguidance(snapshot_step=1).setup(SimpleNamespace(strategy=FSDP2Strategy()), None, "fit")
