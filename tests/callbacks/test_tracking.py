"""A tracker that cannot stop training: an unreachable server at start is one line within seconds; a
server killed mid-run blocks no step, the run ends on time, and the metrics logged after the kill are
spooled on local disk and uploaded afterwards (``upload-spool``); the local sqlite store still works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from mlflow import MlflowClient

from jf_lightning.callbacks.tracking import SPOOL_NAME, BackgroundMLFlowLogger
from jf_lightning.callbacks.tracking import main as upload_main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "experiments" / "tiny.yaml"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int, log: Path) -> subprocess.Popen:
    with log.open("a") as stderr:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{db}"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)


def kill(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # its own process group: the workers too
    server.wait()


class SlowSteps(pl.LightningModule):
    """A linear model whose steps take ``step_s`` and log ``train/x`` = the step; the server is killed
    after ``kill_at`` steps (by ``on_kill``)."""

    def __init__(self, step_s: float, kill_at: int, on_kill):
        super().__init__()
        self.layer, self.step_s, self.kill_at, self.on_kill = torch.nn.Linear(2, 1), step_s, kill_at, on_kill
        self.step_times: list[float] = []

    def training_step(self, batch, batch_idx):
        start = time.perf_counter()
        if self.global_step == self.kill_at:
            self.on_kill()
        time.sleep(self.step_s)
        self.log("train/x", float(self.global_step))
        loss = self.layer(batch[0]).pow(2).mean()
        self.step_times.append(time.perf_counter() - start)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader():
    data = torch.utils.data.TensorDataset(torch.randn(64, 2))
    return torch.utils.data.DataLoader(data, batch_size=1)


@pytest.mark.slow
def test_a_server_killed_mid_run_blocks_no_step_and_loses_no_metric(tmp_path, recwarn):
    db, port, log = tmp_path / "srv.db", free_port(), tmp_path / "server.log"
    uri = f"http://127.0.0.1:{port}"
    server = start_server(db, port, log)
    try:
        logger = BackgroundMLFlowLogger("killed", tracking_uri=uri, save_dir=str(tmp_path / "runs"),
                                        retry_interval=600, flush_timeout=10)  # fmt: skip
        steps, kill_at = 30, 10
        model = SlowSteps(0.05, kill_at, lambda: kill(server))
        trainer = pl.Trainer(max_steps=steps, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
        start = time.perf_counter()
        trainer.fit(model, loader())
        fit_s = time.perf_counter() - start
    finally:
        if server.poll() is None:
            kill(server)
    # no step waited for the dead server (MLflow's own retries: minutes), and the whole run, teardown
    # included, ended on time (30 steps of 50 ms; the margin is for a loaded machine)
    assert max(model.step_times) < 5 and fit_s < 40, (max(model.step_times), fit_s)
    assert sum("failed" in str(w.message) and "mlflow_spool" in str(w.message) for w in recwarn) == 1
    spool = tmp_path / "runs" / str(logger.experiment_id) / logger.run_id / SPOOL_NAME
    records = [json.loads(line) for line in spool.read_text().splitlines()]
    spooled = {m[3] for r in records if r["kind"] == "batch" for m in r["metrics"] if m[0] == "train/x"}
    assert set(range(kill_at + 1, steps)) <= spooled  # every step after the kill is on local disk
    assert records[-1]["kind"] == "terminated"

    # uploaded afterwards (here straight into the server's store): the history is complete
    store = f"sqlite:///{db}"
    upload_main([str(spool), "--tracking-uri", store])
    client = MlflowClient(store)
    assert {m.step for m in client.get_metric_history(logger.run_id, "train/x")} == set(range(steps))
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert not spool.exists()


def test_the_local_sqlite_store_gets_every_metric_without_a_spool(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = BackgroundMLFlowLogger("local", tracking_uri=uri, save_dir=str(tmp_path / "runs"))
    model = SlowSteps(0.0, kill_at=-1, on_kill=None)
    trainer = pl.Trainer(max_steps=5, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(model, loader())
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(logger.run_id, "train/x")] == [0, 1, 2, 3, 4]
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert not (tmp_path / "runs" / str(logger.experiment_id) / logger.run_id / SPOOL_NAME).exists()
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # the quick HTTP settings end with the run


def test_an_unreachable_server_at_start_is_one_line_within_seconds(tmp_path, monkeypatch, capsys):
    from jf_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["jf"])
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY), "--prepare=[]", f"--trainer.logger.init_args.tracking_uri={uri}"])
    assert time.perf_counter() - start < 10
    assert str(exit_info.value.code) == (
        f"jf_lightning: error: trainer.logger: cannot reach the MLflow tracking server at {uri} (connection "
        "refused); start it, or point MLFLOW_TRACKING_URI / --trainer.logger.init_args.tracking_uri at one that "
        "answers (the default sqlite:///mlflow.db needs no server)"
    )
    assert not (tmp_path / "mlruns").exists()


def test_upload_spool_names_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        upload_main([str(tmp_path / "nope.jsonl"), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"])
    assert exit_info.value.code == 2 and "nope.jsonl: no such spool file" in capsys.readouterr().err
