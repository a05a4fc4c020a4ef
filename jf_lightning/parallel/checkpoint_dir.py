"""Sharded checkpoints published whole or not at all: an interrupted save never breaks ``last.ckpt``.

Lightning's ``ModelParallelStrategy`` writes a distributed checkpoint (a directory of per-rank shard
files, DCP's ``.metadata`` and Lightning's ``meta.pt``) into the target directory itself, over the files
of the previous save: a process killed mid-write leaves the old ``.metadata`` beside half-rewritten
shards, and the last good checkpoint is gone. Here each save goes to a fresh hidden directory beside the
target (``.last.ckpt.<nonce>``), and once every rank has written, the target, a symbolic link, is
switched onto it in one ``os.replace``; the directory it pointed to is removed after. A kill at any point
leaves the target naming a complete checkpoint (the old one or the new one); what an interrupted save
left behind is removed by the next save of that name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def data_dir(target: Path, nonce: str) -> Path:
    """Where a save of ``target`` writes, beside it: ``.<name>.<nonce>``."""
    return target.parent / f".{target.name}.{nonce}"


def publish(written: Path, target: Path) -> None:
    """Point ``target`` at the complete checkpoint directory ``written`` (atomically), then remove every
    other directory that earlier saves of ``target`` left (the one it pointed to, interrupted ones)."""
    link = target.parent / f".{target.name}.link"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(written.name, link)  # relative: the checkpoint folder can be moved
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)  # a directory written in place (Lightning's own save): no atomic swap onto it
    os.replace(link, target)
    for stale in target.parent.glob(f".{target.name}.*"):
        if stale != written and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)


def remove(target: Path) -> None:
    """Remove a published checkpoint: the link and the directory it names."""
    if target.is_symlink():
        written = target.parent / os.readlink(target)
        target.unlink()
        shutil.rmtree(written, ignore_errors=True)
    elif target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
