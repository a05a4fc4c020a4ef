"""Shapes-world shards: layout, contents read back with WebDataset, determinism, never overwriting."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from transformers import AutoTokenizer

from jf_lightning.shapes import geneval_specs, language
from jf_lightning.shapes import shards as shapes_shards
from jf_lightning.shapes import world as W
from jf_lightning.shapes.shards import FORMAT_VERSION, write_shapes_world

PARAMS = {"seed": 3, "train_samples": 7, "val_samples": 4, "image_size": 32, "samples_per_shard": 3}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "world"
    write_shapes_world(out, **PARAMS)
    return out


def _read(out, paths):
    """Raw samples (no decoders at all: members stay bytes), in shard order."""
    urls = [str(out / p) for p in paths]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def _digest(out):
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def test_layout_and_manifest(world_dir):
    manifest = json.loads((world_dir / "manifest.json").read_text())
    assert manifest["params"] == {"version": FORMAT_VERSION, **PARAMS}
    assert manifest["shards"]["und"] == {
        "train": ["und/train-000000.tar", "und/train-000001.tar", "und/train-000002.tar"],
        "val": ["und/val-000000.tar", "und/val-000001.tar"],
    }
    assert manifest["patterns"]["gen"] == {
        "train": "gen/train-{000000..000002}.tar",
        "val": "gen/val-{000000..000001}.tar",
    }
    for kind in ("und", "gen", "text"):
        assert manifest["counts"][kind] == {"train": 7, "val": 4}
        for split in ("train", "val"):
            assert all((world_dir / p).is_file() for p in manifest["shards"][kind][split])
            brace = list(
                wds.WebDataset(str(world_dir / manifest["patterns"][kind][split]), shardshuffle=False)
            )
            assert len(brace) == manifest["counts"][kind][split]
    assert sorted(p.name for p in world_dir.iterdir()) == ["gen", "manifest.json", "text", "tokenizer", "und"]
    assert not [p for p in world_dir.parent.iterdir() if "partial" in p.name]


def test_understanding_members(world_dir):
    manifest = json.loads((world_dir / "manifest.json").read_text())
    samples = _read(world_dir, manifest["shards"]["und"]["train"])
    assert len(samples) == 7 and len({s["__key__"] for s in samples}) == 7
    for s in samples:
        assert {k for k in s if not k.startswith("__")} == {"png", "json"}
        image = Image.open(io.BytesIO(s["png"]))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)
        meta = json.loads(s["json"])
        scene = W.Scene.from_dict(meta["scene"])
        # the image shows the scene the conversation is about
        assert np.array_equal(np.asarray(image), np.asarray(W.render_scene(scene, 32)))
        human, gpt = meta["conversations"]
        assert human["value"].startswith("<image>\n")
        qa = (meta["question_type"], human["value"].removeprefix("<image>\n"), gpt["value"])
        assert qa in language.questions_for_scene(scene)  # the answer is right for the image


def test_generation_and_text_members(world_dir):
    manifest = json.loads((world_dir / "manifest.json").read_text())
    gen = _read(world_dir, manifest["shards"]["gen"]["train"] + manifest["shards"]["gen"]["val"])
    assert len(gen) == 11
    for s in gen:
        assert {k for k in s if not k.startswith("__")} == {"png", "txt", "json"}
        prompt, meta = s["txt"].decode("utf-8"), json.loads(s["json"])
        scene = W.Scene.from_dict(meta["scene"])
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(s["png"]))), np.asarray(W.render_scene(scene, 32))
        )
        if "spec" in meta:
            assert meta["spec"]["prompt"] == prompt and geneval_specs.scene_satisfies_spec(scene, meta["spec"])
        else:
            assert prompt == language.caption(scene)
    text = _read(world_dir, manifest["shards"]["text"]["train"])
    assert len(text) == 7 and all(set(s) - {"__key__", "__url__", "__local_path__"} == {"txt"} for s in text)
    assert all(s["txt"].decode("utf-8").endswith(".") for s in text)


def test_tokenizer_is_saved(world_dir):
    tok = AutoTokenizer.from_pretrained(str(world_dir / "tokenizer"))
    manifest = json.loads((world_dir / "manifest.json").read_text())
    assert len(tok) == manifest["vocab_size"] < 512
    for s in _read(world_dir, manifest["shards"]["text"]["val"]):
        assert tok.unk_token_id not in tok(s["txt"].decode("utf-8"))["input_ids"]


def test_worker_processes_write_the_same_bytes(world_dir, tmp_path, monkeypatch):
    pools = []

    class SpyPool(shapes_shards.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(shapes_shards, "PARALLEL_MIN_SAMPLES", 0)
    monkeypatch.setattr(shapes_shards.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(shapes_shards, "ProcessPoolExecutor", SpyPool)
    write_shapes_world(tmp_path / "parallel", **PARAMS)
    assert pools == [(2,)]  # two worker processes wrote the shards
    assert _digest(tmp_path / "parallel") == _digest(world_dir)


def test_deterministic_and_val_differs(world_dir, tmp_path):
    again = tmp_path / "again"
    write_shapes_world(again, **PARAMS)
    assert _digest(again) == _digest(world_dir)  # byte-identical shards, tokenizer and manifest
    other = tmp_path / "other"
    write_shapes_world(other, **{**PARAMS, "seed": 4})
    assert _digest(other)["und/train-000000.tar"] != _digest(world_dir)["und/train-000000.tar"]
    manifest = json.loads((world_dir / "manifest.json").read_text())
    scenes = {
        split: {s["json"] for s in _read(world_dir, manifest["shards"]["gen"][split])}
        for split in ("train", "val")
    }
    assert not scenes["train"] & scenes["val"]


def test_idempotent_when_manifest_matches(world_dir):
    before = {p: p.stat().st_mtime_ns for p in world_dir.rglob("*")}
    manifest = write_shapes_world(world_dir, **PARAMS)
    assert manifest == json.loads((world_dir / "manifest.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in world_dir.rglob("*")} == before


def test_refuses_to_overwrite(world_dir, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=str(user)) as err:
        write_shapes_world(user, **PARAMS)
    assert "\n" not in str(err.value)
    assert [p.name for p in user.iterdir()] == ["notes.txt"] and (user / "notes.txt").read_text() == "mine"
    before = _digest(world_dir)
    with pytest.raises(ValueError, match="other parameters"):
        write_shapes_world(world_dir, **{**PARAMS, "train_samples": 8})
    assert _digest(world_dir) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_shapes_world(empty, **PARAMS)["params"]["seed"] == 3  # an empty directory is fine


def test_questions_per_image_writes_multi_turn_conversations(tmp_path):
    out = tmp_path / "multi"
    manifest = write_shapes_world(out, **PARAMS, questions_per_image=3)
    assert manifest["params"]["questions_per_image"] == 3
    for sample in _read(out, manifest["shards"]["und"]["train"]):
        meta = json.loads(sample["json"])
        scene = W.Scene.from_dict(meta["scene"])
        turns = meta["conversations"]
        assert len(turns) == 2 * min(3, len(language.questions_for_scene(scene)))
    with pytest.raises(ValueError, match="questions_per_image >= 1"):
        write_shapes_world(tmp_path / "none", **PARAMS, questions_per_image=0)


def test_image_after_question_is_recorded_and_written(tmp_path):
    manifest = write_shapes_world(tmp_path / "last", **PARAMS, image_after_question=1.0)
    assert manifest["params"]["image_after_question"] == 1.0
    for sample in _read(tmp_path / "last", manifest["shards"]["und"]["train"]):
        human = json.loads(sample["json"])["conversations"][0]["value"]
        assert human.endswith("\n<image>") and human.count("<image>") == 1
    # a world written before the option existed keeps its manifest (0 is not recorded)
    assert "image_after_question" not in write_shapes_world(tmp_path / "first", **PARAMS)["params"]
    with pytest.raises(ValueError, match="image_after_question"):
        write_shapes_world(tmp_path / "bad", **PARAMS, image_after_question=-0.1)


def test_script(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "data" / "make_shapes_world.py"
    spec = importlib.util.spec_from_file_location("make_shapes_world", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "s"
    script.main(
        ["--out", str(out), "--seed", "1", "--train-samples", "4", "--val-samples", "2", "--image-size", "32"]
    )
    assert json.loads((out / "manifest.json").read_text())["counts"]["text"] == {"train": 4, "val": 2}
    assert str(out) in capsys.readouterr().out
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(SystemExit) as exc:
        script.main(["--out", str(tmp_path / "busy"), "--train-samples", "4"])
    assert exc.value.code == 2
