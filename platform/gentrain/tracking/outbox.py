"""What rank 0 sends to the tracking store goes through a local outbox: training appends entries
to a file and never waits on the network; a background thread sends them on, in order. While the
store is away the entries wait on disk (memory stays bounded) and the thread retries; once it is
back the thread catches up. If it never comes back the outbox stays, with everything the run
wrote, for `gentrain runs upload DIR`."""

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gentrain.errors import first_line
from gentrain.redact import redact
from gentrain.tracking.access import refusal
from gentrain.tracking.datasets import CONTEXT
from gentrain.tracking.models import log_checkpoint_model, log_pytorch_model
from gentrain.tracking.runs import end_run
from gentrain.tracking.store import client_for

ENTRIES = "entries.jsonl"  # a JSON object a line: metrics, a tag, an artifact, an image, a table,
# a model, the end
SENT = "sent"  # how many bytes of ENTRIES the store has
RUN = "run.json"  # the run and its tracking store
KEPT = "kept"  # written when rank 0 stopped waiting for the store: the outbox is for later
RETRY_S = (1, 2, 5, 10)  # waits between tries while the store is away (the last repeats)
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch


class Outbox:
    def __init__(self, directory: Path, *, uri: str, run_id: str, warn: Callable[[str], None]):
        self.directory, self.uri, self.run_id, self.warn = directory, uri, run_id, warn
        directory.mkdir(parents=True, exist_ok=True)
        (directory / RUN).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
        self.writing = threading.Lock()  # appends to ENTRIES
        self.sending = threading.Lock()  # held while a batch is on its way
        self.wake, self.done, self.given_up = threading.Event(), False, threading.Event()
        self.model: tuple[Callable[[], None], Callable[[Path], dict]] | None = None
        self.away_since: float | None = None
        self.thread = threading.Thread(target=self._send_loop, daemon=True, name="outbox")
        self.thread.start()

    # --- called by the training loop: appends, never waits on the store -----------------------

    def put(self, entry: dict[str, Any]) -> None:
        with self.writing, (self.directory / ENTRIES).open("a") as stream:
            stream.write(json.dumps(entry) + "\n")
        self.wake.set()

    def put_file(self, source: Path, artifact_path: str) -> None:
        """A copy of `source`, to be logged under `artifact_path`."""
        kept = self._keep(source, Path(artifact_path) / source.name)
        self.put({"artifact": kept, "path": artifact_path})

    def put_image(self, source: Path, *, key: str, step: int) -> None:
        """A copy of the image file `source`, to be logged as MLflow's image `key` at `step`."""
        kept = self._keep(source, Path("images") / f"{key}-{step}{source.suffix}")
        now = int(time.time() * 1000)
        self.put({"image": kept, "key": key, "step": step, "timestamp": now})

    def _keep(self, source: Path, name: Path) -> str:
        """Copy `source` into the outbox as files/`name`; its path inside the outbox."""
        kept = self.directory / "files" / name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, kept)
        return str(kept.relative_to(self.directory))

    def put_model(self, log: Callable[[], None], save: Callable[[Path], dict]) -> None:
        """The final model: `log()` logs it to the store once the entries before it are sent;
        if the store is not back in time, `save(dir)` writes it into the outbox and returns the
        entry that `gentrain runs upload` logs it from."""
        self.model = (log, save)
        self.wake.set()

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for everything to be sent: True if it was (the outbox is
        removed), else False and the outbox keeps what the store lacks, the model included."""
        self.done = True
        self.wake.set()
        self.thread.join(timeout)
        if not self.thread.is_alive():
            shutil.rmtree(self.directory, ignore_errors=True)
            return True
        self.given_up.set()
        with self.sending:  # a batch on its way arrives, or is counted unsent
            if self.model is not None:
                _, save = self.model
                self.put(save(self.directory / "model"))
                self.model = None
            (self.directory / KEPT).write_text(f"the store was away for more than {timeout} s")
        return False

    # --- the sending thread -------------------------------------------------------------------

    def _send_loop(self) -> None:
        tries = 0
        while not self.given_up.is_set():
            self.wake.wait(timeout=1.0)
            self.wake.clear()
            with self.sending:
                if self.given_up.is_set():
                    return
                try:
                    with _one_try(timeout_s=10):
                        send(self.directory, uri=self.uri, run_id=self.run_id)
                    # the model last: MLflow links it to the metrics the run has by then
                    if self.model is not None and self.done and not unsent(self.directory):
                        log, _ = self.model
                        with _one_try(timeout_s=None):  # an upload takes as long as it takes
                            log()
                        self.model = None
                except Exception as err:  # whatever the store's client raises: try again later
                    self._away(err)
                    wait = RETRY_S[min(tries, len(RETRY_S) - 1)]
                    tries += 1
                else:
                    tries, wait = 0, 0
                    self._back()
                    if self.done and self.model is None and not unsent(self.directory):
                        return
            if wait:
                self.given_up.wait(wait)
                self.wake.set()

    def _away(self, err: Exception) -> None:
        if self.away_since is None:
            self.away_since = time.monotonic()
            self.warn(
                f"tracking store {_shown(self.uri)} is not answering ({first_line(err)}); "
                f"training goes on and what it logs waits in {self.directory} until it is back"
            )

    def _back(self) -> None:
        if self.away_since is not None:
            away = time.monotonic() - self.away_since
            self.away_since = None
            self.warn(f"tracking store {_shown(self.uri)} is back after {away:.0f} s; caught up")


@contextmanager
def _one_try(timeout_s: int | None):
    """MLflow's HTTP client tries each request 8 times over minutes: the sending thread retries
    on its own, and a request hanging on a dead store would hold back everything behind it.
    `timeout_s`: how long one request may take (None: MLflow's default). (MLflow reads these
    settings from the environment, for the whole process.)"""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    if timeout_s is not None:
        quick["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    before = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unsent(directory: Path) -> list[tuple[int, dict[str, Any]]]:
    """(offset after it, entry) for each entry of the outbox that the store does not have."""
    start = int((directory / SENT).read_text()) if (directory / SENT).exists() else 0
    if not (directory / ENTRIES).exists():
        return []
    found, offset = [], start
    with (directory / ENTRIES).open("rb") as stream:
        stream.seek(start)
        for line in stream:
            if not line.endswith(b"\n"):  # still being written
                break
            offset += len(line)
            found.append((offset, json.loads(line)))
    return found


def last_step(directory: Path, key: str) -> int:
    """The last step of metric `key` waiting in the outbox (0 if none): a run resumed after its
    driver died finds there what its previous workers logged but never sent."""
    steps = [
        step
        for _, entry in (unsent(directory) if directory.exists() else [])
        for name, _, _, step in entry.get("metrics", [])
        if name == key
    ]
    return max(steps, default=0)


def send(directory: Path, *, uri: str, run_id: str) -> None:
    """Send the outbox's unsent entries in order, recording how far the store got."""
    from mlflow.entities import Metric

    client = client_for(uri)
    batch: list[Metric] = []
    through: int | None = None  # the offset after the last entry in `batch`

    def sent_through(offset: int) -> None:
        (directory / SENT).write_text(str(offset))

    def send_batch() -> None:
        nonlocal batch, through
        if batch:
            client.log_batch(run_id, metrics=batch)
        if through is not None:
            sent_through(through)
        batch, through = [], None

    for offset, entry in unsent(directory):
        if "metrics" in entry:
            batch += [Metric(key, value, ms, step) for key, value, ms, step in entry["metrics"]]
            through = offset
            if len(batch) >= METRICS_PER_BATCH:
                send_batch()
            continue
        send_batch()
        if "tag" in entry:
            client.set_tag(run_id, *entry["tag"])
        elif "artifact" in entry:
            client.log_artifact(run_id, str(directory / entry["artifact"]), entry["path"])
        elif "image" in entry:
            _log_image(client, run_id, directory / entry["image"], entry)
        elif "checkpoint" in entry:
            log_checkpoint_model(client, run_id=run_id, **entry["checkpoint"])
        elif "datasets" in entry:
            _log_datasets(client, run_id, entry["datasets"])
        elif "table" in entry:
            client.log_table(run_id, data=entry["table"], artifact_file=entry["path"])
        elif "saved_model" in entry:
            _log_saved_model(directory / entry["saved_model"], uri=uri, run_id=run_id, **entry)
        elif "end" in entry:
            end_run(
                run_id,
                uri=uri,
                status=entry["end"],
                reason=entry["reason"],
                error=entry.get("error"),
            )
        sent_through(offset)
    send_batch()


def _log_datasets(client, run_id: str, entries: list[dict]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [
        DatasetInput(Dataset(**entry["dataset"]), tags=[InputTag(CONTEXT, entry["context"])])
        for entry in entries
    ]
    client.log_inputs(run_id, datasets=inputs)  # MLflow keeps one of each (dataset, run)


def _log_image(client, run_id: str, path: Path, entry: dict) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        step, timestamp = entry["step"], entry["timestamp"]
        client.log_image(run_id, image, key=entry["key"], step=step, timestamp=timestamp)


def _log_saved_model(
    path: Path, *, uri: str, run_id: str, register_as: str | None, step: int = 0, **_
) -> None:
    import mlflow

    module = mlflow.pytorch.load_model(str(path), map_location="cpu")
    signature = mlflow.models.Model.load(str(path)).signature
    log_pytorch_model(module, signature, uri=uri, run_id=run_id, register_as=register_as, step=step)


def keep_end(directory: Path, *, status: str, reason: str | None, error: str | None) -> None:
    """The run's end, for the upload (the driver could not tell the store)."""
    with (directory / ENTRIES).open("a") as stream:
        stream.write(json.dumps({"end": status, "reason": reason, "error": error}) + "\n")


def upload(directory: Path) -> str:
    """Send what an outbox kept to its run's store; returns the run id. Raises when the store
    still cannot take it (the outbox stays, the entries sent so far recorded): a SpecError when
    it refuses these credentials."""
    run = json.loads((directory / RUN).read_text())
    try:
        send(directory, uri=run["tracking_uri"], run_id=run["run_id"])
    except Exception as err:
        refused = refusal(err, run["tracking_uri"], write=True)  # bad credentials: a SpecError
        if refused is None:
            raise
        raise refused from None
    shutil.rmtree(directory)
    return run["run_id"]


def _shown(uri: str) -> str:
    return redact(uri)
