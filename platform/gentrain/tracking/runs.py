"""A job's MLflow run: created with the spec's params and tags, a sweep's parent and one child
run per trial, and the run's end."""

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gentrain.errors import ERROR_FILE, GentrainError, SpecError, first_line, traceback_of
from gentrain.redact import redact, redact_values
from gentrain.spec import JobSpec, flatten
from gentrain.tracking import source
from gentrain.tracking.access import check_can_log, refusal, run_user
from gentrain.tracking.store import client_for

# The UI opens an experiment of this kind on its runs (model training), not on the GenAI
# overview of traces and judges.
TRAINING_EXPERIMENT = {"mlflow.experimentKind": "custom_model_development"}

MLFLOW_USER = "mlflow.user"  # the run's user: the one signed in to the tracking server

# MLflow's run ids (uuid hex); a run id also names its checkpoint directory under storage.path
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_run_id(run_id: str, option: str = "--resume") -> None:
    if not RUN_ID.match(run_id):
        raise SpecError(
            f"{option}: {run_id!r} is not an MLflow run id (letters, digits, '-' and '_', "
            "as `gentrain run` prints it)"
        )


def check_run_exists(
    run_id: str, *, uri: str, option: str = "--resume", write: bool = False
) -> None:
    """A SpecError unless the store has the run and lets this user read it (and log to it, when
    `write`)."""
    check_run_id(run_id, option)
    client = client_for(uri)
    try:
        run = client.get_run(run_id)
    except Exception as err:
        raise refusal(err, uri) or SpecError(
            f"{option}: no MLflow run '{run_id}' in {redact(uri)}"
        ) from None
    if write:
        experiment = client.get_experiment(run.info.experiment_id)
        check_can_log(uri, experiment_id=experiment.experiment_id, experiment=experiment.name)


def start_run(
    spec: JobSpec,
    *,
    uri: str,
    resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    name: str | None = None,
    source_tags: dict[str, str] | None = None,
) -> str:
    """Create the job's run (or reopen `resume_run_id`) with params, tags and spec.yaml."""
    client = client_for(uri)
    if resume_run_id is not None:
        check_run_exists(resume_run_id, uri=uri)
        client.update_run(resume_run_id, status="RUNNING")
        for key, value in _tags(spec).items():  # what it trains under now (params: at its start)
            client.set_tag(resume_run_id, key, value)
        return resume_run_id

    experiment = client.get_experiment_by_name(spec.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(spec.experiment, tags=TRAINING_EXPERIMENT)
    )
    described = source_tags if source_tags is not None else source.of_spec(None)
    tags = {MLFLOW_USER: run_user(uri), **_tags(spec), **described, **(tags or {})}
    run = client.create_run(experiment_id, tags=tags, run_name=name)
    run_id = run.info.run_id
    try:
        _log_spec(client, run_id, spec)
    except Exception as err:  # the store refused what it was sent: the run ends, never RUNNING
        reason = f"the tracking store did not take the spec: {first_line(err)}"
        end_run(run_id, uri=uri, status="FAILED", reason=reason, error=traceback_of(err))
        raise GentrainError(f"run {run_id} failed: {reason}") from err
    return run_id


def _log_spec(client, run_id: str, spec: JobSpec) -> None:
    """The resolved spec as params (dotted keys) and as spec.yaml, a password in it masked."""
    from mlflow.entities import Param

    shown = redact_values(spec.to_dict())
    params = [Param(key, _param_value(v)) for key, v in flatten(shown).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=params[start : start + 100])
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(shown, sort_keys=False))
        client.log_artifact(run_id, str(spec_file))


# --- sweeps: a parent run, one child run per trial ------------------------------------------

PARENT = "mlflow.parentRunId"
TRIAL_ID = "gentrain.trial_id"
SWEEP = "gentrain.sweep"  # on a sweep's parent run: the spec's sha256
SAMPLED = "gentrain.sampled."  # + dotted key: a trial's value of one searched key


def start_sweep_run(spec: JobSpec, *, uri: str, source_tags: dict[str, str] | None = None) -> str:
    return start_run(
        spec,
        uri=uri,
        tags={SWEEP: spec.sha256()},
        name=f"sweep-{spec.name}",
        source_tags=source_tags,
    )


def unfinished_sweep_run(spec: JobSpec, *, uri: str) -> str | None:
    """The latest parent run of this very spec that did not finish (killed or interrupted)."""
    client = client_for(uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{SWEEP}` = '{spec.sha256()}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def trial_run(
    spec: JobSpec, *, uri: str, parent_id: str, trial_id: str, values: dict
) -> tuple[str, dict | None]:
    """The child run of trial `trial_id`: created on its first start, reopened when the trial
    is restored (a resumed sweep, a PBT exploit), so a trial never gets two runs. With it, the
    run's final metrics when it has already FINISHED (it ended after Tune last saved the sweep's
    state, and the sweep is resumed): then it is left as it is, else None."""
    sampled = {f"{SAMPLED}{key}": _param_value(value) for key, value in values.items()}
    existing = children(parent_id, uri=uri, trial_id=trial_id)
    if existing and existing[0].info.status == "FINISHED":
        return existing[0].info.run_id, dict(existing[0].data.metrics)
    if existing:
        run_id = existing[0].info.run_id
        client = client_for(uri)
        client.update_run(run_id, status="RUNNING")
        for key, value in sampled.items():  # PBT may have mutated them
            client.set_tag(run_id, key, value)
        return run_id, None
    parent_tags = client_for(uri).get_run(parent_id).data.tags
    inherited = {k: v for k, v in parent_tags.items() if k.startswith(source.PREFIX)}
    tags = {**inherited, PARENT: parent_id, TRIAL_ID: trial_id, **sampled}  # the sweep's source
    return start_run(spec, uri=uri, tags=tags, name=trial_id), None


def children(parent_id: str, *, uri: str, trial_id: str | None = None) -> list:
    client = client_for(uri)
    experiment_id = client.get_run(parent_id).info.experiment_id
    query = f"tags.`{PARENT}` = '{parent_id}'"
    if trial_id is not None:
        query += f" and tags.`{TRIAL_ID}` = '{trial_id}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=5000)


def run_status(run_id: str, *, uri: str) -> str:
    return client_for(uri).get_run(run_id).info.status


def trial_run_id(parent_id: str, trial_id: str, *, uri: str) -> str | None:
    runs = children(parent_id, uri=uri, trial_id=trial_id)
    return runs[0].info.run_id if runs else None


def end_open_trials(parent_id: str, *, uri: str, reason: str) -> None:
    """Every child run still RUNNING ends KILLED with `reason` (the sweep stopped around it)."""
    for run in children(parent_id, uri=uri):
        if run.info.status == "RUNNING":
            end_run(run.info.run_id, uri=uri, status="KILLED", reason=reason)


def end_run(
    run_id: str, *, uri: str, status: str, reason: str | None = None, error: str | None = None
) -> None:
    """Close the run; a failed one keeps its reason (a tag) and its traceback (error.txt)."""
    client = client_for(uri)
    if reason:
        client.set_tag(run_id, "gentrain.failure", reason[:5000])
    if error:
        try:
            client.log_text(run_id, error, ERROR_FILE)
        except Exception:  # an artifact store that takes nothing: the run still ends
            pass
    client.set_terminated(run_id, status=status)


def set_tag(run_id: str, key: str, value: str, *, uri: str) -> None:
    client_for(uri).set_tag(run_id, key, value)


def log_text(run_id: str, text: str, path: str, *, uri: str) -> None:
    client_for(uri).log_text(run_id, text, path)


def _tags(spec: JobSpec) -> dict[str, str]:
    return {
        **spec.tracking.tags,
        "gentrain.family": spec.model.family,
        "gentrain.strategy": spec.train.strategy,
        "gentrain.workers": str(spec.train.workers),
        "gentrain.spec_sha256": spec.sha256(),
    }


PARAM_LENGTH = 6000  # MLflow's limit for a param's value; spec.yaml holds the whole spec


def _param_value(value: Any) -> str:
    text = "" if value is None else str(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= PARAM_LENGTH else text[: PARAM_LENGTH - 3] + "..."
