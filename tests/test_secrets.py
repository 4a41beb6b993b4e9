"""Secrets planted in a run's environment and in its tracking URI appear nowhere the run writes:
not in MLflow params, tags or artifacts, the tracking server's database, the checkpoints, or the
terminal."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import gentrain
from test_cluster import _free_port, _wait_for
from test_s3_storage import _answers

pytestmark = pytest.mark.slow

PLANTED = "planted-secret-0451"


@pytest.fixture
def tracking_server(tmp_path):
    """An MLflow server on 127.0.0.1 with its database and artifacts under tmp_path/server."""
    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: _answers(f"http://127.0.0.1:{port}/health"), 120, "the MLflow server")
        yield port, root
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_no_secret_reaches_what_a_run_writes(tracking_server, tmp_path):
    port, server_root = tracking_server
    uri = f"http://gentrain:{PLANTED}@127.0.0.1:{port}"
    spec = {
        "name": "secrets",
        "model": {"family": "vae", "flavor": "debug"},
        "data": {"source": "builtin:digits", "batch_size": 16},
        "train": {"workers": 1, "max_steps": 6, "log_every": 2, "eval_every": 6},
        "eval": {"metrics": [], "num_samples": 16},
        "tracking": {"uri": uri},
        "storage": {"path": str(tmp_path / "checkpoints")},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    env = {
        "AWS_ACCESS_KEY_ID": f"id-{PLANTED}",
        "AWS_SECRET_ACCESS_KEY": PLANTED,
        "MLFLOW_TRACKING_PASSWORD": PLANTED,
        "GENTRAIN_TEST_TOKEN": PLANTED,
    }
    result = gentrain("run", "job.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert PLANTED not in result.stdout + result.stderr
    assert "gentrain:***@127.0.0.1" in result.stdout  # the store is named, its password masked

    client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
    (run,) = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert run.data.params["tracking.uri"] == f"http://gentrain:***@127.0.0.1:{port}"
    for value in [*run.data.params.values(), *run.data.tags.values()]:
        assert PLANTED not in value
    written = [p for p in (*server_root.rglob("*"), *tmp_path.rglob("*")) if p.is_file()]
    assert any(p.name == "spec.yaml" for p in written) and any(
        "checkpoint" in str(p) for p in written
    )
    leaks = [p for p in written if p.name != "job.yaml" and PLANTED.encode() in p.read_bytes()]
    assert leaks == []
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != PLANTED  # planted in the run's env only
