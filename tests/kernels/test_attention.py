"""The CPU attention kernel (kernels/attention.py): same results as transformers' SDPA, on every mask we use."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from jf_lightning.kernels import attention, use_cpu_kernels
from jf_lightning.kernels.attention import ATTN_IMPLEMENTATION, jf_sdpa_attention_forward, matmul_attention
from jf_lightning.models.config import tiny
from jf_lightning.models.llm import build_llm
from jf_lightning.models.masking import packed_attention_mask


def block_causal(segments: torch.Tensor) -> torch.Tensor:
    """(R, L) segment ids -> (R, 1, L, L) boolean "may attend": causal within a segment."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]


def test_matmul_attention_matches_sdpa_for_boolean_and_additive_masks():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 12, 8).unbind(0)  # (B=2, H=4, L=12, D=8) each
    allowed = block_causal(torch.tensor([[1] * 5 + [2] * 7, [1] * 9 + [2] * 3]))  # (2, 1, 12, 12)
    additive = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=0.3)
    torch.testing.assert_close(matmul_attention(q, k, v, allowed, 0.3), expected)
    torch.testing.assert_close(matmul_attention(q, k, v, additive, 0.3), expected)


def test_matmul_attention_gradients_match_sdpa_under_bf16():
    torch.manual_seed(0)
    q, k, v = (t.requires_grad_(True) for t in torch.randn(3, 2, 4, 12, 8).unbind(0))
    mask = block_causal(torch.tensor([[1] * 5 + [2] * 7, [1] * 9 + [2] * 3]))
    grad = torch.randn(2, 4, 12, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = matmul_attention(q, k, v, mask, 8**-0.5)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours.float(), expected, atol=0.05, rtol=0.05)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad),
                    strict=True):
        torch.testing.assert_close(a.float(), b, atol=0.05, rtol=0.05)


def test_grouped_query_heads_share_their_key_value_head():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 8, dtype=torch.bfloat16)  # (B, H=4, L, D)
    k, v = torch.randn(2, 2, 2, 6, 8, dtype=torch.bfloat16).unbind(0)  # (B, H_kv=2, L, D): 2 query heads each
    mask = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].expand(2, 1, 6, 6)
    out, weights = jf_sdpa_attention_forward(SimpleNamespace(training=False), q, k, v, mask, scaling=8**-0.5)
    expected = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(2, 1),
                                              v.float().repeat_interleave(2, 1), attn_mask=mask)
    assert weights is None
    torch.testing.assert_close(out.float(), expected.transpose(1, 2), atol=0.02, rtol=0.02)  # (B, L, H, D) back


def test_a_query_that_sees_no_key_gets_a_finite_output():
    q, k, v = torch.randn(3, 1, 1, 3, 4).unbind(0)
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    assert torch.isfinite(matmul_attention(q, k, v, mask, 0.5)).all()


def test_llm_under_bf16_takes_the_matmul_path_and_matches_transformers_sdpa(monkeypatch):
    torch.manual_seed(0)
    reference = build_llm(tiny().llm).eval()
    llm = build_llm(tiny().llm).eval()
    llm.load_state_dict(reference.state_dict())
    use_cpu_kernels(llm)
    assert llm.config._attn_implementation == ATTN_IMPLEMENTATION
    assert reference.config._attn_implementation == "sdpa"
    calls = []
    monkeypatch.setattr(attention, "matmul_attention", lambda *a: calls.append(1) or matmul_attention(*a))
    ids = torch.randint(0, tiny().llm.vocab_size, (2, 10))
    # packed rows: two samples in row 0, the second with its first token hidden (a dropped prompt)
    segments = torch.tensor([[1] * 4 + [2] * 6, [1] * 10])
    key_mask = torch.ones(2, 10, dtype=torch.bool)
    key_mask[0, 4] = False
    packed = packed_attention_mask(segments, key_mask, torch.float32)  # (2, 1, 10, 10)
    positions = torch.tensor([list(range(4)) + list(range(6)), list(range(10))])
    padding = torch.tensor([[0, 0, 0] + [1] * 7, [1] * 10])  # left padding, as the sampler's prompts
    real = padding.bool()  # a padding query's output is never read, and the two fill it differently
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for kwargs, rows in (({"attention_mask": packed, "position_ids": positions}, slice(None)),
                             ({"attention_mask": padding}, real)):
            ours, theirs = llm(ids, **kwargs).logits.float(), reference(ids, **kwargs).logits.float()
            torch.testing.assert_close(ours[rows], theirs[rows], atol=0.05, rtol=0.05)
    assert len(calls) == 2 * tiny().llm.num_layers  # both batches, every layer


def test_in_fp32_it_is_transformers_sdpa(monkeypatch):
    monkeypatch.setattr(attention, "matmul_attention", lambda *a: pytest.fail("fp32 must stay on SDPA's kernel"))
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    out, _ = jf_sdpa_attention_forward(SimpleNamespace(training=False, num_key_value_groups=1), q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2))


def test_an_llm_saved_with_the_kernel_on_loads_as_plain_llama(tmp_path):
    cfg = tiny().llm
    use_cpu_kernels(build_llm(cfg)).save_pretrained(tmp_path / "llm")
    saved = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert ATTN_IMPLEMENTATION not in json.dumps(saved)  # other tools can load the directory as plain Llama
    loaded = build_llm(replace(cfg, source=str(tmp_path / "llm")))
    assert loaded.config._attn_implementation == "sdpa"
