import pytest
import torch

from jf_lightning.models.config import tiny
from jf_lightning.models.janusflow import JanusFlow
from jf_lightning.models.weights import (
    export_safetensors,
    load_release_files,
    load_release_weights,
    to_release,
)


def test_release_layout_uses_the_released_names_and_shapes(tiny_model, tiny_cfg):
    release = to_release(tiny_model.state_dict())
    hidden = 4 * tiny_cfg.gen_codec.width
    assert release["vision_gen_enc_model.mid_block.res_blocks.0.channelwise_norm.weight"].shape == (1, 1, 1, hidden)
    for name in [
        "beg_of_und_embed",
        "vision_und_enc_aligner.weight",
        "vision_und_enc_model.vision_tower.patch_embed.proj.weight",
        "vision_gen_enc_model.time_embed.linear_1.weight",
        "vision_gen_enc_model.in_conv.weight",
        "vision_gen_enc_model.mid_block.res_blocks.1.cond_embeds_mapper.weight",
        "vision_gen_enc_aligner.weight",
        "vision_gen_dec_aligner_norm.weight",
        "vision_gen_dec_aligner.weight",
        "vision_gen_dec_model.input_norm.weight",
        "vision_gen_dec_model.out_convs.0.unpatch_conv.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.lm_head.weight",
    ]:
        assert name in release, name
    assert not any(k.startswith("repa_head.") for k in release)


def test_export_then_import_reproduces_the_model(tmp_path, tiny_model, tiny_cfg):
    export_safetensors(tiny_model, tmp_path / "model.safetensors")
    torch.manual_seed(123)
    fresh = JanusFlow(tiny()).eval()
    fresh.repa_head.load_state_dict(tiny_model.repa_head.state_dict())  # not part of the release
    load_release_files(fresh, tmp_path)
    for (name, a), b in zip(tiny_model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_release_with_an_extra_attention_pool_head_loads(tiny_model):
    release = to_release(tiny_model.state_dict())
    release["vision_und_enc_model.vision_tower.attn_pool.latent"] = torch.zeros(1, 1, 8)
    load_release_weights(JanusFlow(tiny()), release)


def test_mismatched_release_is_refused_with_the_keys(tiny_model):
    release = to_release(tiny_model.state_dict())
    del release["vision_gen_enc_aligner.weight"]
    with pytest.raises(ValueError, match="vision_gen_enc_aligner.weight"):
        load_release_weights(JanusFlow(tiny()), release)
