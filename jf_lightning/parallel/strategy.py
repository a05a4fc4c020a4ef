"""The toolkit's FSDP2 strategy: Lightning's ``ModelParallelStrategy`` as pure data parallelism.

``ModelParallelStrategy`` defaults to a tensor-parallel group of a node's devices and a data-parallel
group of the nodes (``"auto"``); the model has no tensor-parallel plan, so here every process is one
data-parallel rank: data-parallel size = world size (nodes x devices), tensor-parallel size 1, whatever
the cluster. ``ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)`` does the same when
the world size ``N`` is known when writing the config; this class reads it from the trainer.

Its distributed checkpoints are published atomically (``checkpoint_dir.py``): ``last.ckpt`` is a link to
a complete checkpoint directory whatever moment a run is killed at.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from jf_lightning.parallel.checkpoint_dir import data_dir, publish, remove


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with data-parallel size = world size and tensor-parallel size 1."""

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ):
        """
        Args:
            save_distributed_checkpoint: Each rank writes its own shards into a checkpoint directory
                (torch.distributed.checkpoint); False gathers everything on rank 0 into one file.
            process_group_backend: ``nccl`` on GPUs and ``gloo`` on CPUs by default.
            timeout: Of the collectives.
        """
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        # num_nodes and the devices per node are known here, before the mesh is built (Lightning's
        # "auto" would make the data-parallel size the number of nodes)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None
    ) -> None:
        if not self._save_distributed_checkpoint or storage_options is not None:
            super().save_checkpoint(checkpoint, filepath, storage_options)  # one file, through checkpoint_io
            return
        target = Path(self.broadcast(filepath))
        written = data_dir(target, self.broadcast(uuid.uuid4().hex[:12]))  # the same on every rank
        super().save_checkpoint(checkpoint, written)
        self.barrier()  # every rank's shards and rank 0's metadata are on disk
        if self.is_global_zero:
            publish(written, target)
        self.barrier()

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            remove(Path(filepath))
