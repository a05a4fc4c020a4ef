import pytest
import torch

from jf_lightning.batch import IGNORE_INDEX
from jf_lightning.data.packing import first_fit_decreasing, pack
from jf_lightning.data.templates import Templater

T_UND, T_GEN, S = 3, 4, 8


@pytest.fixture
def tpl(tokenizer):
    return Templater(tokenizer, T_UND, T_GEN, "sft")


def img(value: float) -> torch.Tensor:
    return torch.full((3, S, S), value)


def mixed_samples(tpl):
    colors = ["red", "green", "blue", "yellow", "purple", "black"]
    samples = []
    for i, c in enumerate(colors):
        samples.append(tpl.caption(f"A {c} circle" + " and a square" * i, img(i)))
        samples.append(
            tpl.generation(f"a {c} square" + " on the left" * i, img(10 + i), drop_prompt=i % 2 == 1)
        )
        samples.append(tpl.text(f"There is one {c} triangle." * (i + 1)))
    return samples


def runs(batch):
    """(row, start, length) of every sample in the packed batch, from the segment ids."""
    out = []
    for r in range(batch.num_rows):
        seg = batch.segment_ids[r].tolist()
        start = 0
        while start < len(seg) and seg[start] != 0:
            end = start
            while end < len(seg) and seg[end] == seg[start]:
                end += 1
            out.append((r, start, end - start))
            start = end
    return out


def test_pack_keeps_every_sample_identical(tpl):
    samples = mixed_samples(tpl)
    batch = pack(samples, seq_len=64, pad_id=tpl.pad, batch_index=7, image_size=S)
    assert batch.batch_index == 7 and batch.seq_len == 64
    found = runs(batch)
    assert len(found) == len(samples)
    unmatched = list(samples)
    for r, start, n in found:
        ids = batch.input_ids[r, start : start + n].tolist()
        sample = next(s for s in unmatched if s.input_ids == ids)
        unmatched.remove(sample)
        assert batch.labels[r, start : start + n].tolist() == sample.labels
        assert batch.key_mask[r, start : start + n].tolist() == sample.key_mask
        assert batch.position_ids[r, start : start + n].tolist() == list(range(n))  # restarts per sample
    assert not unmatched


def test_padding_is_its_own_sample(tpl):
    batch = pack(mixed_samples(tpl), seq_len=64, pad_id=tpl.pad, image_size=S)
    for r in range(batch.num_rows):
        pad = batch.segment_ids[r] == 0
        n = int(pad.sum())
        assert pad[batch.seq_len - n :].all()  # the tail only
        assert batch.position_ids[r, pad].tolist() == list(range(n))
        assert (batch.input_ids[r, pad] == tpl.pad).all()
        assert (batch.labels[r, pad] == IGNORE_INDEX).all() and batch.key_mask[r, pad].all()
        segs = batch.segment_ids[r, ~pad].unique_consecutive().tolist()
        assert segs == list(range(1, len(segs) + 1))


def test_slots_point_at_begin_of_image_and_images_follow_slot_order(tpl):
    samples = mixed_samples(tpl)
    batch = pack(samples, seq_len=64, pad_id=tpl.pad, image_size=S)
    assert batch.num_und == 6 and batch.num_gen == 6
    for slots in (batch.und_slots, batch.gen_slots):
        assert slots.tolist() == sorted(slots.tolist())
        for r, c in slots.tolist():
            assert batch.input_ids[r, c] == tpl.boi and batch.position_ids[r, c] > 0
    for k, (r, c) in enumerate(batch.und_slots.tolist()):  # und image i has value i; find its sample
        assert batch.input_ids[r, c + 1 : c + 1 + T_UND].eq(tpl.placeholder).all()
        assert batch.input_ids[r, c + 1 + T_UND] == tpl.eoi
    und_values = sorted(int(p[0, 0, 0]) for p in batch.und_pixels)
    assert und_values == list(range(6)) and batch.und_pixels.shape == (6, 3, S, S)
    for k, (r, c) in enumerate(batch.gen_slots.tolist()):
        dropped = not batch.key_mask[r, c - 1]
        assert bool(batch.gen_prompt_dropped[k]) == dropped
        assert batch.gen_pixels[k, 0, 0, 0] >= 10
        assert batch.input_ids[r, c + 1 : c + 1 + T_GEN].eq(tpl.placeholder).all()
    assert batch.gen_latents is None and batch.repa_targets is None


def test_first_fit_decreasing():
    rows = first_fit_decreasing([5, 3, 8, 2, 2], 10)
    assert rows == [[2, 3], [0, 1, 4]]
    assert first_fit_decreasing([], 4) == []


def test_too_long_sample_is_a_one_line_error(tpl):
    long = tpl.text("red " * 40)
    with pytest.raises(ValueError, match=rf"{len(long)} tokens does not fit seq_len=16") as err:
        pack([long], seq_len=16, pad_id=tpl.pad)
    assert "\n" not in str(err.value)


def test_empty_kinds_keep_their_rank(tpl):
    batch = pack([tpl.text("red")], seq_len=8, pad_id=tpl.pad, image_size=S)
    assert batch.und_pixels.shape == (0, 3, S, S) and batch.und_slots.shape == (0, 2)
    assert batch.gen_pixels.shape == (0, 3, S, S) and batch.gen_prompt_dropped.shape == (0,)


def test_no_samples_pack_into_no_rows(tpl):
    batch = pack([], seq_len=8, pad_id=tpl.pad, image_size=S)
    for name in ("input_ids", "position_ids", "segment_ids", "labels", "key_mask"):
        assert getattr(batch, name).shape == (0, 8), name
    assert batch.und_pixels.shape == (0, 3, S, S)


def test_pre_encoded_generation(tpl):
    def pre(i, pixels=None):
        return tpl.generation("a red square", pixels, torch.full((4, 2, 2), i), torch.full((T_GEN, 6), i))

    batch = pack([pre(0), pre(1)], seq_len=64, pad_id=tpl.pad, image_size=S)
    assert batch.gen_pixels.shape == (0, 3, S, S)
    assert batch.gen_latents.shape == (2, 4, 2, 2) and batch.repa_targets.shape == (2, T_GEN, 6)
    mixed = pack([pre(0, img(1)), tpl.generation("a blue square", img(2))], seq_len=64, pad_id=tpl.pad)
    assert mixed.gen_latents is None and mixed.gen_pixels.shape == (2, 3, S, S)
    with pytest.raises(ValueError, match="pre-encode all generation sources or none"):
        pack([pre(0), tpl.generation("a blue square", img(2))], seq_len=64, pad_id=tpl.pad)


def test_batch_moves_with_lightning_transfer(tpl):
    from lightning.pytorch.utilities import move_data_to_device

    batch = pack(mixed_samples(tpl), seq_len=64, pad_id=tpl.pad, batch_index=3, image_size=S)
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert type(moved) is type(batch) and moved.batch_index == 3
    assert torch.equal(moved.input_ids, batch.input_ids)
