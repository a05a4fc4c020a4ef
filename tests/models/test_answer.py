"""Answer decoding with transformers' KV cache matches step-by-step full forwards."""

import torch

from tests.models.builders import BOI, BOS, EOI, IMG, pack_rows, und_sample


def _greedy_by_full_forward(model, prompt, pixels, steps):
    """Reference: rerun the whole packed sequence for every new token."""
    tokens = list(prompt.tokens)
    for _ in range(steps):
        sample = und_sample(model.cfg.num_und_tokens, tokens[model.cfg.num_und_tokens + 3 :], [])
        sample.tokens = sample.tokens[:-1]  # no EOS: the prompt is still open
        sample.labels, sample.key_mask = sample.labels[:-1], sample.key_mask[:-1]
        logits = model(pack_rows([[sample]], len(sample.tokens), pixels, pixels[:0]), return_logits=True).logits
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt.tokens) :]


def test_greedy_answer_with_cache_equals_full_recomputation(tiny_model, tiny_cfg):
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, tiny_cfg.image_size, tiny_cfg.image_size) * 2 - 1
    prompt = und_sample(tiny_cfg.num_und_tokens, [20, 21, 22], [])
    prompt.tokens = prompt.tokens[:-1]  # drop EOS: ask, don't answer
    assert prompt.tokens[:2] == [BOS, BOI] and prompt.tokens[2 + tiny_cfg.num_und_tokens] == EOI
    assert prompt.tokens[2] == IMG
    ids = torch.tensor([prompt.tokens])
    new = tiny_model.answer(
        ids, torch.ones_like(ids), pixels, torch.tensor([[0, 1]]), max_new_tokens=5, eos_token_id=None, pad_token_id=0
    )
    assert new.shape == (1, 5)
    assert new[0].tolist() == _greedy_by_full_forward(tiny_model, prompt, pixels, 5)


def test_top_p_sampling_is_seeded_and_in_vocabulary(tiny_model, tiny_cfg):
    pixels = torch.rand(1, 3, tiny_cfg.image_size, tiny_cfg.image_size) * 2 - 1
    prompt = und_sample(tiny_cfg.num_und_tokens, [20], [])
    ids = torch.tensor([prompt.tokens[:-1]])
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(tiny_model.answer(ids, torch.ones_like(ids), pixels, torch.tensor([[0, 1]]), max_new_tokens=4,
                                      top_p=0.9, temperature=1.0, pad_token_id=0))
    assert torch.equal(outs[0], outs[1])
    assert int(outs[0].max()) < tiny_cfg.llm.vocab_size
