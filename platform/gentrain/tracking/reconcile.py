"""`gentrain runs reconcile`: a run left RUNNING by an owner that is gone (a driver killed with
SIGKILL, a machine that went away) is ended FAILED, so that it stops looking alive."""

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from gentrain.errors import SpecError
from gentrain.tracking.heartbeat import HEARTBEAT_STEP, OWNER, age
from gentrain.tracking.runs import end_run
from gentrain.tracking.store import client_for

FAILURE = "heartbeat lost at step {step}"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Abandoned:
    """A RUNNING run whose heartbeat is older than the limit and whose owner is not alive."""

    run_id: str
    name: str
    experiment: str
    step: int
    silent_for: float  # seconds since its last heartbeat
    owner: str  # who owned it, and what is known of that process now


def parse_duration(text: str, option: str = "--older-than") -> float:
    """'90s', '10m', '2h', '1d' or plain seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not found:
        raise SpecError(f"{option}: {text!r} is not a duration (e.g. 90s, 10m, 2h, 1d)")
    return float(found[1]) * UNITS[found[2] or "s"]


def abandoned(
    *,
    uri: str,
    experiment: str | None,
    older_than: float,
    owner_alive: Callable[[dict], bool | None],
) -> list[Abandoned]:
    """The RUNNING runs of `experiment` (default: every experiment) to end. An owner that cannot
    be checked from here (another machine, its cluster away) counts as gone once its heartbeat
    is that old."""
    client = client_for(uri)
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise SpecError(f"EXPERIMENT: no experiment '{experiment}' in {uri}")
        experiments = {found.experiment_id: found.name}
    else:
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    now, found = time.time(), []
    for run in _running(client, list(experiments)):
        tags = run.data.tags
        silent = age(tags, now)
        if silent is None:  # never beat (a run of an older gentrain): silent since its start
            silent = now - run.info.start_time / 1000
        if silent < older_than:
            continue
        owner = _owner(tags)
        alive = owner_alive(owner) if owner else None
        if alive:
            continue
        found.append(
            Abandoned(
                run_id=run.info.run_id,
                name=run.info.run_name or "",
                experiment=experiments[run.info.experiment_id],
                step=int(tags.get(HEARTBEAT_STEP) or 0),
                silent_for=silent,
                owner=_describe(owner, alive),
            )
        )
    return found


def end(run: Abandoned, *, uri: str) -> None:
    end_run(run.run_id, uri=uri, status="FAILED", reason=FAILURE.format(step=run.step))


def _running(client, experiment_ids: list[str]) -> list:
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(
            experiment_ids,
            filter_string="attributes.status = 'RUNNING'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _owner(tags: dict[str, str]) -> dict:
    try:
        owner = json.loads(tags.get(OWNER) or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict, alive: bool | None) -> str:
    if not owner:
        return "owner unknown"
    if owner.get("ray_job"):
        who = f"Ray job {owner['ray_job']}"
    else:
        who = f"pid {owner.get('pid')} on {owner.get('host')}"
    return who + (" (gone)" if alive is False else " (not reachable from here)")
