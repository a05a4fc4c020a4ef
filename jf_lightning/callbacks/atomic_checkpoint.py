"""Checkpoints written whole or not at all: an interrupted save never truncates ``last.ckpt``.

Lightning's ``TorchCheckpointIO`` serialises into memory and then writes the bytes over the target, so a
crash (or a full disk) during that write leaves a truncated file in place of the last good checkpoint.
``AtomicCheckpointIO`` writes a local checkpoint to a temporary file beside its target (the same
filesystem, whatever the system temp dir is) and ``os.replace``s it onto the target only once it is
complete and flushed; remote paths (``s3://``, ...) keep Lightning's save. Loading is Lightning's.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go to a temporary file in the target's directory first."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(f.fileno(), 0o666 & ~umask)  # as a plain open() makes it (mkstemp makes 0600)
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
