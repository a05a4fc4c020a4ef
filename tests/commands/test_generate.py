"""``jf generate`` on a tiny checkpoint: the layouts, seeds independent of batching and process split,
EMA against raw weights, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from jf_lightning.commands.generate import main, read_prompts
from jf_lightning.metrics.geneval import GENEVAL_METADATA

FAST = ["--steps", "2", "--cfg", "2.0"]


def run(ckpt, prompts, out, *extra):
    main(["--ckpt", str(ckpt), "--prompts", str(prompts), "--out", str(out), *FAST, *extra])


def pixels(path):
    return np.asarray(Image.open(path))


def test_text_prompts_batching_and_process_split(tiny_checkpoint, tmp_path, monkeypatch):
    ckpt, _ = tiny_checkpoint
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    run(ckpt, prompts, tmp_path / "a", "--n", "2", "--batch-size", "4")
    files = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert files == ["00000.png", "00000_1.png", "00001.png", "00001_1.png"]
    index = [json.loads(line) for line in (tmp_path / "a" / "prompts.jsonl").read_text().splitlines()]
    assert index[2] == {"file": "00001.png", "prompt": "a blue square"}
    assert pixels(tmp_path / "a" / "00000.png").shape == (32, 32, 3)
    assert not (pixels(tmp_path / "a" / "00000.png") == pixels(tmp_path / "a" / "00000_1.png")).all()
    # two processes, one image per sampler call: every image as one process drew it, up to rounding
    # (left padding in a batch of prompts of different lengths moves the float sums a little)
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        run(ckpt, prompts, tmp_path / "b", "--n", "2", "--batch-size", "1")
    for name in files:
        diff = np.abs(pixels(tmp_path / "a" / name).astype(int) - pixels(tmp_path / "b" / name))
        assert diff.max() <= 1, (name, diff.max())


def test_geneval_layout_and_weights(tiny_checkpoint, tmp_path):
    ckpt, tokenizer = tiny_checkpoint
    run(ckpt, "geneval", tmp_path / "ema", "--n", "2", "--limit", "3", "--tokenizer", str(tokenizer))
    specs = [json.loads(line) for line in GENEVAL_METADATA.read_text().splitlines()[:3]]
    for i, spec in enumerate(specs):
        folder = tmp_path / "ema" / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == spec  # GenEval json.load()s it
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    run(ckpt, "geneval", tmp_path / "raw", "--limit", "1", "--weights", "raw")
    assert not (
        pixels(tmp_path / "ema/00000/samples/0000.png") == pixels(tmp_path / "raw/00000/samples/0000.png")
    ).all()


def test_prompt_formats(tmp_path):
    mjhq = tmp_path / "meta_data.json"
    mjhq.write_text(
        json.dumps(
            {
                "abc": {"prompt": "a cat", "category": "animals"},
                "def": {"prompt": "a car", "category": "things"},
            }
        )
    )
    jobs = read_prompts(str(mjhq), 2, 10).jobs
    assert [(j.path, j.prompt, j.seed) for j in jobs] == [
        ("animals/abc.png", "a cat", 10), ("animals/abc_1.png", "a cat", 11),
        ("things/def.png", "a car", 12), ("things/def_1.png", "a car", 13),
    ]  # fmt: skip
    rows = tmp_path / "p.jsonl"
    rows.write_text('{"caption": "x"}\n{"prompt": "y", "id": 3}\n')
    assert [j.prompt for j in read_prompts(str(rows), 1, 0).jobs] == ["x", "y"]
    assert len(read_prompts("geneval", 4, 0).jobs) == 553 * 4


def test_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    ckpt, _ = tiny_checkpoint
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "x"}\n{"oops": 1}\n')
    with pytest.raises(SystemExit, match=r"p\.jsonl: entry 2: no prompt"):
        run(ckpt, bad, tmp_path / "o")
    with pytest.raises(SystemExit, match="no such checkpoint file"):
        run(tmp_path / "missing.ckpt", "geneval", tmp_path / "o")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="not a checkpoint written by `fit`"):
        run(tmp_path / "junk.ckpt", "geneval", tmp_path / "o")


def test_tokenizer_from_the_run_directory(tiny_checkpoint, tmp_path):
    """A checkpoint without datamodule hyperparameters: the tokenizer the run's saved config names."""
    ckpt, tokenizer = tiny_checkpoint
    state = torch.load(ckpt, weights_only=True)
    del state["datamodule_hyper_parameters"]
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit, match="does not record its tokenizer: give --tokenizer"):
        run(tmp_path / "run" / "checkpoints" / "last.ckpt", "geneval", tmp_path / "o", "--limit", "1")
    (tmp_path / "run" / "config.yaml").write_text(f"data:\n  tokenizer: {tokenizer}\n  template: pretrain\n")
    run(tmp_path / "run" / "checkpoints" / "last.ckpt", "geneval", tmp_path / "o", "--limit", "1")
    assert (tmp_path / "o" / "00000" / "samples" / "0000.png").is_file()
