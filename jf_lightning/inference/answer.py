"""Questions about images -> answer tokens with a model: the understanding callback's and ``jf chat``'s
shared path (the training transform at the model's image size, the data's template, greedy decoding)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from jf_lightning.data.templates import Templater
from jf_lightning.data.transforms import und_transform
from jf_lightning.inference.prompts import encode_understanding


@torch.no_grad()
def answer_ids(
    model,
    templater: Templater,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    precision: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """(N, max_new_tokens) long: greedy answer tokens, EOS-padded to a fixed width (rows of different
    ranks gather as one tensor; decoding cuts at EOS). ``precision``: entered around each decoding call
    (the trainer's precision context, or an autocast)."""
    device, size = model.embed_tokens.weight.device, model.cfg.image_size
    out = []
    for i in range(0, len(questions), batch_size):
        pixels = torch.stack([und_transform(im, size) for im in images[i : i + batch_size]])  # (b, 3, S, S)
        batch = encode_understanding(templater, list(questions[i : i + batch_size]), pixels).to(device)
        with precision or contextlib.nullcontext():
            new = model.answer(
                batch.input_ids,
                batch.attention_mask,
                batch.und_pixels,
                batch.und_slots,
                max_new_tokens=max_new_tokens,
                top_p=None,
                eos_token_id=templater.eos,
                pad_token_id=templater.pad,
            )  # (b, <= max_new_tokens)
        out.append(F.pad(new.cpu(), (0, max_new_tokens - new.shape[1]), value=templater.eos))
    return torch.cat(out) if out else torch.zeros(0, max_new_tokens, dtype=torch.long)
