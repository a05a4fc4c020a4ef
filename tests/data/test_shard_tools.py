"""``jf shards`` tools on small inputs made here: every good input sample arrives once, in the layout
the reader takes; each kind of bad input is skipped and counted exactly; a rerun after an interruption
writes only the unfinished shard."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jf_lightning.commands.shards import main as shards_main
from jf_lightning.data.sources import decode, iter_members
from jf_lightning.data.writing.hf_dataset import HFDatasetJob
from jf_lightning.data.writing.image_folder import ImageFolderJob
from jf_lightning.data.writing.llava import LlavaJob
from jf_lightning.data.writing.text import TextJob
from jf_lightning.data.writing.writer import digest, verify_shard, write_shards
from jf_lightning.inputs import UserInputError


def image_bytes(color: tuple[int, int, int], size=(20, 14), fmt="PNG", mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buffer, format=fmt)
    return buffer.getvalue()


def read_out(out: Path, kind: str) -> dict[str, tuple]:
    """source -> (decoded sample, member suffixes), read through the reader; a source twice fails."""
    sources = {}
    for marker in sorted(out.glob("*.done.json")):
        sources |= dict(json.loads(marker.read_text())["samples"])
    got = {}
    for tar in sorted(out.glob("*.tar")):
        for members in iter_members(str(tar), kind):
            raw = decode(members, kind)
            source = sources[raw.key]
            assert source not in got, f"{source} written twice"
            got[source] = (raw, sorted(k for k in members if not k.startswith("__")))
    assert not list(out.glob(".*partial*")), "a temporary file was left behind"
    return got


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Six good captioned images (png, jpeg, gif, a CMYK tiff; one in a subfolder) and one of each bad input."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    good = {
        "a.png": "PNG",
        "b.jpg": "JPEG",
        "sub/c.png": "PNG",
        "d.gif": "GIF",
        "e.png": "PNG",
        "f.tiff": "TIFF",
    }
    for i, (name, fmt) in enumerate(good.items()):
        mode = "CMYK" if fmt == "TIFF" else "RGB"
        (root / name).write_bytes(image_bytes((40 * i, 0, 0), fmt=fmt, mode=mode))
        (root / name).with_suffix(".txt").write_text(f"caption of {name}")
    (root / "junk.jpg").write_bytes(b"not an image at all")
    (root / "junk.txt").write_text("caption")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise, "PNG")
    (root / "truncated.png").write_bytes(noise.getvalue()[: len(noise.getvalue()) // 2])  # header intact
    (root / "truncated.txt").write_text("caption")
    (root / "latin1.png").write_bytes(image_bytes((9, 9, 9)))
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    (root / "blank.png").write_bytes(image_bytes((8, 8, 8)))
    (root / "blank.txt").write_text("  \n")
    (root / "uncaptioned.png").write_bytes(image_bytes((7, 7, 7)))
    (root / "orphan.txt").write_text("no image")
    return root


GOOD = ["a.png", "b.jpg", "d.gif", "e.png", "f.tiff", "sub/c.png"]


def test_image_folder_side_car_gen(image_folder, tmp_path):
    out = tmp_path / "gen"
    job = ImageFolderJob(str(image_folder), "gen", samples_per_shard=3)
    summary = write_shards(job, out, processes=2)
    got = read_out(out, "gen")
    assert sorted(got) == GOOD
    for name, (raw, members) in got.items():
        assert raw.text == f"caption of {name}"
        assert members == [{"b.jpg": "jpg"}.get(name, "png"), "txt"]  # gif and tiff re-encoded as png
        assert pixels(raw.image).tolist() == pixels(Image.open(image_folder / name)).tolist()
    refused = {k: n for k, n in summary.skipped.items() if k.startswith("refused by the reader")}
    assert sum(refused.values()) == 1  # the truncated PNG: its header reads, its pixels do not
    assert summary.count == 6 and dict(summary.skipped) == {
        **refused,
        "unreadable image": 1,
        "caption not UTF-8": 1,
        "empty caption": 1,
        "image without a caption (no side-car .txt)": 1,
        "caption without an image": 1,
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == 6 and len(manifest["shards"]) == len(summary.shards)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_image_folder_captions_file_und(image_folder, tmp_path, fmt):
    rows = [{"path": name, "text": f"row {i}"} for i, name in enumerate(GOOD)]
    rows += [{"path": "missing.png", "text": "gone"}, {"path": "a.png", "text": ""}, {"path": "b.jpg"}]
    captions = tmp_path / f"captions.{fmt}"
    if fmt == "csv":
        with open(captions, "w", newline="") as f:
            writer = csv.DictWriter(f, ["path", "text"])
            writer.writeheader()
            writer.writerows(rows[:-1])
    else:
        lines = [json.dumps(r) for r in rows] + ["{not json"]
        captions.write_text("\n".join(lines) + "\n")
    out = tmp_path / "und"
    summary = write_shards(ImageFolderJob(str(image_folder), "und", str(captions), "path", "text", 4), out)
    got = read_out(out, "und")
    assert sorted(got) == sorted(GOOD)
    assert {name: raw.text for name, (raw, _) in got.items()} == {n: f"row {i}" for i, n in enumerate(GOOD)}
    expected = {"image file missing or unreadable": 1, "empty caption": 1}
    if fmt == "jsonl":
        expected |= {"captions row without 'path' and 'text'": 1, "captions row not JSON": 1}
    assert dict(summary.skipped) == expected


def test_rerun_after_interruption_writes_only_the_unfinished_shard(image_folder, tmp_path):
    out = tmp_path / "gen"
    job = ImageFolderJob(str(image_folder), "gen", samples_per_shard=2)
    write_shards(job, out)
    tars = sorted(out.glob("*.tar"))
    assert len(tars) == 4  # 12 inputs in 6 shards of 2; two shards hold only bad inputs and are not written
    before = {t.name: (t.stat().st_mtime_ns, t.read_bytes()) for t in tars}
    # interrupted while writing shard 1: its tar not yet renamed (a partial temp file), no marker
    (out / "shard-000001.done.json").unlink()
    (out / "shard-000001.tar").rename(out / ".shard-000001.tar.partial-99999")
    summary = write_shards(job, out)
    assert summary.written == 1 and summary.count == 6
    for tar in tars:
        if tar.name != "shard-000001.tar":
            assert (tar.stat().st_mtime_ns, tar.read_bytes()) == before[tar.name]  # untouched
    assert (out / "shard-000001.tar").read_bytes() == before["shard-000001.tar"][1]  # the same bytes again
    assert sorted(read_out(out, "gen")) == GOOD
    # interrupted after the rename, before the marker: the shard is rewritten, not duplicated
    (out / "shard-000002.done.json").unlink()
    assert write_shards(job, out).written == 1
    assert sorted(read_out(out, "gen")) == GOOD
    assert write_shards(job, out).written == 0  # all done: nothing rewritten


def test_foreign_or_other_settings_folder_is_refused(image_folder, tmp_path):
    out = tmp_path / "gen"
    write_shards(ImageFolderJob(str(image_folder), "gen", samples_per_shard=2), out)
    with pytest.raises(UserInputError, match="other settings"):
        write_shards(ImageFolderJob(str(image_folder), "gen", samples_per_shard=3), out)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not empty"):
        write_shards(ImageFolderJob(str(image_folder), "gen"), foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(UserInputError, match="matches no file"):
        write_shards(TextJob([str(tmp_path / "nothing-here.txt")]), tmp_path / "never")
    assert not (tmp_path / "never").exists()  # inputs are planned before the folder is made


def test_llava_conversations(tmp_path):
    images = tmp_path / "coco"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.jpg").write_bytes(image_bytes((0, 60 * i, 0), fmt="JPEG"))
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")

    def turns(question: str) -> list[dict]:
        return [{"from": "human", "value": question}, {"from": "gpt", "value": "green"}]

    entries = [
        {"id": "q0", "image": "0.jpg", "conversations": turns("<image>\nWhat color?")},
        {"id": "q1", "image": "1.jpg", "conversations": turns("What color?\n<image>") + turns("Sure?")},
        {"id": "q2", "image": "2.jpg", "conversations": turns("<image>\nAgain?")},
        {"id": "text-only", "conversations": turns("Hi")},
        {"id": "gone", "image": "missing.jpg", "conversations": turns("<image>\n?")},
        {"id": "bad", "image": "broken.jpg", "conversations": turns("<image>\n?")},
        {"id": "odd", "image": "0.jpg", "conversations": turns("<image>\n?")[:1]},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(entries))
    out = tmp_path / "und"
    summary = write_shards(LlavaJob(str(path), str(images), samples_per_shard=2), out, processes=2)
    got = read_out(out, "und")
    assert sorted(got) == ["[0]", "[1]", "[2]"]
    for n in range(3):
        raw, members = got[f"[{n}]"]
        convs = entries[n]["conversations"]
        assert members == ["jpg", "json"]
        assert raw.turns == [(convs[i]["value"], convs[i + 1]["value"]) for i in range(0, len(convs), 2)]
    refused = {k: n for k, n in summary.skipped.items() if k.startswith("refused by the reader")}
    assert sum(refused.values()) == 1  # one human turn without an answer (the reader names its reason)
    assert dict(summary.skipped) == {
        "entry without an image (text-only conversation)": 1,
        "image file missing or unreadable": 1,
        "unreadable image": 1,
        **refused,
    }


@pytest.fixture
def hf_rows() -> dict[str, list]:
    return {
        "picture": [{"bytes": image_bytes((10 * i, 0, 0)), "path": None} for i in range(5)],
        "caption": [f"caption {i}" for i in range(4)] + [""],
    }


def test_hf_save_to_disk(tmp_path, hf_rows):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")})
    saved = tmp_path / "saved"
    data = datasets.Dataset.from_dict(hf_rows, features=features)
    datasets.DatasetDict({"train": data}).save_to_disk(str(saved))
    with pytest.raises(UserInputError, match="--split"):
        write_shards(HFDatasetJob(str(saved), "gen", "caption", "picture"), tmp_path / "x")
    out = tmp_path / "gen"
    summary = write_shards(
        HFDatasetJob(str(saved), "gen", "caption", "picture", "train", samples_per_shard=2), out
    )
    got = read_out(out, "gen")
    assert sorted(got) == [f"{saved} row {i}" for i in range(4)]
    for i in range(4):
        raw, members = got[f"{saved} row {i}"]
        assert raw.text == f"caption {i}" and members == ["png", "txt"]
        assert pixels(raw.image)[0, 0].tolist() == [10 * i, 0, 0]
    assert dict(summary.skipped) == {"empty text": 1}


def test_hf_parquet_row_groups(tmp_path, hf_rows):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "parquet"
    folder.mkdir()
    table = pa.table(hf_rows)
    pq.write_table(table, folder / "part-0.parquet", row_group_size=2)  # groups of 2, 2, 1 rows
    pq.write_table(table.slice(0, 3), folder / "part-1.parquet", row_group_size=1)
    out = tmp_path / "und"
    summary = write_shards(HFDatasetJob(str(folder), "und", "caption", "picture", samples_per_shard=3), out)
    got = read_out(out, "und")
    expected = [f"{folder}/part-0.parquet row {i}" for i in range(4)]
    expected += [f"{folder}/part-1.parquet row {i}" for i in range(3)]
    assert sorted(got) == sorted(expected)
    for source, (raw, _) in got.items():
        i = int(source.rsplit(" ", 1)[1])
        assert raw.text == f"caption {i}" and pixels(raw.image)[0, 0].tolist() == [10 * i, 0, 0]
    assert dict(summary.skipped) == {"empty text": 1}


def test_text_modes(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "one.txt").write_text("first document\nstill the first")
    (corpus / "two.txt").write_text("second document")
    (corpus / "bad.txt").write_bytes(b"\xff\xfe")
    out = tmp_path / "files"
    summary = write_shards(TextJob([str(corpus)], "file", samples_per_shard=1), out)
    got = read_out(out, "text")
    assert {os.path.basename(k): raw.text for k, (raw, _) in got.items()} == {
        "one.txt": "first document\nstill the first",
        "two.txt": "second document",
    }
    assert dict(summary.skipped) == {"document not UTF-8": 1}

    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"doc 1\n\ndoc 3\r\nd\xe9c 4\ndoc 5\ndoc 6")
    summary = write_shards(TextJob([str(lines)], "line", samples_per_shard=2), tmp_path / "lines")
    got = read_out(tmp_path / "lines", "text")
    assert {k: raw.text for k, (raw, _) in got.items()} == {f"{lines}:{n}": f"doc {n}" for n in (1, 3, 5, 6)}
    assert dict(summary.skipped) == {"document not UTF-8": 1}

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"content": "a"}\n{"content": "b"}\n{oops\n{"other": 1}\n{"content": 7}\n')
    shards_main(
        ["text", str(jsonl), "--mode", "jsonl", "--text-field", "content", "--out", str(tmp_path / "j")]
    )
    printed = capsys.readouterr().out
    assert printed.startswith("2 text samples in 1 shards")
    for reason in ("JSONL line not JSON", "JSONL line without 'content'", "document not a string"):
        assert f"skipped 1: {reason}" in printed
    got = read_out(tmp_path / "j", "text")
    assert {k: raw.text for k, (raw, _) in got.items()} == {f"{jsonl}:1": "a", f"{jsonl}:2": "b"}


def test_read_back_check_catches_a_shard_that_differs(tmp_path):
    corpus = tmp_path / "doc.txt"
    corpus.write_text("one\ntwo\n")
    out = tmp_path / "out"
    write_shards(TextJob([str(corpus)], "line"), out)
    shard = str(out / "shard-000000.tar")
    members = list(iter_members(shard, "text"))
    expected = [(m["__key__"], digest(m)) for m in members]
    verify_shard(shard, "text", expected)  # what was written reads back
    with pytest.raises(RuntimeError, match="keys or bytes differ"):
        verify_shard(shard, "text", [expected[0], (expected[1][0], digest({"txt": b"three"}))])
    with pytest.raises(RuntimeError, match="keys or bytes differ"):
        verify_shard(shard, "text", expected[:1])
