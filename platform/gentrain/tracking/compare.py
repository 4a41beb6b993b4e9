"""Runs side by side: `gentrain runs compare` and a sweep's outcome on its parent run."""

import json
from dataclasses import dataclass
from typing import Any

from gentrain.errors import SpecError
from gentrain.tracking.access import refusal
from gentrain.tracking.heartbeat import EVERY, age
from gentrain.tracking.runs import PARENT, SAMPLED, children
from gentrain.tracking.store import client_for


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: the params that vary between them and their final metrics, best
    first by `metric`."""

    metric: str
    mode: str
    params: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]]  # run_id, name, status, then params and metrics by name

    def csv(self) -> str:
        import csv
        import io

        columns = ["run_id", "name", "status", *self.params, *self.metrics]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()


def compare(*, uri: str, experiment: str | None = None, parent_id: str | None = None) -> Comparison:
    """The runs of `experiment` (a sweep's parents and plain runs), or the trials of the sweep
    `parent_id`. Sorted by the sweep's metric when there is one, else by loss."""
    client = client_for(uri)
    if parent_id is not None:
        try:
            parent = client.get_run(parent_id)
        except Exception as err:
            raise refusal(err, uri) or SpecError(
                f"--parent: no MLflow run '{parent_id}' in {uri}"
            ) from None
        runs = children(parent_id, uri=uri)
        metric = parent.data.params.get("sweep.metric", "loss")
        mode = parent.data.params.get("sweep.mode", "min")
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise SpecError(f"EXPERIMENT: no experiment '{experiment}' in {uri}")
        runs = client.search_runs([found.experiment_id], max_results=5000)
        runs = [run for run in runs if PARENT not in run.data.tags]  # trials: --parent
        metric, mode = "loss", "min"
    params = _varied_params(runs)
    metrics = sorted({name for run in runs for name in run.data.metrics})
    if metric in metrics:
        metrics = [metric, *(name for name in metrics if name != metric)]
    rows = [
        {
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "status": _status(run),
            **{name: run.data.params.get(name, "") for name in params},
            **{name: run.data.metrics[name] for name in metrics if name in run.data.metrics},
        }
        for run in runs
    ]
    sign = 1 if mode == "min" else -1
    rows.sort(key=lambda row: (metric not in row, sign * row.get(metric, 0.0)))
    return Comparison(metric=metric, mode=mode, params=params, metrics=metrics, rows=rows)


def _status(run) -> str:
    """The run's status; a RUNNING run whose owner stopped beating says so (`gentrain runs
    reconcile` ends it once its owner is gone)."""
    silent = age(run.data.tags) if run.info.status == "RUNNING" else None
    if silent is None or silent < 3 * EVERY:  # three heartbeats missed
        return run.info.status
    return f"RUNNING (no heartbeat for {_duration(silent)})"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _varied_params(runs: list) -> list[str]:
    keys = sorted({key for run in runs for key in run.data.params})
    return [key for key in keys if len({run.data.params.get(key) for run in runs}) > 1]


def log_sweep_outcome(parent_id: str, comparison: Comparison, *, uri: str) -> None:
    """best_<metric>, the best trial's run id and values, and trials.csv on the parent."""
    client = client_for(uri)
    client.log_text(parent_id, comparison.csv(), "trials.csv")
    best = next((row for row in comparison.rows if comparison.metric in row), None)
    if best is None:
        return
    client.log_metric(parent_id, f"best_{comparison.metric}", best[comparison.metric])
    client.set_tag(parent_id, "gentrain.best_run_id", best["run_id"])
    best_tags = client.get_run(best["run_id"]).data.tags
    config = {k.removeprefix(SAMPLED): v for k, v in best_tags.items() if k.startswith(SAMPLED)}
    client.set_tag(parent_id, "gentrain.best_config", json.dumps(config, sort_keys=True))
