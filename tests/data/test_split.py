"""Streams split over ranks x workers: one epoch reads every record exactly once, and a stream started
at any batch reads what an unbroken stream reads there."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.data.sources import SourceConfig
from jf_lightning.data.split import SlotReader
from jf_lightning.inputs import UserInputError


def text_shards(root, write_shard, sizes: list[int]) -> list[str]:
    return [
        write_shard(root / f"t-{s:02d}.tar", [{"__key__": f"s{s}-{i}", "txt": b"one red circle"} for i in range(n)])
        for s, n in enumerate(sizes)
    ]


@pytest.mark.parametrize("sizes", [[3, 5, 1, 4, 2, 6, 3, 2, 7], [6, 5]], ids=["dealt", "strided"])
def test_slots_read_each_record_once_per_epoch(tmp_path, write_shard, sizes):
    urls = text_shards(tmp_path, write_shard, sizes)
    slots = [SlotReader(urls, "text", s, 4, "seed") for s in range(4)]
    assert all(r.strided == (len(sizes) < 4) for r in slots)
    per_epoch = [len(range(s, sum(sizes), 4)) if slots[s].strided else sum(slots[s]._count(u) for u in slots[s].shards) for s in range(4)]  # fmt: skip
    assert min(per_epoch) > 0
    for epoch in range(2):
        keys = [r["__key__"] for s, r in enumerate(slots) for r in r.read(epoch * per_epoch[s], per_epoch[s])]
        assert sorted(keys) == sorted(f"s{s}-{i}" for s, n in enumerate(sizes) for i in range(n))
    if not slots[0].strided:  # each epoch its own shard order
        assert any(r.order(0) != r.order(1) for r in slots)


def test_a_fresh_reader_finds_any_position(tmp_path, write_shard):
    urls = text_shards(tmp_path, write_shard, [3, 5, 1, 4, 2, 6])
    for slot in (0, 3):
        whole = [r["__key__"] for r in SlotReader(urls, "text", slot, 4, "k").read(0, 17)]
        for p in (1, 4, 9, 16):
            assert [r["__key__"] for r in SlotReader(urls, "text", slot, 4, "k").read(p, 17 - p)] == whole[p:]


def make_dm(urls, tokenizer_dir, rank, world=2, num_workers=2, **kw):
    dm = JanusFlowDataModule(
        sources=[SourceConfig(urls, "text")],
        tokenizer=tokenizer_dir,
        image_size=8,
        num_und_tokens=4,
        num_gen_tokens=4,
        ratio_schedule=[(0, (0, 0, 1))],
        batch_size=3,
        seq_len=32,
        num_workers=num_workers,
        seed=3,
        **kw,
    )
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, accumulate_grad_batches=1, training=True)
    dm.setup("fit")
    return dm


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("sizes", [[3] * 8, [7, 5]], ids=["dealt", "strided"])
def test_two_ranks_two_workers_read_an_epoch_exactly_once(tmp_path, write_shard, tokenizer_dir, sizes):
    urls = text_shards(tmp_path, write_shard, sizes)
    per_rank = sum(sizes) // 3 // 2  # batches of 3 per rank that make one epoch
    keys = []
    for rank in (0, 1):
        batches = take(make_dm(urls, tokenizer_dir, rank).train_dataloader(), per_rank)
        assert [b.batch_index for b in batches] == list(range(rank, 2 * per_rank, 2))
        keys += [k.split("#")[1] for b in batches for k in b.sample_keys]
    assert Counter(keys) == Counter(f"s{s}-{i}" for s, n in enumerate(sizes) for i in range(n))


def test_too_few_samples_for_the_readers_is_refused_up_front(tmp_path, write_shard, tokenizer_dir):
    urls = text_shards(tmp_path, write_shard, [2, 1])
    with pytest.raises(UserInputError, match=r"hold 3 samples, fewer than the 4 readers") as err:
        make_dm(urls, tokenizer_dir, 0).train_dataloader()
    assert "\n" not in str(err.value)


def test_a_restarted_stream_reads_what_an_unbroken_one_reads(tmp_path, write_shard, tokenizer_dir):
    urls = text_shards(tmp_path, write_shard, [3, 5, 1, 4, 2, 6])
    unbroken = take(make_dm(urls, tokenizer_dir, 1).train_dataloader(), 8)  # batches 1, 3, ..., 15
    dm = make_dm(urls, tokenizer_dir, 1)
    dm.load_state_dict({"next_batch_index": 6, "origin": 0, "world_size": 2, "readers": 4})
    resumed = take(dm.train_dataloader(), 5)
    assert [b.batch_index for b in resumed] == [b.batch_index for b in unbroken[3:]] == [7, 9, 11, 13, 15]
    for a, b in zip(unbroken[3:], resumed):
        assert a.sample_keys == b.sample_keys and torch.equal(a.input_ids, b.input_ids)
    for batch in resumed:  # the guard lets the checkpoint's own batch through
        dm.on_before_batch_transfer(batch, 0)
    assert dm.state_dict() == {"next_batch_index": 16, "origin": 0, "world_size": 2, "readers": 4, "seed": 3, "batch_size": 3}  # fmt: skip


def test_resuming_elsewhere_resplits_or_refuses(tmp_path, write_shard, tokenizer_dir, caplog):
    urls = text_shards(tmp_path, write_shard, [3, 5, 1, 4, 2, 6])
    dm = make_dm(urls, tokenizer_dir, 0, num_workers=1)  # 2 readers, not the checkpoint's 4
    dm.load_state_dict({"next_batch_index": 6, "origin": 0, "world_size": 2, "readers": 4})
    with caplog.at_level(logging.WARNING):
        first = take(dm.train_dataloader(), 1)[0]
    assert first.batch_index == 6 and "start over at batch 6 with a fresh shuffle" in caplog.text
    assert dm.state_dict()["origin"] == 6
    dm = make_dm(urls, tokenizer_dir, 0, world=1)
    dm.load_state_dict({"next_batch_index": 6, "origin": 0, "world_size": 2, "readers": 4})
    with pytest.raises(UserInputError, match=r"split over 2 processes and this run has 1: resume on 2 processes"):
        take(dm.train_dataloader(), 1)


def test_a_loader_built_before_the_restore_is_caught(tmp_path, write_shard, tokenizer_dir):
    # Lightning issue #20550: a loader iterated before load_state_dict starts at batch 0, not the checkpoint's
    urls = text_shards(tmp_path, write_shard, [3, 5, 1, 4, 2, 6])
    dm = make_dm(urls, tokenizer_dir, 0, num_workers=0)
    batches = iter(dm.train_dataloader())
    dm.load_state_dict({"next_batch_index": 6, "origin": 0, "world_size": 2, "readers": 2})
    with pytest.raises(RuntimeError, match=r"first batch is 0, but its checkpoint continues at batch 6.*20550"):
        dm.on_before_batch_transfer(next(batches), 0)
