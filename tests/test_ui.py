"""`gentrain ui` serves the MLflow UI of the configured store, on 127.0.0.1 only unless it asks
for a user and password (MLflow's basic-auth app) or is told --insecure."""

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import mlflow
import pytest

from browser import start_ui
from conftest import GENTRAIN, free_port, gentrain, wait_for

pytestmark = pytest.mark.slow


def test_ui_serves_the_local_store_on_loopback(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(store).create_experiment("seen-in-ui")
    port = free_port()
    ui = start_ui(tmp_path, port, {**os.environ, "MLFLOW_TRACKING_URI": store})
    try:
        assert "seen-in-ui" in _experiments_shown(port)
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
        local_addresses = {line.split()[3] for line in listening.splitlines()}
        assert local_addresses == {f"127.0.0.1:{port}"}
        assert not _job_consumers_under(ui.pid), "MLflow's GenAI job consumers were started"
        said = (tmp_path / "ui.log").read_text()
        assert f"MLflow UI on http://127.0.0.1:{port} (no sign-in: your local store" in said
    finally:
        os.killpg(ui.pid, 9)
        ui.wait()


def test_ui_refuses_to_serve_beyond_loopback_without_sign_in(tmp_path):
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    refused = gentrain("ui", "--host", "0.0.0.0", "--port", str(port), cwd=tmp_path, env=env)
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: --host 0.0.0.0: the MLflow UI would let anyone")
    assert "MLFLOW_AUTH_CONFIG_PATH" in line and "--insecure" in line
    assert not (tmp_path / "mlflow.db").exists(), "nothing started"
    server = {"MLFLOW_TRACKING_URI": "http://gentrain:planted-0451@127.0.0.1:9"}
    pointed = gentrain("ui", "--host", "0.0.0.0", cwd=tmp_path, env=server)
    assert pointed.returncode == 0, pointed.stderr
    assert (
        pointed.stdout == "the tracking server serves its own UI: http://gentrain:***@127.0.0.1:9\n"
    )


def test_ui_beyond_loopback_with_sign_in_lets_in_only_its_users(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(store).create_experiment("seen-in-ui")
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{tmp_path / 'users.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_AUTH_CONFIG_PATH": str(config)}
    port = free_port()
    ui = start_ui(tmp_path, port, {**env, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}, *BEYOND)
    try:
        wait_for(lambda: _status(port) is not None, 120, "the UI")
        assert _status(port) == 401
        assert _status(port, ("admin", "wrong")) == 401
        assert _status(port, ("admin", ADMIN_PASSWORD)) == 200
        said = (tmp_path / "ui.log").read_text()
        assert f"MLflow UI on http://0.0.0.0:{port} (sign-in required" in said
        assert ADMIN_PASSWORD not in said
    finally:
        os.killpg(ui.pid, 9)
        ui.wait()


def test_ui_beyond_loopback_without_sign_in_only_when_told_insecure(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("MLFLOW_AUTH_CONFIG_PATH", None)
    port = free_port()
    ui = start_ui(tmp_path, port, env, *BEYOND, "--insecure")
    try:
        wait_for(lambda: _status(port) is not None, 120, "the UI")
        assert _status(port) == 200, "no sign-in"
        said = (tmp_path / "ui.log").read_text()
        assert "warning: the MLflow UI listens on 0.0.0.0 without sign-in: anyone who" in said
        assert f"MLflow UI on http://0.0.0.0:{port} (no sign-in: --insecure" in said
    finally:
        os.killpg(ui.pid, 9)
        ui.wait()


ADMIN_PASSWORD = "ui-admin-password-0451"
BEYOND = ("--host", "0.0.0.0")


def _status(port: int, user: tuple[str, str] | None = None) -> int | None:
    """The HTTP status of listing experiments as `user` (None: the UI does not answer yet)."""
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
    request = urllib.request.Request(url)
    if user:
        token = base64.b64encode(":".join(user).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        return urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _job_consumers_under(session: int) -> list[str]:
    """The huey job consumers (MLflow's job execution) among the UI's processes."""
    found = subprocess.run(["ps", "-o", "sid=,args=", "-e"], capture_output=True, text=True)
    return [
        line
        for line in found.stdout.splitlines()
        if line.split(maxsplit=1)[0] == str(session) and "huey" in line
    ]


def _experiments_shown(port: int) -> set[str]:
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
    deadline, body = time.monotonic() + 120, None
    while body is None and time.monotonic() < deadline:
        try:
            body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        except OSError:
            time.sleep(0.5)
    assert body is not None, "the UI did not come up"
    return {e["name"] for e in body["experiments"]}


def test_processes_that_first_open_a_new_local_store_together_all_work(tmp_path):
    """MLflow creates and migrates a new sqlite store on first use: two processes doing it at
    once broke it for one of them ("Online migration expected to match one row")."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    port = free_port()
    ui = start_ui(tmp_path, port, env)
    lookups = [
        subprocess.Popen(
            [*GENTRAIN, "runs", "compare", "nothing-yet"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for lookup in lookups:
            _, stderr = lookup.communicate(timeout=120)
            assert lookup.returncode == 2, stderr
            assert stderr.startswith("error: EXPERIMENT: no experiment 'nothing-yet'"), stderr
        assert "Default" in _experiments_shown(port)
    finally:
        os.killpg(ui.pid, 9)
        ui.wait()
