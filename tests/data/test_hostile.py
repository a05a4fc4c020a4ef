"""The bad-data policy on a hostile shard set made here: a short run trains through it, the skip counts
are exact, odd images come out as the picture, and a pickle member never runs."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from PIL import Image

from jf_lightning.callbacks.data_stats import DataStats
from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.data.sources import SourceConfig, decode, iter_members, usable_rgb

CONV = [{"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "red"}]


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


class Touch:
    """Unpickling this creates ``path``: a shard member that runs code when unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    return encoded(Image.new("RGB", (12, 6), (200, 0, 0)), "JPEG", exif=exif)


def hostile_und(png, marker: Path) -> list[dict]:
    red = png((220, 30, 30), (12, 10))
    palette = Image.new("P", (8, 8), 1)  # every pixel the transparent index
    palette.putpalette([255, 0, 0] * 256)
    palette.info["transparency"] = 1
    words = " ".join(["red"] * 200).encode()
    return [
        {"__key__": "good-conv", "png": red, "json": json.dumps({"conversations": CONV}).encode()},
        {"__key__": "corrupt-png", "png": b"\x89PNG\r\n\x1a\nnot a png at all", "txt": b"red"},  # bad_image
        {"__key__": "truncated-png", "png": red[: len(red) // 2], "txt": b"red"},  # bad_image
        {"__key__": "broken-json", "png": red, "json": b'{"conversations": ['},  # bad_json
        {"__key__": "no-image", "txt": b"a red circle"},  # missing_member
        {"__key__": "latin-1", "png": red, "txt": "caf\xe9".encode("latin-1")},  # bad_text
        {"__key__": "empty-txt", "png": red, "txt": b"  \n"},  # empty_text
        {"__key__": "palette", "png": encoded(palette, "PNG"), "txt": b"red"},
        {"__key__": "rgba", "png": encoded(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"), "txt": b"red"},
        {"__key__": "cmyk", "jpg": encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), "txt": b"red"},
        {"__key__": "sixteen-bit", "png": encoded(Image.new("I;16", (8, 8), 30000), "PNG"), "txt": b"grey"},
        {"__key__": "exif", "jpg": exif_rotated_jpeg(), "txt": b"red"},
        {"__key__": "img2dataset", "jpg": encoded(Image.new("RGB", (8, 8)), "JPEG"), "txt": b"a red circle",
         "json": json.dumps({"url": "http://x", "width": 8, "status": "success"}).encode()},
        {"__key__": "long-caption", "png": red, "txt": words},  # too_long
        {"__key__": "pickled", "png": red, "txt": b"red", "pyd": pickle.dumps(Touch(marker)),
         "pickle": pickle.dumps(Touch(marker))},
    ]  # fmt: skip


def truncated(path: Path, records: list[dict], write_shard, keep: float) -> str:
    write_shard(path, records)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return str(path)


class Recorder(Logger):
    """Keeps what was logged, by step."""

    def __init__(self):
        super().__init__()
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    name, version = "recorder", 0

    def log_metrics(self, metrics, step=None):
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, value))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch.und_pixels.mean() + self.w * batch.input_ids.float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_run_on_hostile_shards_trains_and_counts_every_skip(tmp_path, write_shard, png, tokenizer_dir):
    marker = tmp_path / "unpickled"
    Touch(tmp_path / "live").__reduce__()[0](tmp_path / "live")  # the payload is live: it makes a file
    assert (tmp_path / "live").exists() and not marker.exists()
    und = write_shard(tmp_path / "und-0.tar", hostile_und(png, marker))
    gen_records = [{"__key__": f"g{i}", "png": png((30, 70, 230), (9, 9)), "txt": b"a blue square"} for i in range(4)]
    gen = [
        write_shard(tmp_path / "gen-0.tar", gen_records[:2] + [{"__key__": "g-no-txt", "png": png((0, 0, 0), (4, 4))}]),
        truncated(tmp_path / "gen-1.tar", gen_records, write_shard, keep=0.55),  # 2 records, then cut
    ]
    (tmp_path / "gen-2.tar").write_bytes(b"")  # zero-byte: left out at setup, named and counted
    words = " ".join(["circle"] * 200).encode()
    text = write_shard(tmp_path / "text-0.tar", [{"__key__": "t0", "txt": b"one red circle"},
                       {"__key__": "t1", "txt": b"\xff\xfe bad"}, {"__key__": "t2", "txt": words},
                       {"__key__": "t3", "txt": b"two squares"}])  # fmt: skip
    members = iter_members(gen[1], "gen")
    assert [next(members)["__key__"] for _ in range(2)] == ["g0", "g1"]
    with pytest.raises(ValueError, match=r"gen-1\.tar (ends inside member|cannot be read past record 2)"):
        next(members)
    dm = JanusFlowDataModule(
        sources=[SourceConfig(und, "und"), SourceConfig(str(tmp_path / "gen-*.tar"), "gen"), SourceConfig(text, "text")],
        tokenizer=tokenizer_dir, image_size=8, num_und_tokens=4, num_gen_tokens=4,
        ratio_schedule=[(0, (15, 6, 4))], batch_size=25, seq_len=64, num_workers=1, seed=0,
    )  # fmt: skip  (a batch of 25 = one epoch of every source: 15 und, 3 + 3 gen, 4 text records)
    logger = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, logger=logger, log_every_n_steps=1, callbacks=[DataStats()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Probe(), datamodule=dm)
    assert trainer.global_step == 2
    last = {key: values[-1][1] for key, values in logger.metrics.items()}
    per_epoch = {"bad_image": 2, "bad_json": 1, "missing_member": 2, "bad_text": 2, "empty_text": 1,
                 "too_long": 1, "truncated_shard": 1}  # fmt: skip
    skipped = {k.removeprefix("data/skipped/"): v for k, v in last.items() if k.startswith("data/skipped/")}
    assert skipped == {k: 2 * v for k, v in per_epoch.items()} | {"empty_shard": 1}
    assert last["data/truncated_text"] == 2
    # 15 + 6 + 4 records a batch, 10 of them skipped: 8 und, 4 gen, 3 text samples trained on
    assert last["data/share/und"] == pytest.approx(8 / 15) and last["data/share/gen"] == pytest.approx(4 / 15)
    assert 0 < last["data/real_token_share"] <= 1
    assert not marker.exists()  # the pickle members were never unpickled


def test_odd_images_come_out_as_the_picture(png, tmp_path, write_shard):
    url = write_shard(tmp_path / "odd.tar", hostile_und(png, tmp_path / "m")[7:13])
    raws = {r["__key__"]: decode(r, "und") for r in iter_members(url, "und")}
    pixel = {k: raw.image.getpixel((0, 0)) for k, raw in raws.items()}
    assert all(raw.image.mode == "RGB" for raw in raws.values())
    assert pixel["palette"] == (255, 255, 255)  # index 1 is transparent: white, not the palette's red
    assert pixel["rgba"] == (255, 255, 255)  # fully transparent: white
    assert pixel["cmyk"][0] > 200 and pixel["cmyk"][1] < 60  # red
    assert pixel["sixteen-bit"] == (117, 117, 117)  # 30000 / 65535 of white, not clipped to white
    assert raws["exif"].image.size == (6, 12)  # turned upright
    assert raws["img2dataset"].turns is None and raws["img2dataset"].text == "a red circle"  # a caption
    wide = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert usable_rgb(wide).getpixel((0, 0)) == (255, 255, 255)


def test_empty_or_folder_shards_are_named(tmp_path, tokenizer_dir, write_shard):
    (tmp_path / "x.tar").mkdir()
    with pytest.raises(Exception, match=r"x\.tar' is a directory, not a tar file"):
        JanusFlowDataModule(sources=[SourceConfig(str(tmp_path / "x.tar"), "text")], tokenizer=tokenizer_dir,
                            ratio_schedule=[(0, (0, 0, 1))]).setup("fit")  # fmt: skip
    (tmp_path / "zero.tar").write_bytes(b"")
    write_shard(tmp_path / "none.tar", [])
    with pytest.raises(Exception, match=r"data.sources\[0\]: every shard is empty .*none\.tar"):
        JanusFlowDataModule(sources=[SourceConfig(str(tmp_path / "[nz]*.tar"), "text")], tokenizer=tokenizer_dir,
                            ratio_schedule=[(0, (0, 0, 1))]).setup("fit")  # fmt: skip
    assert os.path.getsize(tmp_path / "none.tar") > 0
