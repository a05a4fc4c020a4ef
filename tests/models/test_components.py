"""Every component: shapes and dtypes, and a save -> load round trip through the real loading path."""

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from jf_lightning.models.config import VAEConfig, tiny
from jf_lightning.models.gen_codec import ConvNeXtBlock, GenerationDecoder, GenerationEncoder
from jf_lightning.models.janusflow import JanusFlow, load_janusflow
from jf_lightning.models.llm import build_llm
from jf_lightning.models.und_encoder import build_siglip, save_siglip
from jf_lightning.models.vae import PixelShuffleCodec, build_vae, random_autoencoder_kl

KL_CFG = VAEConfig(kind="autoencoder_kl", source=None, latent_channels=4, downsample_factor=2, block_out_channels=(8, 16),
                   layers_per_block=1)


def test_generation_codec_shapes():
    enc = GenerationEncoder(latent_channels=4, width=32, llm_width=64, patch_size=2, num_blocks=2, eps=1e-6)
    dec = GenerationDecoder(latent_channels=4, width=32, llm_width=64, patch_size=2, num_blocks=2, eps=1e-6)
    z, t = torch.randn(3, 4, 16, 16), torch.rand(3)
    skip, t_emb = enc(z, t)
    assert skip.shape == (3, 32, 8, 8) and t_emb.shape == (3, 64)
    v = dec(torch.randn(3, 32, 8, 8), skip, t_emb)
    assert v.shape == z.shape and v.dtype == torch.float32


def test_convnext_block_hands_its_linears_a_contiguous_channels_last_map():
    # the depthwise conv gets a channels-last copy, so its (N, H, W, C) permute is contiguous (see forward)
    block = ConvNeXtBlock(16, 8, 1e-6)
    seen = []
    block.norm.register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            block(torch.randn(2, 16, 8, 8), torch.randn(2, 8))
    assert seen == [True, True]


def test_convnext_block_under_autocast_matches_fp32_with_frozen_weights():
    # as sampling runs it: the EMA copy's weights need no grad; bf16 autocast agrees with fp32
    torch.manual_seed(0)
    block = ConvNeXtBlock(16, 8, 1e-6).eval().requires_grad_(False)
    x, cond = torch.randn(3, 16, 8, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = block(x, cond)
    torch.testing.assert_close(low.float(), block(x, cond), atol=0.1, rtol=0.05)


def test_pixel_shuffle_codec_is_exactly_invertible():
    codec = PixelShuffleCodec(factor=4, scale=2.0)  # a power of two keeps it bit-exact
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (2, 48, 8, 8)
    assert torch.equal(codec.decode(z), x)


def test_vae_refuses_fp16_with_a_clear_error():
    with pytest.raises(ValueError, match="fp16"):
        build_vae(replace(KL_CFG, dtype="float16"))


def test_autoencoder_kl_round_trip_through_from_pretrained(tmp_path):
    torch.manual_seed(0)
    random_autoencoder_kl(KL_CFG).save_pretrained(tmp_path / "vae")
    codec = build_vae(replace(KL_CFG, source=str(tmp_path / "vae")))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    assert codec.decode(z).shape == x.shape
    again = build_vae(replace(KL_CFG, source=str(tmp_path / "vae")))
    assert torch.equal(again.encode(x), z)
    assert not any(p.requires_grad for p in codec.parameters())


def test_autoencoder_kl_bf16_runs():
    codec = build_vae(replace(KL_CFG, dtype="bfloat16"))
    z = codec.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


def test_llm_round_trip_through_from_pretrained(tmp_path):
    cfg = tiny().llm
    torch.manual_seed(0)
    llm = build_llm(cfg).eval()
    llm.save_pretrained(tmp_path / "llm")
    loaded = build_llm(replace(cfg, source=str(tmp_path / "llm"))).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    assert torch.equal(llm(ids).logits, loaded(ids).logits)
    assert isinstance(loaded, type(AutoModelForCausalLM.from_config(llm.config)))


def test_llm_with_wrong_width_is_refused(tmp_path):
    cfg = tiny().llm
    build_llm(cfg).save_pretrained(tmp_path / "llm")
    with pytest.raises(ValueError, match="hidden_size"):
        build_llm(replace(cfg, source=str(tmp_path / "llm"), hidden_size=64))


def test_siglip_round_trip_through_timm_local_dir(tmp_path):
    cfg = tiny().siglip
    torch.manual_seed(0)
    enc = build_siglip(cfg).eval()
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    features = enc(x)
    assert features.shape == (2, cfg.num_tokens, cfg.width)
    save_siglip(enc, cfg, str(tmp_path / "siglip"))
    loaded = build_siglip(replace(cfg, source=str(tmp_path / "siglip"))).eval()
    assert torch.equal(loaded(x), features)


def test_siglip_intermediate_layer_selection():
    cfg = replace(tiny().siglip, select_layer=1)
    enc = build_siglip(cfg).eval()
    x = torch.rand(1, 3, cfg.image_size, cfg.image_size)
    assert enc(x).shape == (1, cfg.num_tokens, cfg.width)
    last = build_siglip(replace(cfg, select_layer=-1))
    last.load_state_dict(enc.state_dict())
    assert not torch.allclose(last.eval()(x), enc(x))


def test_whole_model_loads_every_part_from_local_directories(tmp_path):
    cfg = tiny()
    torch.manual_seed(0)
    reference = JanusFlow(cfg).eval()
    reference.language_model.save_pretrained(tmp_path / "llm")
    save_siglip(reference.vision_und_enc_model, cfg.siglip, str(tmp_path / "siglip"))
    cfg.llm.source, cfg.siglip.source = str(tmp_path / "llm"), str(tmp_path / "siglip")
    loaded = load_janusflow(cfg).eval()
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    ids = torch.randint(0, cfg.llm.vocab_size, (2, 5))
    assert torch.equal(loaded.language_model(ids).logits, reference.language_model(ids).logits)
    assert torch.equal(loaded.vision_und_enc_model(x), reference.vision_und_enc_model(x))


def test_model_embeddings_have_the_documented_shapes(tiny_model, tiny_cfg):
    n = 3
    x = torch.rand(n, 3, tiny_cfg.image_size, tiny_cfg.image_size) * 2 - 1
    und = tiny_model.embed_understanding(x)
    assert und.shape == (n, 1 + tiny_cfg.num_und_tokens, tiny_cfg.llm.hidden_size)
    z = tiny_model.vae.encode(x)
    assert z.shape == (n, tiny_cfg.vae.latent_channels, tiny_cfg.latent_size, tiny_cfg.latent_size)
    gen, skip, t_emb = tiny_model.embed_generation(z, torch.rand(n))
    assert gen.shape == (n, 1 + tiny_cfg.num_gen_tokens, tiny_cfg.llm.hidden_size)
    assert skip.shape == (n, tiny_cfg.gen_codec.width, tiny_cfg.gen_grid, tiny_cfg.gen_grid)
    states = torch.randn(n, tiny_cfg.num_gen_tokens, tiny_cfg.llm.hidden_size)
    assert tiny_model.decode_velocity(states, skip, t_emb).shape == z.shape
