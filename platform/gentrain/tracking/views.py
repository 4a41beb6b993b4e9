"""A sweep's saved view in the MLflow UI: the experiment's runs filtered to the sweep's trials,
listed flat (the UI nests children only when unfiltered) and best first, with a
parallel-coordinates chart of the searched keys against the sweep's metric. The UI keeps saved
views as experiment tags (mlflow.sharedViewState.<key>), lists them in its views menu and opens
one from the URL (?viewStateShareKey=<key>)."""

import json
import time
import uuid

from gentrain.tracking.runs import PARENT
from gentrain.tracking.store import client_for

VIEW_TAG = "mlflow.sharedViewState."


def save_sweep_view(
    *, uri: str, parent_id: str, name: str, metric: str, mode: str, params: list[str]
) -> str:
    """Save the view of sweep `parent_id` in its experiment; returns its address in the UI."""
    client = client_for(uri)
    experiment_id = client.get_run(parent_id).info.experiment_id
    section = str(uuid.uuid4())
    chart = {
        "uuid": str(uuid.uuid4()),
        "type": "PARALLEL",
        "displayName": f"{metric} by the searched keys",
        "metricSectionId": section,
        "runsCountToCompare": 100,
        "selectedParams": params,
        "selectedMetrics": [metric],
        "showAllRuns": True,
        "deleted": False,
        "isGenerated": False,
    }
    state = {
        "searchFilter": f"tags.`{PARENT}` = '{parent_id}'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",
        "compareRunCharts": [chart],
        "compareRunSections": [
            {"uuid": section, "name": "Sweep", "display": True, "isReordered": False,
             "deleted": False, "isGenerated": False}
        ],
    }  # fmt: skip
    now = int(time.time() * 1000)
    envelope = {
        "name": f"sweep {name}: trials by {metric}",
        "createdAt": now,
        "updatedAt": now,
        "state": json.dumps(state),
    }
    client.set_experiment_tag(experiment_id, VIEW_TAG + _key(parent_id), json.dumps(envelope))
    return sweep_view_path(uri=uri, parent_id=parent_id)


def sweep_view_path(*, uri: str, parent_id: str) -> str:
    """The UI's address of sweep `parent_id`'s view, after the server's."""
    experiment_id = client_for(uri).get_run(parent_id).info.experiment_id
    key = _key(parent_id)
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}&compareRunsMode=CHART"


def _key(parent_id: str) -> str:
    return f"sweep-{parent_id[:12]}"
