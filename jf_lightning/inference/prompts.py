"""Evaluation prompts, tokenized exactly as the training data was, and generated answers decoded.

Every prompt here is cut from a sample the data pipeline's own :class:`Templater` builds, so a change
of template reaches training and evaluation together and the model is never asked in a format it was
not trained on:

- generation: the template's generation sample up to (not including) ``<begin_of_image>``, which is
  what :func:`jf_lightning.flow.sampler.generate_latents` takes;
- understanding: the template's conversation with an empty answer, cut before its first target token,
  left-padded into the arguments of :meth:`JanusFlow.answer`; answers decoded and cut at EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jf_lightning.batch import IGNORE_INDEX
from jf_lightning.data.templates import Templater


def generation_prompt_ids(templater: Templater, prompt: str) -> list[int]:
    """BOS + the template's prompt tokens, stopping before ``<begin_of_image>`` (the sampler's input)."""
    sample = templater.generation(prompt)
    return sample.input_ids[: sample.slots[0].start]


def understanding_prompt_ids(
    templater: Templater, question: str, pixels: torch.Tensor
) -> tuple[list[int], int]:
    """(prompt ids up to where the answer starts, offset of the image slot) for one question.

    ``question`` is the human turn as the data writes it (``"<image>\\n..."``; without the marker the
    image goes first, as in training). pixels: (3, S, S) in [-1, 1].
    """
    sample = templater.conversation([(question, "")], pixels)
    # labels are shifted: labels[i] != IGNORE means token i + 1 is the first answer token (or the
    # EOS of an empty answer); everything before it is the prompt the model conditions on.
    first = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX) + 1
    return sample.input_ids[:first], sample.slots[0].start


@dataclass
class AnswerBatch:
    """Left-padded understanding prompts: the arguments of ``JanusFlow.answer``."""

    input_ids: torch.Tensor  # (B, P) long, pad on the left
    attention_mask: torch.Tensor  # (B, P) long, 0 on the padding
    und_pixels: torch.Tensor  # (B, 3, S, S) float in [-1, 1]
    und_slots: torch.Tensor  # (B, 2) long: (row, column of <begin_of_image>) in padded coordinates

    def to(self, device) -> AnswerBatch:
        return AnswerBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.und_pixels, self.und_slots))
        )


def encode_understanding(templater: Templater, questions: list[str], pixels: torch.Tensor) -> AnswerBatch:
    """One image per question; pixels (B, 3, S, S). Left padding keeps every prompt's last token in
    the last column, where decoding continues."""
    prompts = [understanding_prompt_ids(templater, q, p) for q, p in zip(questions, pixels, strict=True)]
    width = max(len(ids) for ids, _ in prompts)
    input_ids = torch.full((len(prompts), width), templater.pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    slots = torch.zeros(len(prompts), 2, dtype=torch.long)
    for row, (ids, start) in enumerate(prompts):
        shift = width - len(ids)
        input_ids[row, shift:] = torch.tensor(ids)
        mask[row, shift:] = 1
        slots[row] = torch.tensor([row, shift + start])
    return AnswerBatch(input_ids, mask, pixels, slots)


def decode_answers(tokenizer, new_ids: torch.Tensor, eos_id: int | None) -> list[str]:
    """(B, N) generated ids -> texts, each cut at its first EOS (decoding may run past it)."""
    texts = []
    for row in new_ids.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts
