"""Every component: shapes and dtypes, and a save -> load round trip through the real loading path."""

from dataclasses import replace

import pytest
import torch
from timm.layers.grn import GlobalResponseNorm
from transformers import AutoModelForCausalLM

from jf_lightning.models.config import VAEConfig, tiny
from jf_lightning.models.gen_codec import (
    ConvNeXtBlock,
    GenerationDecoder,
    GenerationEncoder,
    ResponseNorm,
    depthwise_conv,
)
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


def test_depthwise_conv_runs_in_fp32_under_cpu_autocast():
    # oneDNN's bf16 depthwise kernel is the slow one on CPU: under autocast the conv stays in fp32
    conv = torch.nn.Conv2d(8, 8, kernel_size=7, padding=3, groups=8)
    x = torch.randn(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = depthwise_conv(conv, x)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, conv(x))


@pytest.mark.parametrize("autocast", [False, True])
def test_depthwise_conv_gradients_equal_torchs(autocast):
    # its backward is our own (two depthwise forward convs): every gradient must be conv2d's
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, kernel_size=7, padding=3, groups=8)
    x = torch.randn(3, 8, 6, 5, requires_grad=True)  # not square: height and width must not swap
    grad = torch.randn(3, 8, 6, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ours = depthwise_conv(conv, x)
    expected = torch.autograd.grad(conv(x), (x, conv.weight, conv.bias), grad)
    got = torch.autograd.grad(ours, (x, conv.weight, conv.bias), grad)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_convnext_block_under_autocast_matches_fp32_with_frozen_weights():
    # as sampling runs it: the EMA copy's weights need no grad; bf16 autocast agrees with fp32
    torch.manual_seed(0)
    block = ConvNeXtBlock(16, 8, 1e-6).eval().requires_grad_(False)
    x, cond = torch.randn(3, 16, 8, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = block(x, cond)
    torch.testing.assert_close(low.float(), block(x, cond), atol=0.1, rtol=0.05)


def test_response_norm_is_timms_grn_and_keeps_bf16_maps_in_bf16():
    torch.manual_seed(0)
    ours = ResponseNorm(32, eps=1e-6, channels_last=True)
    torch.nn.init.normal_(ours.weight, std=0.5)
    torch.nn.init.normal_(ours.bias, std=0.5)
    timms = GlobalResponseNorm(32, eps=1e-6, channels_last=True)
    timms.load_state_dict(ours.state_dict())  # same parameters, so released weights load alike
    x = torch.randn(2, 4, 4, 32)  # (N, H, W, C)
    torch.testing.assert_close(ours(x), timms(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ours(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), timms(x.bfloat16().float()), atol=0.05, rtol=0.02)


def test_response_norm_gradient_is_finite_where_a_channel_is_zero_everywhere():
    # GELU can zero a channel over the whole map: a sqrt(sum(x^2)) norm then has an infinite gradient
    # (a demo run went NaN at step 459 that way)
    norm = ResponseNorm(8, eps=1e-6, channels_last=True)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 3, 3, 8)
    x[..., 0] = 0.0
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16())
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(norm.weight.grad).all()


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
