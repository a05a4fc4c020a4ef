"""``jf chat`` on a tiny checkpoint: one question, a JSONL of them, and a split over two processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jf_lightning.commands.chat import main


@pytest.fixture
def questions(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / name)
    rows = [
        {"image": "a.png", "question": "<image>\nWhat color is the circle?", "id": 1},
        {"image": "b.png", "question": "How many squares?", "id": 2},
        {"image": "c.png", "question": "<image>\nIs there a triangle?", "id": 3},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_questions_file_and_process_split(tiny_checkpoint, questions, tmp_path, monkeypatch, capsys):
    ckpt, _ = tiny_checkpoint
    args = ["--ckpt", str(ckpt), "--questions", str(questions), "--max-new-tokens", "3"]
    main([*args, "--out", str(tmp_path / "one.jsonl")])
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [r["id"] for r in one] == [1, 2, 3] and all(isinstance(r["answer"], str) for r in one)
    assert one[1]["image"] == str(tmp_path / "b.png")
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        main([*args, "--batch-size", "1", "--out", str(tmp_path / "two.jsonl")])
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert two == one and not list(tmp_path.glob("two.jsonl.rank*"))
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    capsys.readouterr()
    main(["--ckpt", str(ckpt), "--image", str(tmp_path / "a.png"), "--question", one[0]["question"],
          "--max-new-tokens", "3"])  # fmt: skip
    assert capsys.readouterr().out == one[0]["answer"] + "\n"


def test_bad_questions_are_one_line(tiny_checkpoint, tmp_path):
    ckpt, _ = tiny_checkpoint
    (tmp_path / "q.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(SystemExit, match=r"q\.jsonl:1: a line needs an 'image' path and a 'question'"):
        main(["--ckpt", str(ckpt), "--questions", str(tmp_path / "q.jsonl")])
    with pytest.raises(SystemExit):
        main(["--ckpt", str(ckpt), "--image", "x.png"])  # no question
