"""`sweep.warm_start`: the trials of an earlier sweep (one parent run, or every sweep of an
experiment), read back from MLflow in the current sweep's space. Bayesian search is told them
as Optuna trials it did not run; grid and random search skip the configurations they ran."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gentrain.errors import SpecError
from gentrain.redact import redact
from gentrain.spec_sweep import SweepSection
from gentrain.tracking import check_reachable, client_for
from gentrain.tracking.runs import PARENT, SAMPLED


@dataclass(frozen=True)
class EarlierTrial:
    values: dict[str, Any]  # the searched keys, typed as the current space has them
    value: float | None  # the sweep metric's last value
    finished: bool  # ran to its end; else a scheduler or budget stopped it (pruned)
    history: dict[int, float]  # step -> the sweep metric


def earlier_trials(sweep: SweepSection, *, uri: str) -> tuple[list[EarlierTrial], int]:
    """The earlier sweep's trials that ended (finished, or stopped early) with the sweep metric
    and lie in this sweep's space; and how many trials it had in all."""
    nowhere = SpecError(
        f"sweep.warm_start: no sweep's parent run and no experiment named "
        f"'{sweep.warm_start}' in {redact(uri)}"
    )
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise nowhere  # no store yet: reading would make one
    check_reachable(uri)
    client = client_for(uri)
    runs = _trial_runs(client, sweep.warm_start, nowhere)
    found = []
    for run in runs:
        values = _values_in(sweep.space, run.data.tags)
        value = run.data.metrics.get(sweep.metric)
        if values is None or value is None or not math.isfinite(value):
            continue
        if run.info.status not in ("FINISHED", "KILLED"):
            continue
        history = client.get_metric_history(run.info.run_id, sweep.metric)
        found.append(
            EarlierTrial(
                values=values,
                value=value,
                finished=run.info.status == "FINISHED",
                history={m.step: m.value for m in history if math.isfinite(m.value)},
            )
        )
    return found, len(runs)


def was_run(config: dict[str, Any], earlier: list[EarlierTrial]) -> bool:
    return any(_same(config, trial.values) for trial in earlier)


def _trial_runs(client, source: str, nowhere: SpecError) -> list:
    """The child runs of sweep parent `source`, or of every sweep in experiment `source`."""
    try:
        parent = client.get_run(source)
    except Exception:
        parent = None
    if parent is not None:
        query = f"tags.`{PARENT}` = '{source}'"
        return client.search_runs([parent.info.experiment_id], query, max_results=5000)
    experiment = client.get_experiment_by_name(source)
    if experiment is None:
        raise nowhere
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    return [run for run in runs if PARENT in run.data.tags]


def _values_in(space: dict[str, dict], tags: dict[str, str]) -> dict[str, Any] | None:
    """A trial's sampled values (MLflow holds them as text) in `space`'s types, or None when
    one is missing or lies outside its range."""
    values = {}
    for key, dist in space.items():
        text = tags.get(f"{SAMPLED}{key}")
        value = None if text is None else _parse(dist, text)
        if value is None:
            return None
        values[key] = value
    return values


def _parse(dist: dict[str, Any], text: str) -> Any:
    ((kind, bounds),) = dist.items()
    if kind in ("choice", "grid"):
        return next((choice for choice in bounds if str(choice) == text), None)
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        return None
    return value if bounds[0] <= value <= bounds[1] else None


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def equal(x, y) -> bool:
        if isinstance(x, float) or isinstance(y, float):
            return isinstance(y, int | float) and math.isclose(x, y, rel_tol=1e-9)
        return x == y

    return a.keys() == b.keys() and all(equal(a[key], b[key]) for key in a)
