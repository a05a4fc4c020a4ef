import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from jf_lightning.batch import PackedBatch
from jf_lightning.data.datamodule import JanusFlowDataModule, PackedBatchStream
from jf_lightning.data.sources import SourceConfig, decode, expand_urls, iter_members
from jf_lightning.inputs import UserInputError

T = 4


def make_dm(tiny_shards, tokenizer_dir, **kw):
    args = {
        "sources": [SourceConfig(tiny_shards[k], k) for k in ("und", "gen", "text")],
        "val_sources": [SourceConfig(tiny_shards[k], k) for k in ("und", "gen")],
        "tokenizer": tokenizer_dir,
        "image_size": 8,
        "num_und_tokens": T,
        "num_gen_tokens": T,
        "ratio_schedule": [(0, (30, 50, 20))],
        "batch_size": 5,
        "seq_len": 48,
        "num_workers": 0,
        "seed": 1,
        "val_batches": 3,
    }
    dm = JanusFlowDataModule(**(args | kw))
    dm.setup("fit")
    return dm


def kinds_of(batch: PackedBatch) -> Counter:
    samples = int((batch.segment_ids.diff(dim=1) > 0).sum() + (batch.segment_ids[:, 0] > 0).sum())
    return Counter(und=batch.num_und, gen=batch.num_gen, text=samples - batch.num_und - batch.num_gen)


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


def test_two_workers_interleave_batch_indices(tiny_shards, tokenizer_dir):
    dm = make_dm(tiny_shards, tokenizer_dir, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.batch_size is None
    batches = take(loader, 8)
    assert all(isinstance(b, PackedBatch) for b in batches)
    assert [b.batch_index for b in batches] == list(range(8))
    for b in batches:  # counts follow the schedule exactly
        assert kinds_of(b) == Counter(dm.schedule.kind_counts(b.batch_index, 5))
        assert b.input_ids.shape[1] == 48 and b.und_pixels.shape[1:] == (3, 8, 8)
    total = sum((kinds_of(b) for b in batches[:2]), Counter())
    assert total == Counter(und=3, gen=5, text=2)


def test_batches_are_deterministic(tiny_shards, tokenizer_dir):
    a = take(make_dm(tiny_shards, tokenizer_dir).train_dataloader(), 3)
    b = take(make_dm(tiny_shards, tokenizer_dir).train_dataloader(), 3)
    c = take(make_dm(tiny_shards, tokenizer_dir, seed=2).train_dataloader(), 3)
    assert all(
        torch.equal(x.input_ids, y.input_ids) and torch.equal(x.gen_pixels, y.gen_pixels)
        for x, y in zip(a, b)
    )
    assert any(not torch.equal(x.input_ids, y.input_ids) for x, y in zip(a, c))


def test_ranks_take_their_share(tiny_shards, tokenizer_dir):
    dm = make_dm(tiny_shards, tokenizer_dir)
    ds = dm.train_dataloader().dataset
    ds.rank, ds.world_size = 1, 2
    assert [b.batch_index for b in take(iter(ds), 3)] == [1, 3, 5]


def test_ranks_training_side_by_side_share_kind_counts(tiny_shards, tokenizer_dir):
    """2 ranks x 2 accumulated micro-batches: the two batches of a micro-step hold the same kinds (no rank
    waits at the all-reduce for another's extra generation samples), the mix stays exact over the run,
    and the schedule switches at its optimizer step (step 3 = micro-step 6 = batches 12 and 13)."""
    schedule = [(0, (30, 50, 20)), (3, (0, 100, 0))]
    per_rank = []
    for rank in (0, 1):
        dm = make_dm(tiny_shards, tokenizer_dir, ratio_schedule=schedule)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, accumulate_grad_batches=2)
        batches = take(dm.train_dataloader(), 8)
        assert [b.batch_index for b in batches] == list(range(rank, 16, 2))
        per_rank.append([kinds_of(b) for b in batches])
    assert per_rank[0] == per_rank[1]
    assert len({tuple(sorted(k.items())) for k in per_rank[0][:6]}) > 1  # 30:50:20 in 5s: counts vary
    assert sum((k for kinds in per_rank for k in kinds[:6]), Counter()) == Counter(und=18, gen=30, text=12)
    assert all(k == Counter(gen=5) for kinds in per_rank for k in kinds[6:])


def test_prompt_drop_in_training_never_in_validation(tiny_shards, tokenizer_dir):
    dm = make_dm(tiny_shards, tokenizer_dir, prompt_drop_prob=1.0)
    train = take(dm.train_dataloader(), 2)
    assert all(b.gen_prompt_dropped.all() and b.num_gen > 0 for b in train)
    for b in train:
        for r, c in b.gen_slots.tolist():
            assert not b.key_mask[r, c - 1] and b.key_mask[r, c]
    val = list(dm.val_dataloader())
    assert val and not any(b.gen_prompt_dropped.any() for b in val)


def test_validation_is_finite_and_the_same_for_any_worker_count(tiny_shards, tokenizer_dir):
    v0 = list(make_dm(tiny_shards, tokenizer_dir).val_dataloader())
    v2 = list(make_dm(tiny_shards, tokenizer_dir, num_workers=2).val_dataloader())
    assert [b.batch_index for b in v0] == [b.batch_index for b in v2] == [0, 1, 2]
    for x, y in zip(v0, v2):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.gen_pixels, y.gen_pixels)
    assert all(kinds_of(b)["text"] == 0 for b in v0)  # no text val source: the ratio drops it


def test_validation_draws_the_schedules_last_ratio(tiny_shards, tokenizer_dir):
    schedule = [(0, (100, 0, 0)), (5, (0, 100, 0))]  # und-only warm-up, then generation only
    val = list(make_dm(tiny_shards, tokenizer_dir, ratio_schedule=schedule).val_dataloader())
    assert all(kinds_of(b) == Counter(und=0, gen=5, text=0) for b in val)


def test_val_batches_that_ranks_cannot_share_evenly_are_refused(tiny_shards, tokenizer_dir):
    # unequal shares would leave one DDP rank waiting in a collective forever: refuse, naming the fix
    dm = make_dm(tiny_shards, tokenizer_dir, val_batches=3)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, accumulate_grad_batches=1)
    with pytest.raises(ValueError, match=r"data.val_batches=3 must be a multiple of the 2 processes: set it to 4"):
        dm.setup("fit")  # before any training step
    dm.val_batches = 4
    assert [b.batch_index for b in dm.val_dataloader()] == [1, 3]


def test_state_dict_resumes_the_batch_numbering(tiny_shards, tokenizer_dir):
    dm = make_dm(tiny_shards, tokenizer_dir)
    assert dm.state_dict()["next_batch_index"] == 0
    dm.load_state_dict({"next_batch_index": 10})
    assert [b.batch_index for b in take(dm.train_dataloader(), 2)] == [10, 11]


def test_trainer_resume_index_and_epochs_continue_the_stream(tiny_shards, tokenizer_dir):
    import lightning.pytorch as pl

    seen = []

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen.append(batch.batch_index)
            return (self.w * batch.input_ids.float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = make_dm(tiny_shards, tokenizer_dir, val_sources=None)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(), datamodule=dm)
    assert seen == [0, 1, 2, 3]
    assert dm.state_dict()["next_batch_index"] == 4


def test_missing_member_names_shard_key_and_member(tmp_path, tiny_shards, tokenizer_dir, write_shard, png):
    url = write_shard(tmp_path / "bad.tar", [{"__key__": "s0", "png": png((255, 0, 0), (8, 8))}])
    with pytest.raises(ValueError, match=r"bad\.tar.*'s0'.*txt") as err:
        decode(next(iter_members(url, "gen")), "gen")
    assert "\n" not in str(err.value)
    # the stream skips it; past max_consecutive_bad_samples failures in a row the run stops in one line
    dm = make_dm(
        tiny_shards,
        tokenizer_dir,
        sources=[SourceConfig(url, "gen")],
        ratio_schedule=[(0, (0, 1, 0))],
        max_consecutive_bad_samples=3,
    )
    with pytest.raises(UserInputError, match=r"4 samples in a row of gen source 0 .*missing_member.*bad\.tar.*'s0'") as err:
        next(iter(dm.train_dataloader()))
    assert "\n" not in str(err.value) and "data.max_consecutive_bad_samples" in str(err.value)


def test_bad_conversation_json_is_named(tmp_path, write_shard, png):
    conv = {"conversations": [{"from": "gpt", "value": "hi"}]}
    url = write_shard(
        tmp_path / "c.tar",
        [{"__key__": "k", "png": png((0, 0, 0), (4, 4)), "json": json.dumps(conv).encode()}],
    )
    with pytest.raises(ValueError, match=r"c\.tar.*'k'.*alternate"):
        decode(next(iter_members(url, "und")), "und")


def test_generation_json_is_kept_as_metadata(tmp_path, write_shard, png):
    meta = {"scene": {"shapes": []}}
    url = write_shard(
        tmp_path / "g.tar",
        [{"__key__": "k", "png": png((0, 0, 0), (4, 4)), "txt": b"a photo", "json": json.dumps(meta).encode()}],
    )
    assert decode(next(iter_members(url, "gen")), "gen").meta == meta
    url = write_shard(tmp_path / "b.tar", [{"__key__": "b", "png": png((0, 0, 0), (4, 4)), "txt": b"x", "json": b"{"}])
    with pytest.raises(ValueError, match=r"b\.tar.*'b'.*unreadable json"):
        decode(next(iter_members(url, "gen")), "gen")


def test_unknown_members_are_never_decoded(tmp_path, write_shard):
    url = write_shard(tmp_path / "p.tar", [{"__key__": "k", "txt": b"red", "pyd": b"\x80\x04not a pickle"}])
    member = next(iter_members(url, "text"))
    assert set(member) == {"__key__", "__url__", "txt"}


def test_pre_encoded_generation_needs_no_image(pre_encoded_gen_shard):
    raw = decode(next(iter_members(pre_encoded_gen_shard, "gen")), "gen")
    assert raw.image is None and raw.latent.shape == (4, 2, 2) and raw.siglip.shape == (4, 8)


def test_missing_shards_fail_at_setup(tmp_path, tiny_shards, tokenizer_dir):
    with pytest.raises(UserInputError, match=r"data.sources\[0\]: shard pattern .*nope-{0..1}") as err:
        make_dm(tiny_shards, tokenizer_dir, sources=[SourceConfig(str(tmp_path / "nope-{0..1}.tar"), "und")])
    assert "\n" not in str(err.value) and "data_root" not in str(err.value)  # an absolute pattern: no root hint
    with pytest.raises(FileNotFoundError, match=r"\*\.tar"):
        expand_urls(str(tmp_path / "*.tar"))
    assert len(expand_urls([tiny_shards["und"], tiny_shards["gen"]])) == 4


def test_a_drawn_kind_without_sources_fails_at_setup(tiny_shards, tokenizer_dir):
    with pytest.raises(ValueError, match="text"):
        make_dm(tiny_shards, tokenizer_dir, sources=[SourceConfig(tiny_shards["und"], "und")])
    dm = make_dm(
        tiny_shards,
        tokenizer_dir,
        sources=[SourceConfig(tiny_shards["gen"], "gen")],
        ratio_schedule=[(0, (0, 1, 0))],
    )
    assert take(dm.train_dataloader(), 1)[0].num_gen == 5


def test_source_weights_mix_sources_of_a_kind(tmp_path, tiny_shards, tokenizer_dir, write_shard):
    other = write_shard(tmp_path / "o.tar", [{"__key__": f"o{i}", "txt": b"zero"} for i in range(4)])
    dm = make_dm(
        tiny_shards,
        tokenizer_dir,
        ratio_schedule=[(0, (0, 0, 1))],
        sources=[SourceConfig(tiny_shards["text"], "text", 1.0), SourceConfig(other, "text", 3.0)],
    )
    ds: PackedBatchStream = dm.train_dataloader().dataset
    zero = dm.tokenizer.convert_tokens_to_ids("zero")
    batches = take(iter(ds), 8)
    share = sum(int((b.input_ids == zero).sum()) for b in batches) / (8 * 5)
    assert 0.55 < share < 0.95
