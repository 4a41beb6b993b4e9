"""`gentrain ui` serves the MLflow UI of the configured store, on 127.0.0.1 only."""

import json
import os
import subprocess
import time
import urllib.request

import mlflow
import pytest

from browser import start_ui
from conftest import GENTRAIN, free_port

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
    finally:
        os.killpg(ui.pid, 9)
        ui.wait()


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
