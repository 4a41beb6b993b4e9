"""The heartbeat of a RUNNING run: the process that owns it (the driver of a job, a sweep, a
trial) says every EVERY seconds that it is alive, and the step the run last reached. Tags, not
metrics: each beat overwrites the last (one row in the store, not a growing history), one
log_batch request. A run whose heartbeat is stale and whose owner is gone is ended by
`gentrain runs reconcile`."""

import json
import os
import threading
import time
from datetime import UTC, datetime

from gentrain.tracking.store import client_for

# seconds: 20 beats within reconcile's default 10 minutes, and ~0 load on a store (a run a
# minute: one tag row rewritten twice). GENTRAIN_HEARTBEAT_S sets another; 0: none.
EVERY = 30.0
HEARTBEAT = "gentrain.heartbeat"  # UTC time of the last beat, ISO 8601
HEARTBEAT_STEP = "gentrain.heartbeat_step"  # the step the run had reached then
OWNER = "gentrain.owner"  # JSON: host, pid, its start time; ray_job and ray_address in a job


def interval() -> float:
    return float(os.environ.get("GENTRAIN_HEARTBEAT_S") or EVERY)


class Heartbeat(threading.Thread):
    """Beats for `run_id` until stopped; `step` is set by whoever follows the training."""

    def __init__(self, run_id: str, *, uri: str, owner: dict, every: float | None = None):
        super().__init__(daemon=True, name=f"gentrain-heartbeat-{run_id}")
        self.run_id, self.uri, self.owner = run_id, uri, owner
        self.every = interval() if every is None else every
        self.step: int | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        if self.every <= 0:  # turned off
            return
        for _ in range(3):  # the owner is told once: a busy store gets another try
            if self._beat(owner=True) or self.stopping.wait(1):
                break
        while not self.stopping.wait(self.every):
            self._beat()
        self._beat()  # the final step

    def _beat(self, owner: bool = False) -> bool:
        from mlflow.entities import RunTag

        tags = {HEARTBEAT: format_time(time.time())}
        if self.step is not None:
            tags[HEARTBEAT_STEP] = str(self.step)
        if owner:
            tags[OWNER] = json.dumps(self.owner, sort_keys=True)
        try:
            client_for(self.uri).log_batch(
                self.run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True
            )
        except Exception:  # the store is away: the next beat tries again (reconcile waits long)
            return False
        return True

    def stop(self) -> None:
        """A last beat with the final step, then no more. Not waited for long: a store that is
        away holds a request for minutes, and the run's end has its own way round that."""
        self.stopping.set()
        self.join(timeout=5)


def format_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(tags: dict[str, str], now: float | None = None) -> float | None:
    """Seconds since the run's last heartbeat (None: it never beat, a run of an older gentrain)."""
    beat = tags.get(HEARTBEAT)
    if not beat:
        return None
    try:
        then = datetime.strptime(beat, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return (now or time.time()) - then
