"""Hand-laid packed batches and tiny stages for the stage tests.

Rows follow batch.py's layout (see tests/models/builders.py, which lays out the samples): an
understanding sample, a text sample, and two generation samples (one with its prompt dropped) in
two rows, so every loss is present and samples share rows.
"""

from __future__ import annotations

import pytest
import torch

from jf_lightning.batch import PackedBatch
from jf_lightning.models.config import JanusFlowConfig
from jf_lightning.stages import AdaptationStage, PretrainingStage, SFTStage
from tests.models.builders import gen_sample, pack_rows, text_sample, und_sample

STAGES = {"adaptation": AdaptationStage, "pretraining": PretrainingStage, "sft": SFTStage}
ABLATIONS = ("A", "B", "C", "D", "E", "F")


def tiny_batch(
    cfg: JanusFlowConfig, seed: int = 0, batch_index: int = 0, seq_len: int | None = None
) -> PackedBatch:
    """Two rows: [und, text] and [gen, gen (prompt dropped)], with the parts ``cfg`` can take."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.image_size
    row0, row1 = [], []
    if cfg.has_understanding:
        row0.append(und_sample(cfg.num_und_tokens, question=[20, 21, 22], answer=[30, 31]))
    row0.append(text_sample([40, 41, 42, 43]))
    if cfg.generation:
        row1 = [
            gen_sample([50, 51, 52], cfg.num_gen_tokens),
            gen_sample([53, 54], cfg.num_gen_tokens, dropped=True),
        ]
    rows = [row0] + ([row1] if row1 else [])
    longest = max(sum(len(s.tokens) for s in row) for row in rows)
    seq_len = seq_len or longest + 3  # a little padding at the end of every row
    n_und, n_gen = int(cfg.has_understanding), len(row1)
    batch = pack_rows(
        rows,
        seq_len,
        und_pixels=torch.rand(n_und, 3, size, size, generator=g) * 2 - 1,
        gen_pixels=torch.rand(n_gen, 3, size, size, generator=g) * 2 - 1,
    )
    batch.batch_index = batch_index
    return batch


def built(stage_cls, **kwargs):
    """A stage with its model built (seeded init, as a fresh run would have)."""
    torch.manual_seed(0)
    stage = stage_cls(**kwargs)
    stage.configure_model()
    return stage


@pytest.fixture
def sft_stage():
    return built(SFTStage)
