"""Packing: token-level samples -> one ``PackedBatch`` of fixed-length rows.

First-fit decreasing: samples sorted by length (longest first) go into the first row with room, a new
row when none has. The number of rows varies per batch; each row is filled to ``seq_len`` with padding
that is its own "sample" (position ids 0, 1, 2, ..., segment id 0, no labels) so that it needs no
special case in attention: segment 0 attends only to segment 0.
"""

from __future__ import annotations

from array import array
from dataclasses import replace

import torch

from jf_lightning.batch import IGNORE_INDEX, PackedBatch
from jf_lightning.data.templates import ImageSlot, Sample
from jf_lightning.data.transforms import stack_squares, unit_range


def _positions_and_segments(
    rows: list[list[int]], lengths: list[int], seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_ids, segment_ids), each (R, L) long: positions restart at 0 for every sample and for
    the trailing padding; segments number a row's samples 1, 2, ... and the padding 0."""
    if not rows:
        return torch.zeros(0, seq_len, dtype=torch.long), torch.zeros(0, seq_len, dtype=torch.long)
    spans, segments = [], []  # per row: its samples' lengths then the padding's
    for row in rows:
        used = [lengths[i] for i in row]
        spans.append(torch.tensor(used + [seq_len - sum(used)]))
        segments.append(torch.tensor(list(range(1, len(row) + 1)) + [0]))
    span = torch.cat(spans)  # (total segments,)
    starts = torch.cumsum(span, 0) - span  # flat index where each segment starts
    positions = torch.arange(len(rows) * seq_len) - torch.repeat_interleave(starts, span)
    segment_ids = torch.repeat_interleave(torch.cat(segments), span)
    return positions.view(len(rows), seq_len), segment_ids.view(len(rows), seq_len)


def _tensor(values: array, dtype: torch.dtype, shape: tuple[int, int]) -> torch.Tensor:
    """A tensor sharing ``values``' memory (frombuffer refuses an empty buffer)."""
    return torch.frombuffer(values, dtype=dtype).view(shape) if len(values) else torch.zeros(shape, dtype=dtype)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row; a row's samples keep the order they were placed in."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))  # stable: ties keep input order
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def _stack_images(slots: list[ImageSlot], image_size: int | None, normalise: bool = True) -> torch.Tensor:
    if not slots:
        size = image_size or 0
        return torch.zeros(0, 3, size, size)  # (0, 3, S, S): keeps the rank the model expects
    if all(s.pixels.dtype == torch.uint8 for s in slots):
        pixels = stack_squares([s.pixels for s in slots])  # (N, 3, S, S) viewing (N, S, S, 3) memory
        return unit_range(pixels) if normalise else pixels
    return torch.stack([s.pixels for s in slots])  # (N, 3, S, S)


def normalise_pixels(batch: PackedBatch) -> PackedBatch:
    """``batch`` with uint8 image tensors (``pack(..., normalise=False)``) in [-1, 1] floats."""
    if batch.und_pixels.dtype != torch.uint8 and batch.gen_pixels.dtype != torch.uint8:
        return batch
    return replace(
        batch,
        und_pixels=unit_range(batch.und_pixels) if batch.und_pixels.dtype == torch.uint8 else batch.und_pixels,
        gen_pixels=unit_range(batch.gen_pixels) if batch.gen_pixels.dtype == torch.uint8 else batch.gen_pixels,
    )


def _gen_tensors(gen: list[ImageSlot], image_size: int | None, normalise: bool):
    """(gen_pixels, gen_latents, repa_targets): the pre-encoded tensors only if every sample has them."""
    latents = torch.stack([s.latent for s in gen]) if gen and all(s.latent is not None for s in gen) else None
    targets = (
        torch.stack([s.repa_target for s in gen])
        if gen and all(s.repa_target is not None for s in gen)
        else None
    )
    if latents is not None and targets is not None:
        return _stack_images([], image_size), latents, targets  # nothing left to encode from pixels
    if any(s.pixels is None for s in gen):
        raise ValueError(
            "a generation sample has no image (pre-encoded latent.npy + siglip.npy only) but others in "
            "the batch need pixels: pre-encode all generation sources or none"
        )
    return _stack_images(gen, image_size, normalise), latents, targets


def pack(
    samples: list[Sample],
    seq_len: int,
    pad_id: int,
    batch_index: int = 0,
    image_size: int | None = None,
    normalise: bool = True,
) -> PackedBatch:
    """Pack ``samples`` into rows of ``seq_len`` tokens.

    ``image_size`` only sets the shape of empty image tensors, (0, 3, S, S), when a batch has no image
    of a kind. Images are stacked in slot order: by row, then by column. uint8 pixels are normalised to
    [-1, 1] floats, a batch at once, unless ``normalise=False`` (the loader workers: a quarter of the
    bytes to hand to the training process, which calls ``normalise_pixels``).
    """
    lengths = [len(s) for s in samples]
    for length in lengths:
        if length > seq_len:
            raise ValueError(f"a sample of {length} tokens does not fit seq_len={seq_len}")
    rows = first_fit_decreasing(lengths, seq_len)
    # Rows are joined as Python lists and converted once: torch.tensor() on a list costs ~70 ns an
    # element, array.array ~20 (a batch holds R x seq_len of each).
    ids, labels, key_mask = array("q"), array("q"), array("b")
    placed: dict[str, list[tuple[int, int, ImageSlot, bool]]] = {"und": [], "gen": []}
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            sample = samples[i]
            ids.extend(sample.input_ids)
            labels.extend(sample.labels)
            key_mask.extend(sample.key_mask)
            for slot in sample.slots:
                placed[slot.kind].append((r, col + slot.start, slot, sample.prompt_dropped))
            col += lengths[i]
        ids.extend([pad_id] * (seq_len - col))
        labels.extend([IGNORE_INDEX] * (seq_len - col))
        key_mask.extend([True] * (seq_len - col))
    shape = (len(rows), seq_len)
    position_ids, segment_ids = _positions_and_segments(rows, lengths, seq_len)
    und = sorted(placed["und"], key=lambda p: p[:2])
    gen = sorted(placed["gen"], key=lambda p: p[:2])
    gen_pixels, gen_latents, repa_targets = _gen_tensors([p[2] for p in gen], image_size, normalise)
    return PackedBatch(
        input_ids=_tensor(ids, torch.long, shape),  # (R, L)
        position_ids=position_ids,
        segment_ids=segment_ids,
        labels=_tensor(labels, torch.long, shape),  # (R, L)
        key_mask=_tensor(key_mask, torch.bool, shape),  # (R, L)
        und_pixels=_stack_images([p[2] for p in und], image_size, normalise),
        und_slots=torch.tensor([p[:2] for p in und], dtype=torch.long).reshape(-1, 2),  # (N_und, 2)
        gen_pixels=gen_pixels,
        gen_slots=torch.tensor([p[:2] for p in gen], dtype=torch.long).reshape(-1, 2),  # (N_gen, 2)
        gen_prompt_dropped=torch.tensor([p[3] for p in gen], dtype=torch.bool),  # (N_gen,)
        gen_latents=gen_latents,
        repa_targets=repa_targets,
        batch_index=batch_index,
    )
