"""Where runs are tracked: the MLflow store a job logs to, a client for it, and its UI."""

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from gentrain import places
from gentrain.errors import SpecError
from gentrain.redact import redact
from gentrain.spec import JobSpec

# MLflow prints run, experiment and model URLs with the tracking URI as given, a password in it
# included; gentrain names the run itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_PRINT_MODEL_URLS_ON_CREATION", "false")
# nor a progress bar for each artifact it fetches (a table it appends to is fetched first)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

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


# MLflow's server starts a job runner and seven job consumers (about 25 s of CPU and their memory)
# for its GenAI jobs (trace scorers, rollups), which gentrain never submits.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_sign_in(host: str, *, insecure: bool) -> bool:
    """Whether `gentrain ui` asks for a user and password (MLflow's basic-auth app, configured by
    MLFLOW_AUTH_CONFIG_PATH). Beyond loopback it must, unless `insecure`: a SpecError."""
    config = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    if config and not Path(config).is_file():
        raise SpecError(f"MLFLOW_AUTH_CONFIG_PATH: no file {config} (MLflow's basic_auth.ini)")
    if not config and not insecure and not is_loopback(host):
        raise SpecError(
            f"--host {host}: the MLflow UI would let anyone who reaches it read and delete every "
            "run; turn sign-in on with MLFLOW_AUTH_CONFIG_PATH (README: Deploying), or pass "
            "--insecure"
        )
    return bool(config)


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def ui_command(uri: str, *, host: str, port: int, sign_in: bool) -> tuple[list[str], dict]:
    """argv and environment of the MLflow UI over `uri` (with MLflow's basic-auth app when
    `sign_in`), under the user's settings."""
    import secrets
    import sys

    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    argv += ["--host", host, "--port", str(port)]
    env = {**SERVER_ENV, **os.environ}
    if sign_in:
        argv += ["--app-name", "basic-auth"]
        # the sign-in form's CSRF key: one server, so a new key each start is enough
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_urlsafe(24))
    return argv, env
