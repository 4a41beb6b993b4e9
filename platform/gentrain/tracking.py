"""Everything MLflow: the run of a job, its params, tags, metrics, samples and model.

The driver opens and closes runs; inside Ray only rank 0 logs, through a RunLogger.
"""

import json
import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gentrain import places
from gentrain.errors import ERROR_FILE, GentrainError, SpecError, first_line, traceback_of
from gentrain.redact import redact, redact_values
from gentrain.spec import JobSpec, flatten

# MLflow prints run, experiment and model URLs with the tracking URI as given, a password in it
# included; gentrain names the run itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_PRINT_MODEL_URLS_ON_CREATION", "false")

LOCAL_STORE = "mlflow.db"


def resolve_tracking_uri(spec: JobSpec | None = None, *, tracking_uri: str | None = None) -> str:
    """`tracking_uri`, else the spec's `tracking.uri`, else MLFLOW_TRACKING_URI, else a SQLite
    store in the working directory. Local forms are made absolute: Ray workers run elsewhere."""
    if not tracking_uri and spec and spec.tracking.uri:
        uri = spec.tracking.uri  # checked with the spec
    else:
        setting = "--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI"
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or LOCAL_STORE
        try:
            places.check_tracking_uri(uri)
        except ValueError as err:
            raise SpecError(f"{setting}: {err} (got {redact(uri)!r})") from None
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if places.scheme(uri) is None and uri != "databricks":  # a local SQLite file
        return f"sqlite:///{Path(uri).resolve()}"
    return uri


def client_for(uri: str):
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no store-migration chatter on the CLI
    if uri.startswith("sqlite:///") and uri not in _opened_stores:
        with _local_store_lock(Path(uri.removeprefix("sqlite:///"))):
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        _opened_stores.add(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


_opened_stores: set[str] = set()  # local stores this process has opened: created and migrated


@contextmanager
def _local_store_lock(database: Path):
    """One process at a time opens a local store first: MLflow creates and migrates a new sqlite
    store on first use, and two processes doing it at once break it for one of them (a run and
    `gentrain ui`, two runs). A lock on the store's directory: no file of its own."""
    import fcntl

    directory = os.open(database.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        yield
    finally:
        os.close(directory)  # releases the lock


# MLflow's run ids (uuid hex); a run id also names its checkpoint directory under storage.path
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_run_id(run_id: str, option: str = "--resume") -> None:
    if not RUN_ID.match(run_id):
        raise SpecError(
            f"{option}: {run_id!r} is not an MLflow run id (letters, digits, '-' and '_', "
            "as `gentrain run` prints it)"
        )


def check_run_exists(run_id: str, *, uri: str, option: str = "--resume") -> None:
    check_run_id(run_id, option)
    try:
        client_for(uri).get_run(run_id)
    except Exception:
        raise SpecError(f"{option}: no MLflow run '{run_id}' in {uri}") from None


def start_run(
    spec: JobSpec,
    *,
    uri: str,
    resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    name: str | None = None,
) -> str:
    """Create the job's run (or reopen `resume_run_id`) with params, tags and spec.yaml."""
    client = client_for(uri)
    if resume_run_id is not None:
        check_run_exists(resume_run_id, uri=uri)
        client.update_run(resume_run_id, status="RUNNING")
        return resume_run_id

    experiment = client.get_experiment_by_name(spec.experiment)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(spec.experiment)
    )
    run = client.create_run(experiment_id, tags={**_tags(spec), **(tags or {})}, run_name=name)
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


def start_sweep_run(spec: JobSpec, *, uri: str) -> str:
    return start_run(spec, uri=uri, tags={SWEEP: spec.sha256()}, name=f"sweep-{spec.name}")


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
    existing = _children(parent_id, uri=uri, trial_id=trial_id)
    if existing and existing[0].info.status == "FINISHED":
        return existing[0].info.run_id, dict(existing[0].data.metrics)
    if existing:
        run_id = existing[0].info.run_id
        client = client_for(uri)
        client.update_run(run_id, status="RUNNING")
        for key, value in sampled.items():  # PBT may have mutated them
            client.set_tag(run_id, key, value)
        return run_id, None
    tags = {PARENT: parent_id, TRIAL_ID: trial_id, **sampled}
    return start_run(spec, uri=uri, tags=tags, name=trial_id), None


def _children(parent_id: str, *, uri: str, trial_id: str | None = None) -> list:
    client = client_for(uri)
    experiment_id = client.get_run(parent_id).info.experiment_id
    query = f"tags.`{PARENT}` = '{parent_id}'"
    if trial_id is not None:
        query += f" and tags.`{TRIAL_ID}` = '{trial_id}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=5000)


def run_status(run_id: str, *, uri: str) -> str:
    return client_for(uri).get_run(run_id).info.status


def trial_run_id(parent_id: str, trial_id: str, *, uri: str) -> str | None:
    runs = _children(parent_id, uri=uri, trial_id=trial_id)
    return runs[0].info.run_id if runs else None


def end_open_trials(parent_id: str, *, uri: str, reason: str) -> None:
    """Every child run still RUNNING ends KILLED with `reason` (the sweep stopped around it)."""
    for run in _children(parent_id, uri=uri):
        if run.info.status == "RUNNING":
            end_run(run.info.run_id, uri=uri, status="KILLED", reason=reason)


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
        except Exception:
            raise SpecError(f"--parent: no MLflow run '{parent_id}' in {uri}") from None
        runs = _children(parent_id, uri=uri)
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
            "status": run.info.status,
            **{name: run.data.params.get(name, "") for name in params},
            **{name: run.data.metrics[name] for name in metrics if name in run.data.metrics},
        }
        for run in runs
    ]
    sign = 1 if mode == "min" else -1
    rows.sort(key=lambda row: (metric not in row, sign * row.get(metric, 0.0)))
    return Comparison(metric=metric, mode=mode, params=params, metrics=metrics, rows=rows)


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


def _tags(spec: JobSpec) -> dict[str, str]:
    return {
        "gentrain.family": spec.model.family,
        "gentrain.strategy": spec.train.strategy,
        "gentrain.workers": str(spec.train.workers),
        "gentrain.spec_sha256": spec.sha256(),
    }


PARAM_LENGTH = 6000  # MLflow's limit for a param's value; spec.yaml holds the whole spec


def _param_value(value: Any) -> str:
    text = "" if value is None else str(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= PARAM_LENGTH else text[: PARAM_LENGTH - 3] + "..."


def outbox_root() -> Path:
    """GENTRAIN_OUTBOX, else .gentrain/outbox in the working directory, else (that directory
    was removed while the run went on) in the home directory."""
    if configured := os.environ.get("GENTRAIN_OUTBOX"):
        return Path(configured)
    try:
        return Path.cwd() / ".gentrain" / "outbox"
    except FileNotFoundError:
        return Path.home() / ".gentrain" / "outbox"


def outbox_dir(run_id: str) -> Path:
    """Where rank 0 keeps what it logs until the tracking store has it (on its own machine)."""
    return outbox_root() / run_id


class RunLogger:
    """Rank 0's handle on the job's run. Everything goes through an outbox (gentrain.outbox):
    logging never waits on the store. After a resume, steps already in the run's history are
    not logged again, so a replayed stretch of training never doubles a metric."""

    def __init__(self, *, uri: str, run_id: str, outbox: Path, warn=None):
        from gentrain.outbox import Outbox, last_step

        self.uri, self.run_id = uri, run_id
        history = client_for(uri).get_metric_history(run_id, "loss")
        sent = max((m.step for m in history), default=0)
        self.logged_through = max(sent, last_step(outbox, "loss"))
        self.warn = warn or _log_warning  # shown where the run is watched
        self.outbox = Outbox(outbox, uri=uri, run_id=run_id, warn=self.warn)

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        if step <= self.logged_through or not metrics:
            return
        now = int(time.time() * 1000)
        self.outbox.put({"metrics": [[k, float(v), now, step] for k, v in metrics.items()]})

    def set_tag(self, key: str, value: str) -> None:
        self.outbox.put({"tag": [key, value]})

    def log_image_grid(self, images, *, step: int) -> None:
        """images: (N, C, H, W) in [-1, 1] -> samples/step_<step>.png"""
        from torchvision.utils import save_image

        side = images.shape[-1]
        scale = max(1, 32 // side)  # small images are enlarged (nearest) so the grid is legible
        images = images.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"step_{step}.png"
            save_image(images.float().cpu() * 0.5 + 0.5, path, nrow=8, padding=2, pad_value=1.0)
            self.outbox.put_file(path, "samples")

    def log_texts(self, texts: list[str], *, step: int) -> None:
        """-> samples/step_<step>.txt, one sample after another."""
        body = "".join(f"--- sample {i}\n{text}\n" for i, text in enumerate(texts))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"step_{step}.txt"
            path.write_text(body)
            self.outbox.put_file(path, "samples")

    def log_directory(self, directory: Path, artifact_path: str) -> None:
        """Every file under `directory`, under `artifact_path` (its subdirectories kept)."""
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                parent = path.parent.relative_to(directory)
                self.outbox.put_file(path, str(Path(artifact_path) / parent))

    def log_model(self, module, *, example_input, register_as: str | None) -> None:
        """The final model as an MLflow PyTorch model under `model` (code included, so a fresh
        process loads it with `mlflow.pytorch.load_model("runs:/<id>/model")`)."""
        import torch
        from mlflow.models import infer_signature

        module, example_input = module.cpu().eval(), example_input.cpu()
        with torch.no_grad():
            output = module(example_input)
        signature = None  # a module that returns several tensors is logged without one
        if isinstance(output, torch.Tensor):
            signature = infer_signature(example_input.numpy(), output.numpy())

        def log() -> None:
            log_pytorch_model(
                module, signature, uri=self.uri, run_id=self.run_id, register_as=register_as
            )

        def save(path: Path) -> dict:
            import mlflow

            with _no_requirement_scan():
                mlflow.pytorch.save_model(
                    module, str(path), signature=signature, **_model_format(module)
                )
            return {"saved_model": path.name, "register_as": register_as}

        self.outbox.put_model(log, save)

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the store to have everything; False: the outbox keeps
        what it lacks."""
        return self.outbox.close(timeout)


def _log_warning(text: str) -> None:
    logging.getLogger("gentrain").warning("gentrain: %s", text)


def _model_format(module) -> dict:
    """How gentrain saves and logs a model: pickled with gentrain's code (and the user's, for a
    family of their own), torch pinned."""
    import torch

    import gentrain
    from gentrain.families.user import code_to_ship

    code = [str(Path(gentrain.__file__).parent)]
    user_code = code_to_ship(f"{type(module).__module__}:_")
    if user_code:
        code.append(str(user_code))
    return {
        "code_paths": code,
        "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"],
        "serialization_format": "pickle",  # keeps the module whole: sample() and all
    }


@contextmanager
def _no_requirement_scan():
    """MLflow checks a model's pip requirements against the files of every installed package,
    only to warn of a mismatch: 4 s of CPU at the end of each run here. gentrain's requirements
    are the installed torch and mlflow, which cannot mismatch."""
    from mlflow.utils import environment

    name = "warn_dependency_requirement_mismatches"
    scan = getattr(environment, name, None)
    if scan is None:  # another MLflow: its own checks run
        yield
        return
    setattr(environment, name, lambda requirements: None)
    try:
        yield
    finally:
        setattr(environment, name, scan)


def log_pytorch_model(module, signature, *, uri: str, run_id: str, register_as: str | None):
    import mlflow

    mlflow.set_tracking_uri(uri)
    with _active_run(run_id), _no_requirement_scan():
        mlflow.pytorch.log_model(
            module,
            name="model",
            signature=signature,
            registered_model_name=register_as,
            **_model_format(module),
        )


class _active_run:
    """mlflow.start_run for logging only: leaving it must not end the driver's run."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def __enter__(self):
        import mlflow

        mlflow.start_run(run_id=self.run_id)

    def __exit__(self, *exc):
        import mlflow

        status = mlflow.get_run(self.run_id).info.status
        mlflow.end_run()
        client_for(mlflow.get_tracking_uri()).update_run(self.run_id, status=status)
        return False


def load_model_state(model_uri: str, *, uri: str) -> dict:
    """The state dict of an MLflow PyTorch model (`runs:/...` or `models:/...`)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as err:  # MLflow's errors vary by store and URI form
        raise GentrainError(
            f"model.init_from: cannot load {model_uri}: {first_line(err)}"
        ) from None
    return module.state_dict()


def check_reachable(uri: str) -> None:
    """Fail early and plainly when the tracking store cannot be used."""
    try:
        client_for(uri).search_experiments(max_results=1)
    except Exception as err:  # the store's own errors vary by backend
        raise GentrainError(f"tracking store {uri} is not usable: {err}") from None


# MLflow's server starts a job runner and seven job consumers (about 25 s of CPU and their memory)
# for its GenAI jobs (trace scorers, rollups), which gentrain never submits.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_command(uri: str, *, host: str, port: int) -> list[str]:
    """argv of the MLflow UI over `uri` (run it with SERVER_ENV under the user's settings)."""
    import sys

    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
