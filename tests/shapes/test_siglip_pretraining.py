"""Contrastive SigLIP pre-training: the loss, learning, saving in timm's format, never overwriting."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from jf_lightning.data.sources import ResampledStream, SourceConfig
from jf_lightning.data.transforms import und_transform
from jf_lightning.models.config import preset
from jf_lightning.models.und_encoder import build_siglip
from jf_lightning.shapes.shards import write_shapes_world
from jf_lightning.shapes.siglip_pretraining import (
    RECORD,
    SiglipPretrainingConfig,
    _PairTable,
    main,
    pretrain_siglip,
    sigmoid_loss,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("siglip") / "world"
    write_shapes_world(out, seed=0, train_samples=96, val_samples=0, image_size=32, samples_per_shard=48)
    return out


def _config(world, **kw):
    return SiglipPretrainingConfig(world=str(world), steps=2, batch_size=8, **kw)


def test_sigmoid_loss_rewards_matching_pairs_and_skips_repeated_captions():
    ids = torch.tensor([[1, 2], [3, 4], [5, 6]])
    matched = torch.full((3, 3), -8.0).fill_diagonal_(8.0)  # (B, B): image i scores caption i high
    assert sigmoid_loss(matched, ids) < 0.01 < sigmoid_loss(-matched, ids)
    # images 0 and 2 share a caption: scoring image 0 high on caption 2 costs nothing
    repeated = torch.tensor([[1, 2], [3, 4], [1, 2]])
    both = matched.clone()
    both[0, 2] = both[2, 0] = 8.0
    assert sigmoid_loss(both, repeated) == pytest.approx(sigmoid_loss(matched, repeated).item())
    assert sigmoid_loss(both, ids) > sigmoid_loss(matched, ids) + 5  # two confident mistakes over 3 rows


def test_pair_table_serves_the_batches_streaming_gave(world):
    """The in-memory table reads the shards once, then serves the very batches a ResampledStream over
    the same shards would (the reader before it): pretraining stays the same to the bit."""
    table = _PairTable(world, preset("tiny").siglip, max_text_len=48, seed=0, patch_labels=True)
    assert len(table.pixels) == 96 and [len(r) for r in table.shard_ranges] == [48, 48]
    urls = SourceConfig(urls=str(world / "gen" / "train-*.tar"), kind="gen").resolved()
    stream = ResampledStream([urls], "siglip/0")
    rng = np.random.default_rng(0)
    for _ in range(3):  # 120 draws: past one shard's end, into the next drawn shard
        raws = [stream.next(rng) for _ in range(40)]
        pixels, ids, labels = table.next(40)
        assert torch.equal(pixels, torch.stack([und_transform(r.image, 32) for r in raws]))
        assert ids.shape == (40, 48)
        assert ids.tolist() == table.tokenizer(
            [r.text for r in raws], padding="max_length", max_length=48, add_special_tokens=False
        ).input_ids
        assert torch.equal(labels, torch.from_numpy(np.stack([table._patch_labels(r) for r in raws])))
    assert _PairTable(world, preset("tiny").siglip, max_text_len=48, seed=0, patch_labels=False).next(2)[2] is None


def test_pretraining_learns_and_saves_a_loadable_siglip(world, tmp_path):
    logs = []
    out = tmp_path / "siglip"
    record = pretrain_siglip(out, replace(_config(world), steps=120, batch_size=16, lr=2e-3), log=logs.append)
    assert json.loads((out / RECORD).read_text()) == record
    assert logs[-1].startswith("siglip pretraining step 120/120")
    assert record["final_loss"] < 0.8 * record["first_loss"]
    assert record["retrieval_top1"] > 3 / 16  # image-to-caption matching well above chance (1/16)
    # the saved tower is what the model loads through siglip.source (timm's local-dir format)
    loaded = build_siglip(replace(preset("tiny").siglip, source=str(out)))
    again = build_siglip(replace(preset("tiny").siglip, source=str(out)))
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded(pixels), again(pixels))
    fresh = build_siglip(preset("tiny").siglip)
    assert not torch.allclose(loaded(pixels), fresh(pixels))


def test_patch_loss_teaches_each_patch_its_shape(world, tmp_path):
    logs = []
    config = replace(_config(world), steps=150, batch_size=16, lr=2e-3, dense_weight=1.0)
    record = pretrain_siglip(tmp_path / "dense", config, log=logs.append)
    assert "patch loss" in logs[-1]
    assert record["final_patch_loss"] < 0.5
    # three shapes: the patches on a shape are about 1/3 of each (squares a little more: triangles are
    # half their box); 150 small steps reach ~0.58, the demo's 1,000 steps of 128 reached 0.93
    assert record["patch_shape_accuracy"] > 0.5
    assert "patch_shape_accuracy" not in pretrain_siglip(tmp_path / "plain", _config(world))


def test_same_config_is_reused_and_other_contents_are_refused(world, tmp_path):
    out = tmp_path / "siglip"
    rng_state = torch.random.get_rng_state()
    record = pretrain_siglip(out, _config(world))
    # seeded privately: fit draws the same randomness whether it pretrained first or found the encoder
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert pretrain_siglip(out, _config(world)) == record
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(ValueError, match="pass another output directory") as err:
        pretrain_siglip(out, _config(world, seed=1))
    assert "\n" not in str(err.value)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match=str(mine)):
        pretrain_siglip(mine, _config(world))
    assert (mine / "notes.txt").read_text() == "keep" and len(list(mine.iterdir())) == 1


def test_a_rewritten_world_refuses_the_stale_encoder(world, tmp_path):
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    out = tmp_path / "siglip"
    pretrain_siglip(out, _config(copy))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["params"]["seed"] = 7  # the world was written again, differently, at the same path
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="pretrained on another version of") as err:
        pretrain_siglip(out, _config(copy))
    assert "\n" not in str(err.value)


def test_missing_world_and_script_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="no shapes world"):
        pretrain_siglip(tmp_path / "out", _config(tmp_path / "nowhere"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        main(["--world", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "no shapes world" in capsys.readouterr().err
