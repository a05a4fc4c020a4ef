"""Sharded checkpoint directories are published by one atomic link switch: the target always names a
complete checkpoint, and what interrupted saves left is cleaned by the next save."""

from __future__ import annotations

import os
from pathlib import Path

from jf_lightning.parallel.checkpoint_dir import data_dir, publish, remove


def written(target: Path, nonce: str, step: int) -> Path:
    """A complete save of ``target`` (as DCP and Lightning leave it), holding ``step``."""
    directory = data_dir(target, nonce)
    directory.mkdir()
    (directory / ".metadata").write_text("dcp")
    (directory / "meta.pt").write_text(str(step))
    return directory


def test_each_save_switches_the_link_and_removes_the_previous_directory(tmp_path):
    target = tmp_path / "last.ckpt"
    publish(written(target, "a", 3), target)
    assert target.is_symlink() and os.readlink(target) == ".last.ckpt.a"  # relative: the folder can move
    assert (target / "meta.pt").read_text() == "3"
    publish(written(target, "b", 6), target)
    assert (target / "meta.pt").read_text() == "6"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.ckpt.b", "last.ckpt"]


def test_an_interrupted_save_leaves_the_last_good_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    publish(written(target, "a", 3), target)
    half = data_dir(target, "b")  # killed while the shards were written: never published
    half.mkdir()
    (half / "__0_0.distcp").write_text("partial")
    assert (target / "meta.pt").read_text() == "3"
    publish(written(target, "c", 9), target)  # the next save removes the leftover
    assert (target / "meta.pt").read_text() == "9"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.ckpt.c", "last.ckpt"]


def test_a_directory_written_in_place_is_replaced_and_removal_takes_the_data(tmp_path):
    target = tmp_path / "step=3.ckpt"
    target.mkdir()  # Lightning's own ModelParallelStrategy writes into the target itself
    (target / "meta.pt").write_text("3")
    publish(written(target, "a", 6), target)
    assert (target / "meta.pt").read_text() == "6"
    remove(target)
    assert list(tmp_path.iterdir()) == []
