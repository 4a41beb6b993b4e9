"""A team's tracking server with sign-in on: infra/local_stack.py's MLflow (basic-auth app, users
in PostgreSQL). gentrain signs in as the user of MLFLOW_TRACKING_USERNAME / _PASSWORD, is refused
before anything starts without them, and a teammate given READ on an experiment compares its runs
but cannot log to them or delete them. (test_cluster.py: a sweep's trials log as its user, the
one in the cluster nodes' environment.)"""

import configparser
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import urllib.request

import mlflow
import pytest
import yaml

from conftest import JOBS, REPO, gentrain

pytestmark = pytest.mark.slow

STACK = [sys.executable, str(REPO / "infra" / "local_stack.py")]
USERS = {"alice": "alice-password-0451", "bob": "bob-password-0451"}
EXPERIMENT = "alice-vae"


def _server_module():
    path = REPO / "infra" / "mlflow_server.py"
    spec = importlib.util.spec_from_file_location("mlflow_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_servers_admin_password_is_given_or_generated_once_and_private(tmp_path):
    server = _server_module()
    given = server.server_env(tmp_path / "a", {"MLFLOW_AUTH_ADMIN_PASSWORD": "from-env"})
    assert given["MLFLOW_AUTH_ADMIN_PASSWORD"] == "from-env"
    secret = tmp_path / "secret"
    secret.write_text("from-a-secret\n")
    in_file = server.server_env(tmp_path / "b", {"MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(secret)})
    assert in_file["MLFLOW_AUTH_ADMIN_PASSWORD"] == "from-a-secret"
    first = server.server_env(tmp_path / "c", {"MLFLOW_AUTH_ADMIN_PASSWORD": ""})  # compose's
    again = server.server_env(tmp_path / "c", {})
    assert len(first["MLFLOW_AUTH_ADMIN_PASSWORD"]) >= 24
    assert again["MLFLOW_AUTH_ADMIN_PASSWORD"] == first["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert again["MLFLOW_FLASK_SERVER_SECRET_KEY"] == first["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    for name in ("admin_password", "flask_secret_key", "basic_auth.ini"):
        assert (tmp_path / "c" / name).stat().st_mode & 0o077 == 0, name
    config = (tmp_path / "c" / "basic_auth.ini").read_text()
    assert "default_permission = NO_PERMISSIONS" in config
    encoded = "postgresql://mlflow:p%40ss@db:5432/mlflow_auth"  # a password with an @
    server.server_env(tmp_path / "d", {"MLFLOW_AUTH_DATABASE_URI": encoded})
    parsed = configparser.ConfigParser()  # as MLflow reads it
    parsed.read(tmp_path / "d" / "basic_auth.ini")
    assert parsed["mlflow"]["database_uri"] == encoded
    assert f"auth_cache_ttl_seconds = {server.CREDENTIALS_CACHED_S}" in config
    assert first["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "c" / "basic_auth.ini")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack's settings as `source DIR/env` gives them (the admin's credentials)."""
    directory = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    started = subprocess.run(
        [*STACK, "start", str(directory)], env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert started.returncode == 0, started.stderr
        settings = dict(
            shlex.split(line)[1].split("=", 1)
            for line in (directory / "env").read_text().splitlines()
        )
        yield directory, started.stdout, settings
    finally:
        subprocess.run([*STACK, "stop", str(directory)], env=env, timeout=120)


@pytest.fixture(scope="module")
def admin(stack):
    from mlflow.server import get_app_client

    _, _, settings = stack
    with pytest.MonkeyPatch.context() as env:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.setenv(name, settings[name])
        auth = get_app_client("basic-auth", tracking_uri=settings["MLFLOW_TRACKING_URI"])
        for user, password in USERS.items():
            auth.create_user(user, password)
        yield auth, mlflow.MlflowClient(settings["MLFLOW_TRACKING_URI"])


def _as(stack, user: str | None, password: str | None = None) -> dict[str, str]:
    """The environment of a gentrain command run by `user` (None: without credentials)."""
    _, _, settings = stack
    env = {"MLFLOW_TRACKING_URI": settings["MLFLOW_TRACKING_URI"], "RAY_ADDRESS": ""}
    env["MLFLOW_TRACKING_USERNAME"] = user or ""
    env["MLFLOW_TRACKING_PASSWORD"] = (password or USERS.get(user, "")) if user else ""
    return env


def _job(workdir, name: str = EXPERIMENT, *, sweep: bool = True):
    """A tiny VAE job: a sweep of 2 trials, or (not `sweep`) one run."""
    spec = yaml.safe_load((JOBS / "sweeps" / "vae_latent_grid.yaml").read_text())
    spec["name"] = name
    spec["model"]["flavor"] = "debug"
    spec["train"].update(max_steps=4, log_every=2, eval_every=4, checkpoint_every=4)
    spec["sweep"].update(concurrency=2, space={"optim.lr": {"grid": [1e-3, 2e-3]}})
    if not sweep:
        del spec["sweep"]
    workdir.mkdir(exist_ok=True)
    path = workdir / ("sweep.yaml" if sweep else "run.yaml")
    path.write_text(yaml.safe_dump(spec))
    return path


def _status_without_credentials(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except OSError as err:
        return err.code


def test_local_stack_starts_mlflow_with_sign_in_and_a_generated_admin_password(stack):
    directory, printed, settings = stack
    uri, password = settings["MLFLOW_TRACKING_URI"], settings["MLFLOW_TRACKING_PASSWORD"]
    assert settings["MLFLOW_TRACKING_USERNAME"] == "admin" and len(password) >= 24
    assert (directory / "env").stat().st_mode & 0o077 == 0
    assert _status_without_credentials(f"{uri}/api/2.0/mlflow/experiments/search") == 401
    assert "sign-in required" in printed
    written = [path for path in directory.rglob("*") if path.is_file()]
    shown = {path.name for path in written if password in path.read_text(errors="replace")}
    assert shown == {"env", "admin_password"}, "the password is in the env file, and kept"
    assert password not in printed


def test_missing_or_wrong_credentials_are_refused_before_anything_starts(stack, admin, tmp_path):
    _, client = admin
    spec = _job(tmp_path, name="refused-before-start", sweep=False)
    for user, password, answer in [
        (None, None, "no credentials were given"),
        ("alice", "not-her-password", "did not take the password of user 'alice'"),
    ]:
        refused = gentrain("run", str(spec), cwd=tmp_path, env=_as(stack, user, password))
        assert refused.returncode == 2, refused.stderr
        (line,) = refused.stderr.splitlines()
        assert line.startswith("error: tracking.uri http://127.0.0.1:")
        assert "the server answered 401 Unauthorized" in line and answer in line
        assert "not-her-password" not in refused.stderr + refused.stdout
    # a password in the URI: taken, and masked where the URI is shown
    uri = _as(stack, None)["MLFLOW_TRACKING_URI"].replace("://", "://alice:not-her-password@")
    refused = gentrain(
        "run", str(spec), "--set", f"tracking.uri={uri}", cwd=tmp_path, env=_as(stack, None)
    )
    assert refused.returncode == 2
    assert "tracking.uri http://alice:***@127.0.0.1:" in refused.stderr
    assert "user 'alice'; check the one in tracking.uri" in refused.stderr
    assert "not-her-password" not in refused.stderr + refused.stdout
    assert client.get_experiment_by_name("refused-before-start") is None, "no run created"


@pytest.fixture(scope="module")
def alices_run(stack, admin, tmp_path_factory):
    """The run alice trained, in the experiment it made."""
    workdir = tmp_path_factory.mktemp("alice")
    result = gentrain("run", str(_job(workdir, sweep=False)), cwd=workdir, env=_as(stack, "alice"))
    assert result.returncode == 0, result.stderr[-3000:]
    _, client = admin
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return run


def test_alice_owns_the_experiment_her_run_made_and_it_is_hers(admin, alices_run):
    auth, _ = admin
    assert alices_run.info.status == "FINISHED"
    assert alices_run.data.tags["mlflow.user"] == "alice"
    owned = auth.get_user_permission("alice", "experiment", alices_run.info.experiment_id)
    assert owned.permission == "MANAGE"
    stranger = auth.get_user_permission("bob", "experiment", alices_run.info.experiment_id)
    assert stranger.permission == "NO_PERMISSIONS"


def test_bob_given_read_compares_alices_runs_but_cannot_log_or_delete(
    stack, admin, alices_run, tmp_path
):
    _, client = admin
    experiment_id, run_id = alices_run.info.experiment_id, alices_run.info.run_id
    as_bob = _as(stack, "bob")
    compare = ["runs", "compare", EXPERIMENT, "--format", "json"]

    unseen = gentrain(*compare, cwd=tmp_path, env=as_bob)
    assert unseen.returncode == 2
    assert "the server answered 403 Forbidden: user 'bob' may not read" in unseen.stderr

    with pytest.MonkeyPatch.context() as env:  # alice shares her experiment with bob
        env.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        env.setenv("MLFLOW_TRACKING_PASSWORD", USERS["alice"])
        from mlflow.server import get_app_client

        owner = get_app_client("basic-auth", tracking_uri=client.tracking_uri)
        owner.grant_user_permission("bob", "experiment", experiment_id, "READ")

    seen = gentrain(*compare, cwd=tmp_path, env=as_bob)
    assert seen.returncode == 0, seen.stderr
    rows = json.loads(seen.stdout)["rows"]
    assert [row["run_id"] for row in rows] == [run_id]
    in_uri = as_bob["MLFLOW_TRACKING_URI"].replace("://", f"://bob:{USERS['bob']}@")
    seen = gentrain(*compare, "--tracking-uri", in_uri, cwd=tmp_path, env=_as(stack, None))
    assert seen.returncode == 0, seen.stderr

    before = len(client.search_runs([experiment_id]))
    sweep, run = _job(tmp_path), _job(tmp_path, sweep=False)
    bobs = _job(tmp_path / "bob", "bob-vae", sweep=False)  # his spec: the run's experiment counts
    for refused in (
        gentrain("sweep", str(sweep), cwd=tmp_path, env=as_bob),
        gentrain("run", str(run), "--resume", run_id, cwd=tmp_path, env=as_bob),
        gentrain("run", str(bobs), "--resume", run_id, cwd=tmp_path, env=as_bob),
    ):
        assert refused.returncode == 2, refused.stderr
        (line,) = refused.stderr.splitlines()
        assert line.startswith("error: tracking.uri http://127.0.0.1:")
        assert "403 Forbidden to runs in experiment 'alice-vae'" in line
        assert "the server gives user 'bob' READ on it, not EDIT" in line
    assert len(client.search_runs([experiment_id])) == before, "no run created"

    with pytest.MonkeyPatch.context() as env:  # bob's own client, past gentrain's checks
        env.setenv("MLFLOW_TRACKING_USERNAME", "bob")
        env.setenv("MLFLOW_TRACKING_PASSWORD", USERS["bob"])
        as_client = mlflow.MlflowClient(client.tracking_uri)
        assert as_client.get_run(run_id).info.status == "FINISHED"
        for write in (
            lambda: as_client.log_metric(run_id, "loss", 0.0),
            lambda: as_client.delete_run(run_id),
        ):
            with pytest.raises(mlflow.MlflowException, match="403"):
                write()
    assert client.get_run(run_id).info.lifecycle_stage == "active"
    url = f"{client.tracking_uri}/api/2.0/mlflow/runs/get?run_id={run_id}"
    assert _status_without_credentials(url) == 401


def test_a_password_in_the_tracking_uri_never_travels_with_a_submitted_job(tmp_path):
    spec = _job(tmp_path, sweep=False)
    uri = "http://alice:planted-0451@mlflow.example:5000"
    refused = gentrain(
        "submit", str(spec), "--address", "http://127.0.0.1:9", "--set", f"tracking.uri={uri}",
        cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: tracking.uri: a password in it would travel with the job")
    assert "planted-0451" not in refused.stderr + refused.stdout
