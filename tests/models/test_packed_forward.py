"""A packed row must give each sample exactly what it gets alone: attention never crosses samples."""

import torch

from tests.models.builders import gen_sample, pack_rows, text_sample, und_sample


def _inputs(cfg, n_und, n_gen, seed=0):
    g = torch.Generator().manual_seed(seed)
    size, lat = cfg.image_size, cfg.latent_size
    und = torch.rand(n_und, 3, size, size, generator=g) * 2 - 1
    gen = torch.rand(n_gen, 3, size, size, generator=g) * 2 - 1
    z = torch.randn(n_gen, cfg.vae.latent_channels, lat, lat, generator=g)
    t = torch.rand(n_gen, generator=g)
    return und, gen, z, t


def test_packed_row_of_three_mixed_samples_equals_each_alone(tiny_model, tiny_cfg):
    u = und_sample(tiny_cfg.num_und_tokens, [20, 21, 22], [30, 31])
    g = gen_sample([40, 41, 42, 43], tiny_cfg.num_gen_tokens)
    t = text_sample([50, 51, 52, 53, 54])
    und, gen, z, times = _inputs(tiny_cfg, 1, 1)
    seq_len = len(u.tokens) + len(g.tokens) + len(t.tokens) + 5  # + trailing padding

    packed = tiny_model(pack_rows([[u, g, t]], seq_len, und, gen), z, times, return_logits=True)
    alone = {
        "und": tiny_model(pack_rows([[u]], len(u.tokens), und, gen[:0]), return_logits=True),
        "gen": tiny_model(pack_rows([[g]], len(g.tokens), und[:0], gen), z, times, return_logits=True),
        "text": tiny_model(pack_rows([[t]], len(t.tokens), und[:0], gen[:0]), return_logits=True),
    }
    nu, ng = len(u.tokens), len(g.tokens)
    torch.testing.assert_close(packed.logits[0, :nu], alone["und"].logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed.logits[0, nu : nu + ng], alone["gen"].logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        packed.logits[0, nu + ng : nu + ng + len(t.tokens)], alone["text"].logits[0], atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(packed.velocity, alone["gen"].velocity, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed.repa_pred, alone["gen"].repa_pred, atol=1e-4, rtol=1e-4)


def test_ar_loss_counts_only_labelled_tokens(tiny_model, tiny_cfg):
    u = und_sample(tiny_cfg.num_und_tokens, [20, 21], [30, 31, 32])
    t = text_sample([50, 51, 52])
    und, gen, _, _ = _inputs(tiny_cfg, 1, 0)
    batch = pack_rows([[u, t]], len(u.tokens) + len(t.tokens), und, gen)
    out = tiny_model(batch, return_logits=True)
    assert out.num_ar_tokens == 4 + 4  # answer + EOS, and text after BOS + EOS
    where = batch.labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[where], batch.labels[where])
    torch.testing.assert_close(out.ar_loss, expected)


def test_dropped_prompt_is_invisible(tiny_model, tiny_cfg):
    """The CFG drop hides the prompt: any prompt gives the same velocity once it is dropped."""
    _, gen, z, times = _inputs(tiny_cfg, 0, 1)
    a = gen_sample([40, 41, 42], tiny_cfg.num_gen_tokens, dropped=True)
    b = gen_sample([60, 61, 62], tiny_cfg.num_gen_tokens, dropped=False)
    b_ids_dropped = pack_rows([[b]], len(b.tokens), gen[:0], gen)
    b_ids_dropped.key_mask[0, 1:4] = False  # same tokens, masked: must equal the pad-replaced one
    va = tiny_model(pack_rows([[a]], len(a.tokens), gen[:0], gen), z, times).velocity
    vb = tiny_model(b_ids_dropped, z, times).velocity
    vc = tiny_model(pack_rows([[b]], len(b.tokens), gen[:0], gen), z, times).velocity
    torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(va, vc, atol=1e-4)
