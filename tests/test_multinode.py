"""Multi-node: 2 "nodes" of 1 process each on 127.0.0.1, started the way a launcher starts them (the
environment variables MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE, LOCAL_RANK, which Lightning's
LightningEnvironment reads), run a smoke fit of ablation F with ``trainer.num_nodes=2, devices=1``: both
nodes finish, see a world of 2, train on different data, end with the same weights and losses, and
score the smoke evaluations together."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["-c", str(ROOT / "experiments" / "ablation_F.yaml"), "-c", str(ROOT / "experiments" / "smoke.yaml")]


class RankLosses(Callback):
    """Writes ``rank<global rank>.json`` into $RANK_LOSSES_DIR: the node rank, the world size, this
    rank's own losses, every rank's losses gathered, and a checksum of the trained weights."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        gathered = trainer.strategy.all_gather(torch.tensor(self.losses, dtype=torch.float64))  # (W, steps)
        checksum = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
        record = {"node_rank": trainer.node_rank, "world_size": trainer.world_size, "own": self.losses,
                  "all": gathered.tolist(), "checksum": checksum}  # fmt: skip
        Path(os.environ["RANK_LOSSES_DIR"], f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_train_as_one_job(tmp_path):
    config = RECIPE
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "GROUP_RANK"))
    }
    base_env.update(
        PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", RANK_LOSSES_DIR=str(tmp_path)
    )
    run = [sys.executable, "-m", "jf_lightning"]
    done = subprocess.run([*run, "prepare", *config], cwd=tmp_path, env=base_env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # the store exists before the nodes start, as a tracking server would: two processes creating one
    # sqlite file at once race in its schema migration (multi-node runs should log to a server)
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    fit = [*run, "fit", *config, "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp",
           "--data.val_batches=2", "--trainer.callbacks+=tests.test_multinode.RankLosses"]  # fmt: skip
    port = str(free_port())
    nodes = []
    for node in (0, 1):
        env = {**base_env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(node),
               "WORLD_SIZE": "2", "LOCAL_RANK": "0"}  # fmt: skip
        log = (tmp_path / f"node{node}.log").open("w")
        nodes.append(subprocess.Popen(fit, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:  # a node that fails leaves the other waiting for it at the rendezvous: stop it then
        deadline = time.monotonic() + 600
        while any(n.poll() is None for n in nodes) and not any(n.poll() for n in nodes):
            assert time.monotonic() < deadline, "the nodes did not finish in 600 s"
            time.sleep(1)
        codes = [node.poll() for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert codes == [0, 0], "\n".join((tmp_path / f"node{n}.log").read_text()[-3000:] for n in (0, 1))
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["node_rank"] for r in records] == [0, 1] and {r["world_size"] for r in records} == {2}
    assert len(records[0]["own"]) == 3  # smoke.yaml's 3 steps (global batch 8 = 4 per rank, no accumulation)
    assert records[0]["own"] != records[1]["own"]  # each node trained on its own share of the data
    assert records[0]["all"] == records[1]["all"]  # the same losses seen on both nodes
    assert (
        records[0]["checksum"] == records[1]["checksum"]
    )  # and the same weights: gradients were all-reduced
    assert "MLflow run " in (tmp_path / "node0.log").read_text()  # rank 0 alone logs and summarises
    assert "MLflow run " not in (tmp_path / "node1.log").read_text()
    # the CLI's always-on Throughput callback logged the job's rates (no MFU: a CPU has no known peak)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ablation_F").experiment_id])
    keys = {k for k in run.data.metrics if k.startswith("throughput/")}
    assert keys == {f"throughput/{k}" for k in ("samples_per_s", "tokens_per_s", "padded_tokens_per_s",
                                                "tflops_per_device")}  # fmt: skip
    # smoke.yaml's evaluation, its images split over the two nodes: FID, CLIP score and GenEval
    for key in ("val/fid/mjhq", "val/clip_score", "val/geneval/overall", "val/geneval/counting", "val/time/geneval"):
        assert key in run.data.metrics, key
