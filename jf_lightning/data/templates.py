"""Prompt templates and tokenization: one raw sample -> a token-level ``Sample``.

Token layout (``T_und`` / ``T_gen`` = image tokens per understanding / generation image):
- understanding image, anywhere in a prompt:
  ``<begin_of_image> <image_placeholder> x T_und <end_of_image>``; its slot is the ``1 + T_und`` tokens
  from ``<begin_of_image>`` on (the model writes the begin embedding and the encoder features there);
- generation image, always last: ``<begin_of_image> <image_placeholder> x T_gen``, no end tag; its slot
  is the same ``1 + T_gen`` tokens (time-embedding token, then the latents);
- every sample starts with BOS; understanding and text samples end with EOS.

Templates (``style``):
- pretrain caption: ``BOS <image> Generate the caption of this picture. <caption> EOS``
- pretrain QA:      ``BOS <image> <question> <answer> EOS`` (turns follow each other, one EOS at the end)
- sft (both tasks): ``BOS User: <question with image>\\n\\nAssistant: <answer> EOS`` per turn (the
  DeepSeek chat format: EOS closes each answer); a caption becomes a one-turn conversation
- gen pretrain:     ``BOS <prompt> <image>``;  gen sft: ``BOS User: <prompt>\\n\\nAssistant:<image>``
  (exactly what the release's sampler feeds: the SFT template with an empty assistant turn, then the
  image tag)
- text:             ``BOS <text> EOS``

Labels are shifted: ``labels[i]`` is the token at ``i + 1`` when that token is a target (answer or
caption tokens and their EOS; every token after BOS for text), else IGNORE_INDEX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from jf_lightning.batch import IGNORE_INDEX
from jf_lightning.data.sources import RawSample

TemplateStyle = Literal["pretrain", "sft"]
CAPTION_INSTRUCTION = "Generate the caption of this picture."
IMAGE_MARKER = "<image>"
"""Where a LLaVA conversation puts its image; a conversation without it gets the image first."""
BEGIN_OF_IMAGE, END_OF_IMAGE, IMAGE_PLACEHOLDER = "<begin_of_image>", "<end_of_image>", "<image_placeholder>"


@dataclass
class ImageSlot:
    """One image of a sample and where its embeddings go."""

    kind: Literal["und", "gen"]
    start: int
    """Offset of the slot's first token (the ``<begin_of_image>`` tag) inside the sample."""
    pixels: torch.Tensor | None = None
    """(3, S, S) float in [-1, 1], or uint8 (the packer normalises those, a batch at once); None for a
    fully pre-encoded generation sample."""
    latent: torch.Tensor | None = None
    """(C, h, w) float: pre-encoded scaled VAE latent (generation only)."""
    repa_target: torch.Tensor | None = None
    """(T_gen, D) float: pre-encoded REPA target (generation only)."""


@dataclass
class Sample:
    """A tokenized sample: per-token lists of equal length, plus its image slots."""

    input_ids: list[int]
    labels: list[int]
    """Already shifted (see the module docstring)."""
    key_mask: list[bool]
    """False on a dropped prompt (no query may attend to it)."""
    slots: list[ImageSlot] = field(default_factory=list)
    prompt_dropped: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


def _special_id(tokenizer, token: str) -> int:
    ids = tokenizer.convert_tokens_to_ids([token])
    if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {token!r} token: add it as a special token")
    return int(ids[0])


class Templater:
    """Turns raw samples into ``Sample``s with one tokenizer and one template style.

    The tokenizer needs bos/eos/pad tokens and the special tokens ``<begin_of_image>``,
    ``<end_of_image>``, ``<image_placeholder>``. Text is always encoded with ``add_special_tokens=False``:
    BOS and EOS are placed here, never by the tokenizer.
    """

    def __init__(
        self, tokenizer, num_und_tokens: int, num_gen_tokens: int, style: TemplateStyle = "pretrain"
    ):
        if style not in ("pretrain", "sft"):
            raise ValueError(f"template must be 'pretrain' or 'sft', got {style!r}")
        for name in ("bos", "eos", "pad"):
            if getattr(tokenizer, f"{name}_token_id") is None:
                raise ValueError(f"tokenizer has no {name}_token")
        self.tokenizer, self.style = tokenizer, style
        self.num_und_tokens, self.num_gen_tokens = num_und_tokens, num_gen_tokens
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.boi = _special_id(tokenizer, BEGIN_OF_IMAGE)
        self.eoi = _special_id(tokenizer, END_OF_IMAGE)
        self.placeholder = _special_id(tokenizer, IMAGE_PLACEHOLDER)
        # A fast tokenizer's own Rust encoder gives transformers' ids without its Python wrapping
        # (1.7x less time per call; a sample makes several calls).
        self._backend = tokenizer.backend_tokenizer if getattr(tokenizer, "is_fast", False) else None

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    # -- builders -------------------------------------------------------------------------------
    # A sample is built from pieces: (ids, is_target) runs of text and image markers (None). The
    # understanding pixels fill the image markers in order.

    def _assemble(self, pieces: list[tuple[list[int], bool] | None], images: list[torch.Tensor]) -> Sample:
        ids, targets, slots = [self.bos], [IGNORE_INDEX], []  # targets: the id where it is one
        images = list(images)
        for piece in pieces:
            if piece is None:  # an understanding image
                slots.append(ImageSlot("und", start=len(ids), pixels=images.pop(0)))
                block = [self.boi] + [self.placeholder] * self.num_und_tokens + [self.eoi]
                ids += block
                targets += [IGNORE_INDEX] * len(block)
            else:
                ids += piece[0]
                targets += piece[0] if piece[1] else [IGNORE_INDEX] * len(piece[0])
        return Sample(ids, targets[1:] + [IGNORE_INDEX], [True] * len(ids), slots)

    def _prompt_pieces(self, text: str, with_image: bool) -> list[tuple[list[int], bool] | None]:
        """Non-target pieces of ``text``, with an image marker at ``<image>`` (or first if absent)."""
        parts = text.split(IMAGE_MARKER)
        if with_image and len(parts) == 1:
            parts = ["", text]
        if len(parts) - 1 != (1 if with_image else 0):
            raise ValueError(f"expected {int(with_image)} {IMAGE_MARKER} marker(s) in {text[:80]!r}")
        pieces: list[tuple[list[int], bool] | None] = [(self.encode(parts[0]), False)]
        for part in parts[1:]:
            pieces += [None, (self.encode(part), False)]
        return pieces

    def conversation(self, turns: list[tuple[str, str]], pixels: torch.Tensor) -> Sample:
        """An understanding sample with one image, placed at the ``<image>`` marker of the first turn."""
        pieces: list[tuple[list[int], bool] | None] = []
        for i, (question, answer) in enumerate(turns):
            answer_ids = self.encode(" " + answer.strip())  # the space BPE would glue to the first word
            if self.style == "sft":
                pieces += [(self.encode("User: "), False)]
                pieces += self._prompt_pieces(question, with_image=i == 0)
                pieces += [(self.encode("\n\nAssistant:"), False), (answer_ids + [self.eos], True)]
            else:
                prefix = "" if i == 0 else "\n"
                pieces += self._prompt_pieces(prefix + question, with_image=i == 0)
                pieces += [(answer_ids, True)]
        if self.style == "pretrain":
            pieces.append(([self.eos], True))
        return self._assemble(pieces, [pixels])

    def caption(self, caption: str, pixels: torch.Tensor) -> Sample:
        """``<image>Generate the caption of this picture.<caption>``, in the chosen style."""
        return self.conversation([(IMAGE_MARKER + CAPTION_INSTRUCTION, caption)], pixels)

    def generation(
        self,
        prompt: str,
        pixels: torch.Tensor | None = None,
        latent: torch.Tensor | None = None,
        repa_target: torch.Tensor | None = None,
        drop_prompt: bool = False,
    ) -> Sample:
        """A generation sample; ``drop_prompt`` builds the unconditional (classifier-free) version."""
        prompt = prompt.strip()
        text = f"User: {prompt}\n\nAssistant:" if self.style == "sft" else prompt
        ids = [self.bos] + self.encode(text)
        start = len(ids)
        key_mask = [True] * len(ids)
        if drop_prompt:
            # As the release's sampler builds the unconditional branch: every prompt token after BOS
            # becomes pad and is masked out of attention (tokens[uncond, 1:] = pad_id, mask 0).
            ids = [self.bos] + [self.pad] * (start - 1)
            key_mask = [True] + [False] * (start - 1)
        ids += [self.boi] + [self.placeholder] * self.num_gen_tokens
        key_mask += [True] * (1 + self.num_gen_tokens)
        slot = ImageSlot("gen", start=start, pixels=pixels, latent=latent, repa_target=repa_target)
        return Sample(ids, [IGNORE_INDEX] * len(ids), key_mask, [slot], prompt_dropped=drop_prompt)

    def text(self, text: str, max_len: int | None = None) -> Sample:
        """A text-only sample: loss on every token after BOS. ``max_len`` truncates long documents
        (the EOS is then cut too: the document does not end there)."""
        ids = [self.bos] + self.encode(text) + [self.eos]
        if max_len is not None:
            ids = ids[:max_len]
        return Sample(ids, ids[1:] + [IGNORE_INDEX], [True] * len(ids))

    def from_raw(
        self,
        raw: RawSample,
        pixels: torch.Tensor | None,
        drop_prompt: bool = False,
        max_text_len: int | None = None,
    ) -> Sample:
        """Dispatch on the raw sample's layout; ``pixels`` is its transformed image (if any)."""
        if raw.kind == "text":
            return self.text(raw.text or "", max_len=max_text_len)
        if raw.kind == "und":
            if raw.turns is not None:
                return self.conversation(raw.turns, pixels)
            return self.caption(raw.text or "", pixels)
        latent = None if raw.latent is None else torch.from_numpy(np.asarray(raw.latent, np.float32))
        target = None if raw.siglip is None else torch.from_numpy(np.asarray(raw.siglip, np.float32))
        return self.generation(raw.text or "", pixels, latent, target, drop_prompt=drop_prompt)
