"""The MLflow tracking server (with sign-in on, as gentrain deploys it) goes away mid-run
(SIGKILL) and comes back, or never does: training goes on, what it logged while the server was
away reaches it once it is back, and a server that never comes back leaves the run's outbox for
`gentrain runs upload`."""

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

from conftest import GENTRAIN, JOBS, REPO, gentrain, sample_texts, wait_for

pytestmark = pytest.mark.slow

STEPS = 150  # about 12 s of training: it goes on while the server is away


class TrackingServer:
    """infra/mlflow_server.py (MLflow's server, sign-in on) on 127.0.0.1 over one SQLite store,
    user database and artifact directory: killed and started again, it is the same server."""

    ADMIN = "admin"

    def __init__(self, workdir: Path):
        self.workdir, self.port = workdir, _port_the_kernel_never_picks()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(16)  # the admin's, whom the tests sign in as
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.workdir / "server.log"
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "infra" / "mlflow_server.py")]
                + ["--state", str(self.workdir / "auth"), "--host", "127.0.0.1"]
                + ["--port", str(self.port), "--workers", "1"]
                + ["--backend-store-uri", f"sqlite:///{self.workdir / 'server.db'}"]
                + ["--artifacts-destination", str(self.workdir / "artifacts")],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": self.password},
            )
        ended = self.process.poll
        wait_for(lambda: self.answers() or ended() is not None, 120, "the MLflow server")
        assert ended() is None, log.read_text()[-3000:]

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def answers(self) -> bool:
        import urllib.request

        try:
            return urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200
        except OSError:
            return False

    def refuses_strangers(self) -> bool:
        """Whether a request without credentials gets 401."""
        import urllib.request

        try:
            urllib.request.urlopen(f"{self.uri}/api/2.0/mlflow/experiments/search", timeout=5)
        except OSError as err:
            return getattr(err, "code", None) == 401
        return False

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.uri)

    def store(self) -> mlflow.MlflowClient:
        """Its backend store, read directly (while it is away too)."""
        return mlflow.MlflowClient(f"sqlite:///{self.workdir / 'server.db'}")


def _port_the_kernel_never_picks() -> int:
    """A free port below the kernel's ephemeral range: no other process's bind(0) or outgoing
    connection takes it while the server is away (the job's Ray processes open ports all the
    time), so the server gets it back when it starts again."""
    ephemeral_from = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10000, ephemeral_from), 500):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture
def server(tmp_path, monkeypatch):
    found = TrackingServer(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", found.ADMIN)  # the job's and the tests'
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", found.password)
    found.start()
    yield found
    if found.process.poll() is None:
        found.kill()


def _start_job(server: TrackingServer, workdir: Path, *more: str) -> subprocess.Popen:
    overrides = [
        "model.flavor=debug",
        "train.workers=1",
        f"train.max_steps={STEPS}",
        "train.log_every=1",
        f"train.eval_every={STEPS}",
        f"train.checkpoint_every={STEPS}",
        "eval.num_samples=32",
        f"tracking.uri={server.uri}",
        *more,
    ]
    return subprocess.Popen(
        [*GENTRAIN, "run", str(JOBS / "gpt_python_docs.yaml")]
        + [arg for item in overrides for arg in ("--set", item)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": ""},
    )


def _the_run(server: TrackingServer):
    client = server.store()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return runs[0] if runs else None


def _loss_history(server: TrackingServer, run_id: str):
    return sorted(server.store().get_metric_history(run_id, "loss"), key=lambda m: m.step)


def _kill_once_training_logs(server: TrackingServer) -> float:
    def logging() -> bool:
        run = _the_run(server)
        return bool(run and _loss_history(server, run.info.run_id))

    wait_for(logging, 300, "the first loss on the server")
    server.kill()
    return time.time()


def _assert_whole(server: TrackingServer, run_id: str) -> None:
    client = server.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in _loss_history(server, run_id)] == list(range(1, STEPS + 1))
    with tempfile.TemporaryDirectory() as directory:
        texts = sample_texts(client, run_id, Path(directory))
    assert set(texts["step"]) == {0, STEPS} and all(texts["generation"]), "untrained, and last"
    models = client.search_logged_models([run.info.experiment_id])
    (model,) = [m for m in models if m.name == "model"]  # (and its checkpoints)
    assert model.source_run_id == run_id


def test_metrics_logged_while_the_server_was_away_reach_it_when_it_is_back(server, tmp_path):
    assert server.refuses_strangers()
    job = _start_job(server, tmp_path)
    try:
        killed_at = _kill_once_training_logs(server)
        time.sleep(8)
        back_at = time.time()
        server.start()
        stdout, stderr = job.communicate(timeout=600)
    finally:
        job.kill()
    assert job.returncode == 0, stderr[-3000:]
    run = _the_run(server)
    _assert_whole(server, run.info.run_id)
    away = [m for m in _loss_history(server, run.info.run_id) if killed_at < m.timestamp / 1000]
    assert any(m.timestamp / 1000 < back_at for m in away), "training went on while it was away"
    assert f"warning: tracking store {server.uri} is not answering" in stderr
    assert f"warning: tracking store {server.uri} is back after" in stderr
    assert not (tmp_path / ".gentrain" / "outbox").exists() or not any(
        (tmp_path / ".gentrain" / "outbox").iterdir()
    ), "nothing left behind"


def test_a_server_that_never_comes_back_leaves_an_outbox_to_upload(server, tmp_path):
    job = _start_job(server, tmp_path, "tracking.wait_at_end=2")
    try:
        _kill_once_training_logs(server)
        stdout, stderr = job.communicate(timeout=600)
    finally:
        job.kill()
    assert job.returncode == 0, stderr[-3000:]
    (kept,) = (tmp_path / ".gentrain" / "outbox").iterdir()
    assert f"gentrain runs upload {kept}" in stderr.replace("\n", "")
    run_id = kept.name
    assert server.store().get_run(run_id).info.status == "RUNNING"  # the server never heard

    refused = gentrain("runs", "upload", str(kept), cwd=tmp_path)
    assert refused.returncode == 1 and "try again later" in refused.stderr, refused.stderr
    assert kept.exists(), "kept until the server takes it"

    server.start()
    wrong = {"MLFLOW_TRACKING_PASSWORD": "not-the-admins"}
    refused = gentrain("runs", "upload", str(kept), cwd=tmp_path, env=wrong)
    assert refused.returncode == 2 and kept.exists()
    assert (
        "the server answered 401 Unauthorized" in refused.stderr
        and "nothing is lost" in refused.stderr
    )
    uploaded = gentrain("runs", "upload", str(kept), cwd=tmp_path)
    assert uploaded.returncode == 0, uploaded.stderr
    assert f"uploaded run {run_id}" in uploaded.stdout
    assert not kept.exists()
    _assert_whole(server, run_id)
