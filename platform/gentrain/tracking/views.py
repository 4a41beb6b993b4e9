"""Saved views of the MLflow UI's runs page: which runs it lists, in what order, and which
charts it draws. The UI keeps them as experiment tags (mlflow.sharedViewState.<key>), lists
them in its views menu and opens one from the URL (?viewStateShareKey=<key>). A sweep saves
one: its trials listed flat (the UI nests children only when unfiltered) and best first, with
a parallel-coordinates chart of the searched keys against the sweep's metric."""

import json
import time
import uuid

from gentrain.tracking.runs import PARENT
from gentrain.tracking.store import client_for

VIEW_TAG = "mlflow.sharedViewState."


def save_view(
    client, experiment_id: str, *, key: str, name: str, charts: list[dict], **listing
) -> str:
    """Save a view of `charts` (the UI's chart cards, in one section) over the runs `listing`
    selects and orders (searchFilter, orderByKey, orderByAsc); returns its address in the UI,
    after the server's."""
    section = str(uuid.uuid4())
    cards = [
        {"uuid": str(uuid.uuid4()), "metricSectionId": section, "deleted": False,
         "isGenerated": False, **chart}
        for chart in charts
    ]  # fmt: skip
    state = {
        **listing,
        "compareRunCharts": cards,
        "compareRunSections": [
            {"uuid": section, "name": name, "display": True, "isReordered": False,
             "deleted": False, "isGenerated": False}
        ],
    }  # fmt: skip
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG + key, json.dumps(envelope))
    return view_path(experiment_id, key)


def view_path(experiment_id: str, key: str) -> str:
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}&compareRunsMode=CHART"


def save_sweep_view(
    *, uri: str, parent_id: str, name: str, metric: str, mode: str, params: list[str]
) -> str:
    """Save the view of sweep `parent_id` in its experiment; returns its address in the UI."""
    client = client_for(uri)
    experiment_id = client.get_run(parent_id).info.experiment_id
    chart = {
        "type": "PARALLEL",
        "displayName": f"{metric} by the searched keys",
        "runsCountToCompare": 100,
        "selectedParams": params,
        "selectedMetrics": [metric],
        "showAllRuns": True,
    }
    return save_view(
        client,
        experiment_id,
        key=_key(parent_id),
        name=f"sweep {name}: trials by {metric}",
        charts=[chart],
        searchFilter=f"tags.`{PARENT}` = '{parent_id}'",
        orderByKey=f"metrics.`{metric}`",
        orderByAsc=mode == "min",
    )


def sweep_view_path(*, uri: str, parent_id: str) -> str:
    """The UI's address of sweep `parent_id`'s view, after the server's."""
    experiment_id = client_for(uri).get_run(parent_id).info.experiment_id
    return view_path(experiment_id, _key(parent_id))


def _key(parent_id: str) -> str:
    return f"sweep-{parent_id[:12]}"
