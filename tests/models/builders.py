"""Hand-laid packed batches for the model tests (the data pipeline has its own packer and tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from jf_lightning.batch import IGNORE_INDEX, PackedBatch

BOS, EOS, PAD, BOI, EOI, IMG = 1, 2, 3, 4, 5, 6


@dataclass
class Sample:
    """One sample: tokens, shifted labels, key mask, and image slots as (offset, kind)."""

    tokens: list[int]
    labels: list[int]
    key_mask: list[bool]
    slots: list[tuple[int, str]] = field(default_factory=list)


def und_sample(n_img: int, question: list[int], answer: list[int]) -> Sample:
    tokens = [BOS, BOI] + [IMG] * n_img + [EOI] + question + answer + [EOS]
    targets = answer + [EOS]
    first = len(tokens) - len(targets)  # index of the first target token
    labels = [IGNORE_INDEX] * len(tokens)
    for i, tok in enumerate(targets):
        labels[first + i - 1] = tok
    return Sample(tokens, labels, [True] * len(tokens), [(1, "und")])


def gen_sample(prompt: list[int], n_gen: int, dropped: bool = False) -> Sample:
    body = [PAD] * len(prompt) if dropped else prompt
    tokens = [BOS] + body + [BOI] + [IMG] * n_gen
    mask = [True] + [not dropped] * len(prompt) + [True] * (1 + n_gen)
    return Sample(tokens, [IGNORE_INDEX] * len(tokens), mask, [(1 + len(prompt), "gen")])


def text_sample(words: list[int]) -> Sample:
    tokens = [BOS] + words + [EOS]
    labels = tokens[1:] + [IGNORE_INDEX]
    return Sample(tokens, labels, [True] * len(tokens))


def pack_rows(rows: list[list[Sample]], seq_len: int, und_pixels, gen_pixels) -> PackedBatch:
    """Lay samples into rows in the given order; images are consumed in slot order per kind."""
    r = len(rows)
    ids = torch.full((r, seq_len), PAD)
    pos = torch.zeros(r, seq_len, dtype=torch.long)
    seg = torch.zeros(r, seq_len, dtype=torch.long)
    labels = torch.full((r, seq_len), IGNORE_INDEX)
    key = torch.ones(r, seq_len, dtype=torch.bool)
    slots = {"und": [], "gen": []}
    dropped = []
    for ri, row in enumerate(rows):
        col = 0
        for si, s in enumerate(row, start=1):
            n = len(s.tokens)
            ids[ri, col : col + n] = torch.tensor(s.tokens)
            pos[ri, col : col + n] = torch.arange(n)
            seg[ri, col : col + n] = si
            labels[ri, col : col + n] = torch.tensor(s.labels)
            key[ri, col : col + n] = torch.tensor(s.key_mask)
            for offset, kind in s.slots:
                slots[kind].append((ri, col + offset))
                if kind == "gen":
                    dropped.append(not all(s.key_mask))
            col += n
        pos[ri, col:] = torch.arange(seq_len - col)

    def as_slots(kind):
        return torch.tensor(slots[kind], dtype=torch.long).reshape(-1, 2)

    return PackedBatch(
        input_ids=ids,
        position_ids=pos,
        segment_ids=seg,
        labels=labels,
        key_mask=key,
        und_pixels=und_pixels,
        und_slots=as_slots("und"),
        gen_pixels=gen_pixels,
        gen_slots=as_slots("gen"),
        gen_prompt_dropped=torch.tensor(dropped, dtype=torch.bool),
    )
