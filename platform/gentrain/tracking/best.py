"""`gentrain runs best`: the best finished trial of a sweep (or of an experiment's sweeps), and
its resolved spec as a job to train at full length."""

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gentrain.errors import SpecError
from gentrain.tracking.access import refusal
from gentrain.tracking.runs import PARENT, SAMPLED, SWEEP
from gentrain.tracking.store import client_for

FROM_SWEEP = "gentrain.from_sweep"  # on a run trained from `gentrain runs best`'s spec
FROM_TRIAL = "gentrain.from_trial"


@dataclass(frozen=True)
class BestTrial:
    run_id: str
    parent_id: str
    metric: str
    value: float
    values: dict[str, str]  # the sampled values, as MLflow holds them
    spec: dict[str, Any]  # the trial's resolved spec, without a sweep section

    def job(self) -> dict[str, Any]:
        """The spec to train it as a job of its own: runs of it carry the sweep and trial."""
        spec = {key: value for key, value in self.spec.items() if key != "sweep"}
        tracking = dict(spec.get("tracking") or {})
        tracking["tags"] = {
            **(tracking.get("tags") or {}),
            FROM_SWEEP: self.parent_id,
            FROM_TRIAL: self.run_id,
        }
        spec["tracking"] = tracking
        return spec

    def job_yaml(self) -> str:
        return yaml.safe_dump(self.job(), sort_keys=False)


def best_trial(*, uri: str, experiment: str, parent_id: str | None = None) -> BestTrial:
    """The best FINISHED trial, by its sweep's metric and mode, of sweep `parent_id`, else of
    every sweep in `experiment` that optimises what its latest sweep does."""
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SpecError(f"EXPERIMENT: no experiment '{experiment}' in {uri}")
    runs = client.search_runs(
        [found.experiment_id], order_by=["attributes.start_time DESC"], max_results=5000
    )
    sweeps = [run for run in runs if SWEEP in run.data.tags]
    if parent_id is not None:
        sweeps = [run for run in sweeps if run.info.run_id == parent_id]
        if not sweeps:
            raise SpecError(f"--parent: no sweep '{parent_id}' in experiment '{experiment}'")
    if not sweeps:
        raise SpecError(f"EXPERIMENT: no sweep in '{experiment}'")
    metric = sweeps[0].data.params.get("sweep.metric", "loss")
    mode = sweeps[0].data.params.get("sweep.mode", "min")
    alike = {
        run.info.run_id
        for run in sweeps
        if (run.data.params.get("sweep.metric", "loss"), run.data.params.get("sweep.mode", "min"))
        == (metric, mode)
    }
    trials = [
        run
        for run in runs
        if run.data.tags.get(PARENT) in alike
        and run.info.status == "FINISHED"
        and math.isfinite(run.data.metrics.get(metric, math.nan))
    ]
    if not trials:
        raise SpecError(
            f"EXPERIMENT: no finished trial with {metric} in "
            + (f"sweep {parent_id}" if parent_id else f"the sweeps of '{experiment}'")
        )
    sign = 1 if mode == "min" else -1
    best = min(trials, key=lambda run: sign * run.data.metrics[metric])
    return BestTrial(
        run_id=best.info.run_id,
        parent_id=best.data.tags[PARENT],
        metric=metric,
        value=best.data.metrics[metric],
        values={
            key[len(SAMPLED) :]: value
            for key, value in best.data.tags.items()
            if key.startswith(SAMPLED)
        },
        spec=_spec_of(client, best.info.run_id, uri),
    )


def _spec_of(client, run_id: str, uri: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "spec.yaml", tmp)
        except Exception as err:
            raise refusal(err, uri) or SpecError(
                f"run {run_id} has no spec.yaml in its artifacts"
            ) from None
        return yaml.safe_load(Path(path).read_text())
