"""``jf shards encode``: the latents and REPA targets it writes are the ones a training step computes
(the same loss on pre-encoded and on raw shards), ranks split the shards, a rerun after an interruption
encodes only the unfinished shard, and the input shards are never touched."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from diffusers import AutoencoderKL
from PIL import Image

from jf_lightning.commands.shards import main as shards_main
from jf_lightning.data.packing import pack
from jf_lightning.data.sources import decode, iter_members
from jf_lightning.data.templates import Templater
from jf_lightning.data.transforms import gen_transform
from jf_lightning.data.writing.encode import run_encode
from jf_lightning.data.writing.targets import ModelSource, centre_crop_transform
from jf_lightning.inputs import UserInputError
from jf_lightning.models.config import resolve_config
from jf_lightning.models.und_encoder import build_siglip, save_siglip
from jf_lightning.models.vae import random_autoencoder_kl
from jf_lightning.stages import PretrainingStage
from tests.stages.conftest import built

LOSS_RTOL = 1e-5
"""Pre-encoded vs raw losses: the encoders run on batches of another size (2 here, 5 in the step), so
float sums may round differently; measured: at most 1.9e-7 relative (rf, repa and total loss, 3 seeds)."""


def png(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_overrides(tmp_path_factory) -> dict:
    """The tiny model on a real (random, saved) AutoencoderKL and a saved SigLIP, both loaded back by
    their sources, as a run loads them."""
    root = tmp_path_factory.mktemp("encoders")
    overrides = {
        "vae.kind": "autoencoder_kl",
        "vae.source": str(root / "vae"),
        "vae.latent_channels": 4,
        "vae.downsample_factor": 2,
        "vae.block_out_channels": [32, 32],
        "vae.layers_per_block": 1,
        "siglip.source": str(root / "siglip"),
    }
    cfg = resolve_config("tiny", None, {k: v for k, v in overrides.items() if not k.endswith("source")})
    torch.manual_seed(1)
    random_autoencoder_kl(cfg.vae).save_pretrained(root / "vae")
    save_siglip(build_siglip(cfg.siglip), cfg.siglip, str(root / "siglip"))
    assert isinstance(AutoencoderKL.from_pretrained(root / "vae"), AutoencoderKL)
    return overrides


@pytest.fixture
def gen_shards(tmp_path) -> list[str]:
    """Three gen shards of square 32 px images (the training crop has one offset), a json member on
    one sample, and one truncated image."""
    paths = []
    for shard in range(3):
        records = []
        for i in range(2):
            n = 2 * shard + i
            record = {"__key__": f"s{shard}-{i}", "png": png(n, (32, 32)), "txt": f"prompt {n}".encode()}
            if n == 0:
                record["json"] = b'{"scene": 1}'
            records.append(record)
        if shard == 1:
            records.append({"__key__": "s1-bad", "png": png(9, (32, 32))[:60], "txt": b"broken"})
        path = tmp_path / "raw" / f"gen-{shard:03d}.tar"
        path.parent.mkdir(exist_ok=True)
        with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:
            for record in records:
                sink.write(record)
        paths.append(str(path))
    return paths


def read(path: Path | str) -> list:
    """The samples of a shard the reader takes (the truncated image is not one)."""
    return [decode(m, "gen") for m in iter_members(str(path), "gen") if m["__key__"] != "s1-bad"]


def test_centre_crop_is_the_training_resize_at_the_centre_offset():
    image = Image.open(io.BytesIO(png(3, (48, 30))))  # short side 30 -> resized to 51 x 32
    centre = centre_crop_transform(image, 32)
    for seed in range(200):  # a training crop whose offset lands on the centre (51 - 32) // 2 = 9
        g = torch.Generator().manual_seed(seed)
        if (
            int(torch.randint(0, 1, (1,), generator=g)) == 0
            and int(torch.randint(0, 20, (1,), generator=g)) == 9
        ):
            assert torch.equal(gen_transform(image, 32, torch.Generator().manual_seed(seed)), centre)
            break
    else:
        pytest.fail("no seed drew the centre offset")
    square = Image.open(io.BytesIO(png(4, (40, 40))))
    assert torch.equal(
        gen_transform(square, 32, torch.Generator().manual_seed(5)), centre_crop_transform(square, 32)
    )


def batch_of(samples: list, tokenizer, cfg, pre_encoded: bool):
    templater = Templater(tokenizer, cfg.num_und_tokens, cfg.num_gen_tokens)
    crops = torch.Generator().manual_seed(0)
    built_samples = []
    for raw in samples:
        if pre_encoded:
            latent, target = torch.from_numpy(raw.latent), torch.from_numpy(raw.siglip)
            built_samples.append(templater.generation(raw.text, None, latent, target))
        else:
            built_samples.append(
                templater.generation(raw.text, gen_transform(raw.image, cfg.image_size, crops))
            )
    return pack(built_samples, 256, templater.pad, image_size=cfg.image_size)


def test_loss_same_on_pre_encoded_and_raw_shards(gen_shards, model_overrides, tokenizer, tmp_path):
    out = tmp_path / "encoded"
    summary = run_encode(gen_shards, out, ModelSource("tiny", None, model_overrides), batch_size=2)
    assert summary.count == 6 and sum(summary.skipped.values()) == 1
    raw = [s for path in gen_shards for s in read(path)]
    pre = [s for name in summary.shards for s in read(out / name)]
    assert [s.key for s in pre] == [s.key for s in raw] and [s.text for s in pre] == [s.text for s in raw]
    assert all(s.image is None for s in pre)  # both targets there: the reader skips the image

    cfg = resolve_config("tiny", None, model_overrides)
    stage = built(PretrainingStage, config=cfg)
    # the raw batch leaves both encoders to the step; the pre-encoded one carries their outputs
    raw_batch, pre_batch = batch_of(raw[:5], tokenizer, cfg, False), batch_of(pre[:5], tokenizer, cfg, True)
    assert (
        raw_batch.gen_latents is None
        and pre_batch.gen_latents is not None
        and pre_batch.gen_pixels.numel() == 0
    )
    with torch.no_grad():
        online = stage.compute_losses(raw_batch, torch.Generator().manual_seed(7))
        offline = stage.compute_losses(pre_batch, torch.Generator().manual_seed(7))
    for key in ("rf_loss", "repa_loss", "loss"):
        assert offline[key] is not None
        torch.testing.assert_close(offline[key], online[key], rtol=LOSS_RTOL, atol=0)
    # and the stored tensors are the model's own encodings of the same pixels
    model = stage.model
    torch.testing.assert_close(
        pre_batch.gen_latents, model.vae.encode(raw_batch.gen_pixels), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(pre_batch.repa_targets, model.repa_targets(raw_batch), rtol=1e-5, atol=1e-6)


def test_ranks_split_shards_and_rerun_encodes_only_the_unfinished(
    gen_shards, model_overrides, tmp_path, monkeypatch, capsys
):
    inputs_before = {p: Path(p).read_bytes() for p in gen_shards}
    out = tmp_path / "encoded"
    overrides = {k: v for k, v in model_overrides.items() if not k.startswith("vae.")}  # pixel-shuffle latent
    written = {}
    for rank in (0, 1):  # two processes of a torchrun launch, run one after the other
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        before = set(out.glob("*.tar"))
        run_encode(gen_shards, out, ModelSource("tiny", None, overrides), batch_size=4)
        written[rank] = sorted(p.name for p in set(out.glob("*.tar")) - before)
    assert written == {0: ["gen-000.tar", "gen-002.tar"], 1: ["gen-001.tar"]}  # shard i -> rank i % 2
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    tars = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")}
    # interrupted while writing gen-001: a partial file and no done-marker
    (out / "gen-001.done.json").unlink()
    (out / "gen-001.tar").rename(out / ".gen-001.tar.partial-4242")
    summary = run_encode(gen_shards, out, ModelSource("tiny", None, overrides), batch_size=4)
    assert summary.written == 1 and summary.count == 6
    assert not list(out.glob(".*partial*"))
    for name, (mtime, data) in tars.items():
        assert (out / name).read_bytes() == data
        assert name == "gen-001.tar" or (out / name).stat().st_mtime_ns == mtime
    keys = [s.key for name in sorted(tars) for s in read(out / name)]
    assert keys == ["s0-0", "s0-1", "s1-0", "s1-1", "s2-0", "s2-1"]
    first = read(out / "gen-000.tar")[0]
    assert (
        first.meta == {"scene": 1} and first.latent.shape == (12, 16, 16) and first.siglip.shape == (64, 96)
    )
    assert {p: Path(p).read_bytes() for p in gen_shards} == inputs_before  # inputs never written
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == 6
    with pytest.raises(UserInputError, match="other settings"):
        run_encode(gen_shards, out, ModelSource("tiny", None, overrides), siglip_dtype="float16")
    # the same model named by a run's saved config (model.init_args): the same folder, nothing redone
    saved = tmp_path / "config.yaml"
    model_args = {"preset": "tiny", "config": asdict(resolve_config("tiny", None, overrides))}
    saved.write_text(yaml.safe_dump({"model": {"init_args": model_args}}))
    shards_main(["encode", *gen_shards, "--out", str(out), "--model-config", str(saved)])
    assert "(0 written by this run)" in capsys.readouterr().out


def test_a_truncated_input_shard_keeps_its_samples_before_the_break(gen_shards, model_overrides, tmp_path):
    data = Path(gen_shards[2]).read_bytes()
    cut = tmp_path / "cut" / "gen-cut.tar"
    cut.parent.mkdir()
    cut.write_bytes(data[: data.index(b"prompt 5") + 3])  # inside the last sample's txt member
    overrides = {k: v for k, v in model_overrides.items() if not k.startswith("vae.")}
    summary = run_encode([str(cut)], tmp_path / "enc", ModelSource("tiny", None, overrides), batch_size=4)
    assert [s.key for s in read(tmp_path / "enc" / "gen-cut.tar")] == ["s2-0"]
    assert sum(summary.skipped.values()) == 1 and summary.count == 1


def test_refuses_random_encoders_and_reads_a_checkpoint(gen_shards, model_overrides, tmp_path, capsys):
    with pytest.raises(SystemExit):
        shards_main(["encode", gen_shards[0], "--out", str(tmp_path / "x"), "--preset", "tiny"])
    assert "siglip.source is unset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any folder is made
    # a fit checkpoint: the configuration in hyper_parameters, the encoders' live weights in the state
    cfg = resolve_config("tiny", None, model_overrides)
    stage = built(PretrainingStage, config=cfg)
    siglip = stage.model.vision_und_enc_model
    with torch.no_grad():
        for p in siglip.parameters():
            p.add_(0.01)  # weights unlike the source's: the targets must follow the checkpoint
    ckpt = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"preset": "tiny", "config": asdict(cfg)},
                "state_dict": stage.state_dict()}, ckpt)  # fmt: skip
    shards_main(["encode", gen_shards[0], "--out", str(tmp_path / "ck"), "--checkpoint", str(ckpt)])
    assert capsys.readouterr().out.startswith("2 gen samples in 1 shards")
    samples = read(tmp_path / "ck" / "gen-000.tar")
    pixels = torch.stack([centre_crop_transform(s.image, 32) for s in read(gen_shards[0])])
    with torch.no_grad():
        expected = siglip.eval()(pixels)
    torch.testing.assert_close(
        torch.from_numpy(np.stack([s.siglip for s in samples])), expected, rtol=1e-5, atol=1e-6
    )
