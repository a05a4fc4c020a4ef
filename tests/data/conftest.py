"""Shared fixtures of the data tests: the shapes tokenizer and a few tiny WebDataset shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from jf_lightning.shapes.tokenizer import build_shapes_tokenizer

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
SHARDS_PER_KIND = 2
SAMPLES_PER_SHARD = 6


def png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path: Path, records: list[dict]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for record in records:
            sink.write(record)
    return str(path)


def _record(kind: str, shard: int, i: int) -> dict:
    name = list(COLORS)[(shard + i) % len(COLORS)]
    size = (24 + 4 * i, 16)  # non-square, varying: exercises pad and crop
    record = {"__key__": f"{kind}-{shard}-{i:03d}"}
    if kind == "und" and i % 2 == 0:
        conv = [
            {"from": "human", "value": "<image>\nWhat color is the circle?"},
            {"from": "gpt", "value": f"The circle is {name}."},
        ]
        record |= {"png": png(COLORS[name], size), "json": json.dumps({"conversations": conv}).encode()}
    elif kind == "und":
        record |= {"png": png(COLORS[name], size), "txt": f"A {name} circle.".encode()}
    elif kind == "gen":
        record |= {"png": png(COLORS[name], size), "txt": f"a {name} square".encode()}
    else:
        record |= {"txt": f"There is one {name} triangle.".encode()}
    return record


@pytest.fixture(name="write_shard")
def write_shard_fixture():
    """``write_shard(path, records) -> str``: a shard of the given records."""
    return write_shard


@pytest.fixture(name="png")
def png_fixture():
    """``png(color, (w, h)) -> bytes``: a one-colour PNG."""
    return png


@pytest.fixture(scope="session")
def tokenizer():
    return build_shapes_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, tokenizer) -> str:
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict[str, str]:
    """Brace patterns of {SHARDS_PER_KIND} shards per kind ("und", "gen", "text"), each of
    {SAMPLES_PER_SHARD} samples; und alternates json conversations and txt captions."""
    root = tmp_path_factory.mktemp("shards")
    patterns = {}
    for kind in ("und", "gen", "text"):
        for shard in range(SHARDS_PER_KIND):
            records = [_record(kind, shard, i) for i in range(SAMPLES_PER_SHARD)]
            write_shard(root / f"{kind}-{shard:03d}.tar", records)
        patterns[kind] = str(root / f"{kind}-{{000..{SHARDS_PER_KIND - 1:03d}}}.tar")
    return patterns


@pytest.fixture(scope="session")
def pre_encoded_gen_shard(tmp_path_factory) -> str:
    """Generation samples with latent.npy + siglip.npy and no image."""
    path = tmp_path_factory.mktemp("pre") / "gen-pre.tar"
    records = []
    for i in range(4):
        latent, target = np.full((4, 2, 2), i, np.float16), np.full((4, 8), i, np.float32)
        rec = {"__key__": f"pre-{i}", "txt": b"a red square"}
        for name, arr in (("latent.npy", latent), ("siglip.npy", target)):
            buf = io.BytesIO()
            np.save(buf, arr)
            rec[name] = buf.getvalue()
        records.append(rec)
    return write_shard(path, records)
