"""MLflow logging that a tracking server cannot stop: checked at start, sent off the training thread,
spooled to local disk while the server does not answer.

- ``check_tracking_server(uri)``: an ``http(s)://`` server that does not answer is one line within
  seconds, before anything is built (MLflow's own client retries 7 times at up to 120 s each).
- ``BackgroundMLFlowLogger``: Lightning's ``MLFlowLogger`` whose client calls that write (metrics,
  params, artifacts, the end status) go to a queue; a daemon thread sends them with short HTTP timeouts
  (``request_timeout`` s, no retries: a record that fails is not lost, it waits in the spool). On the
  first failure it warns once and appends every record, in order, to ``mlflow_spool.jsonl`` in the run
  directory (``<save_dir>/<experiment id>/<run id>/``, the CLI's checkpoint directory), retries the
  server every ``retry_interval`` s and sends the spool when it answers again. ``finalize`` waits at
  most ``flush_timeout`` s, spools whatever is still unsent and says how to upload it:
  ``python -m jf_lightning upload-spool <spool>`` (delivery is at least once: a record whose request
  was cut off may arrive twice).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from jf_lightning.compare import quick_http, unreachable
from jf_lightning.inputs import UserInputError

SPOOL_NAME = "mlflow_spool.jsonl"
_STOP = object()


def check_tracking_server(uri: str | None) -> None:
    """Refuse, in one line and within seconds, an ``http(s)://`` tracking server that does not answer.
    Local stores (sqlite, files) need no server: nothing to check."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        with quick_http():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 (MLflow wraps the requests error in its own)
        reason = unreachable(err) or str(err).splitlines()[0]
        raise UserInputError(
            f"trainer.logger: cannot reach the MLflow tracking server at {uri} ({reason}); start it, or point "
            "MLFLOW_TRACKING_URI / --trainer.logger.init_args.tracking_uri at one that answers (the default "
            "sqlite:///mlflow.db needs no server)"
        ) from None


# ------------------------------------------------------------------------------------- records


def send(client: MlflowClient, record: dict[str, Any]) -> None:
    """Send one spool record (a JSON-able dict) through MLflow's client."""
    kind, run_id = record["kind"], record["run_id"]
    if kind == "batch":
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in record.get("metrics", [])]
        params = [Param(k, v) for k, v in record.get("params", [])]
        client.log_batch(run_id, metrics=metrics, params=params)
    elif kind == "artifact":
        client.log_artifact(run_id, record["local_path"], record.get("artifact_path"))
    elif kind == "terminated":
        client.set_terminated(run_id, record["status"], record["end_time"])
    else:
        raise ValueError(f"unknown spool record kind {kind!r}")


def upload_spool(client: MlflowClient, path: Path) -> int:
    """Send ``path``'s records in order; the ones not sent (from the first failure on) stay in the file,
    which is removed once empty. Returns how many were sent; re-raises the failure."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    sent = 0
    try:
        for line in lines:
            send(client, json.loads(line))
            sent += 1
    finally:
        rest = lines[sent:]
        if rest:
            path.write_text("".join(line + "\n" for line in rest))
        else:
            path.unlink(missing_ok=True)
    return sent


# ---------------------------------------------------------------------------------- the sender


class _Sender(threading.Thread):
    """Sends queued records; spools them (in order) while the server fails, retrying it now and then."""

    def __init__(self, client: MlflowClient, uri: str, spool: Path, retry_interval: float):
        super().__init__(name="mlflow-sender", daemon=True)  # never keeps the process alive
        self.client, self.uri, self.spool, self.retry_interval = client, uri, spool, retry_interval
        self.queue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()  # spool writes: this thread's, and finalize's after a timeout
        self.current: dict | None = None  # the record being sent (spooled by finalize if cut off)
        self.abandoned = False
        self.offline_since: float | None = None
        self.warned = False

    def run(self) -> None:
        while True:
            try:
                record = self.queue.get(timeout=self.retry_interval)
            except queue.Empty:
                record = None
            waited = (
                self.offline_since is not None
                and time.monotonic() - self.offline_since >= self.retry_interval
            )
            if self.offline_since is not None and (waited or record is _STOP):  # at the end: one last try
                self._retry_spool()
            if record is _STOP:
                return
            if record is not None:
                self._deliver(record)

    def _deliver(self, record: dict) -> None:
        if self.offline_since is not None:
            self.append([record])
            return
        self.current = record
        try:
            send(self.client, record)
        except Exception as err:  # noqa: BLE001 (any failure: the record waits in the spool)
            self.offline_since = time.monotonic()
            self.append([record])
            if not self.warned:
                self.warned = True
                reason = unreachable(err) or str(err).splitlines()[0]
                warnings.warn(
                    f"MLflow tracking server {self.uri} failed ({reason}): training goes on, its logs go to "
                    f"{self.spool} and are sent when the server answers again",
                    stacklevel=1,
                )
        finally:
            self.current = None

    def _retry_spool(self) -> None:
        with self.lock:
            if self.abandoned:
                return
            try:
                if self.spool.exists():
                    upload_spool(self.client, self.spool)
                self.offline_since = None
            except Exception:  # noqa: BLE001 (still failing: retried later)
                self.offline_since = time.monotonic()

    def append(self, records: list[dict]) -> None:
        with self.lock:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with self.spool.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)

    def drain(self) -> list[dict]:
        """What finalize spools when this thread did not finish in time: the cut-off record, the queue."""
        self.abandoned = True
        records = [self.current] if self.current is not None else []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return records
            if item is not _STOP:
                records.append(item)


class _QueuedClient:
    """MLflow's client with its writes (``log_batch``, ``log_artifact``) queued for the sender; every
    other call goes to the client itself. ``get_experiment`` of this run's experiment is answered from
    what was read when the run started (the CLI's closing line asks for it after training)."""

    def __init__(self, client: MlflowClient, logger: BackgroundMLFlowLogger):
        self._client, self._logger = client, logger

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def log_batch(self, run_id: str, metrics=(), params=(), tags=(), **_: Any) -> None:
        if tags:  # rare (set at run creation): sent directly
            self._client.log_batch(run_id, tags=tags)
        record = {"kind": "batch", "run_id": run_id, "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                  "params": [[p.key, p.value] for p in params]}  # fmt: skip
        self._logger.enqueue(record)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        local = str(Path(local_path).absolute())
        self._logger.enqueue(
            {"kind": "artifact", "run_id": run_id, "local_path": local, "artifact_path": artifact_path}
        )

    def get_experiment(self, experiment_id: str):
        cached = self._logger._experiment_entity
        if cached is not None and cached.experiment_id == experiment_id:
            return cached
        return self._client.get_experiment(experiment_id)


class BackgroundMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` whose logging never blocks or stops training (module docstring)."""

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = os.getenv("MLFLOW_TRACKING_URI"),
        tags: dict[str, Any] | None = None,
        save_dir: str | None = "./mlruns",
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
        request_timeout: int = 10,
        retry_interval: float = 30.0,
        flush_timeout: float = 30.0,
    ):
        """
        Args:
            experiment_name, run_name, tracking_uri, tags, save_dir, log_model, prefix,
                artifact_location, run_id, synchronous: as Lightning's ``MLFlowLogger``; ``save_dir``
                also roots the spool (``<save_dir>/<experiment id>/<run id>/mlflow_spool.jsonl``).
            request_timeout: Seconds one HTTP request to the server may take (MLflow's
                ``MLFLOW_HTTP_REQUEST_TIMEOUT``, set with no retries while logging unless the
                environment sets them).
            retry_interval: Seconds between attempts to send the spool while the server fails.
            flush_timeout: Longest wait at the end of the run for unsent records (the rest is spooled).
        """
        super().__init__(experiment_name, run_name, tracking_uri, tags, save_dir, log_model, prefix,
                         artifact_location, run_id, synchronous)  # fmt: skip
        self.request_timeout, self.retry_interval, self.flush_timeout = (
            request_timeout,
            retry_interval,
            flush_timeout,
        )
        self._spool_root = save_dir or "./mlruns"
        self._sender: _Sender | None = None
        self._experiment_entity = None
        self._saved_env: dict[str, str | None] = {}

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        client = super().experiment
        if self._experiment_entity is None:  # once, when the run starts (the server answered moments ago)
            self._experiment_entity = client.get_experiment(self._experiment_id)
        return _QueuedClient(client, self)

    @property
    def spool_path(self) -> Path:
        return Path(self._spool_root, str(self.experiment_id), str(self.run_id), SPOOL_NAME)

    def enqueue(self, record: dict) -> None:
        if self._sender is None:
            self._quick_http_on()
            self._sender = _Sender(
                self._mlflow_client, str(self._tracking_uri), self.spool_path, self.retry_interval
            )
            self._sender.start()
        self._sender.queue.put(record)

    def _quick_http_on(self) -> None:
        quick = {
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.request_timeout),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        }
        self._saved_env = {key: os.environ.get(key) for key in quick}
        for key, value in quick.items():
            os.environ.setdefault(key, value)

    def _quick_http_off(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
        self._saved_env = {}

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        if self._checkpoint_callback:  # log_model: checkpoints as artifacts (queued like every write)
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        mlflow_status = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}.get(
            status, status
        )
        self.enqueue({"kind": "terminated", "run_id": self.run_id, "status": mlflow_status,
                      "end_time": int(time.time() * 1000)})  # fmt: skip
        sender, self._sender = self._sender, None
        sender.queue.put(_STOP)
        sender.join(timeout=self.flush_timeout)
        if sender.is_alive():  # stuck in a request: keep what it holds
            sender.append(sender.drain())
        self._quick_http_off()
        if sender.spool.exists():
            print(
                f"MLflow: {sum(1 for _ in sender.spool.open())} record(s) of run {self.run_id} could not be sent "
                f"to {self._tracking_uri}; upload them when it answers: python -m jf_lightning upload-spool "
                f"{sender.spool} --tracking-uri {self._tracking_uri}"
            )


# ------------------------------------------------------------------------------------- command


def main(argv: list[str]) -> None:
    """``jf upload-spool <spool.jsonl> [--tracking-uri URI]``: send a spool a run left behind."""
    parser = argparse.ArgumentParser(
        prog="jf upload-spool", description="Send the MLflow records a run spooled."
    )
    parser.add_argument("spool", type=Path, help=f"the run's {SPOOL_NAME} (in its run directory)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="the tracking server or store the run belongs to (default: $MLFLOW_TRACKING_URI)")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.spool.is_file():
        parser.error(f"{args.spool}: no such spool file")
    try:
        check_tracking_server(args.tracking_uri)
        sent = upload_spool(MlflowClient(args.tracking_uri), args.spool)
    except UserInputError as err:
        parser.error(str(err))
    except Exception as err:  # noqa: BLE001 (the server failed part-way: the rest stays in the spool)
        parser.error(f"{args.tracking_uri}: {unreachable(err) or str(err).splitlines()[0]}; the records not "
                     f"sent stay in {args.spool}")  # fmt: skip
    print(f"{sent} record(s) sent to {args.tracking_uri}")
