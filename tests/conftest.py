"""Shared fixtures. Tests run the real thing small: local Ray, real MLflow stores, gloo on CPU."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
GENTRAIN = [sys.executable, "-m", "gentrain.cli"]


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory):
    """One gentrain cache (the digits classifier) for the whole session, never the user's."""
    if "GENTRAIN_CACHE_DIR" not in os.environ:
        os.environ["GENTRAIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("gentrain-cache"))
    yield


@pytest.fixture(scope="session")
def _blank_store(tmp_path_factory) -> Path:
    import mlflow

    path = tmp_path_factory.mktemp("blank-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def new_store(_blank_store):
    """new_store(directory) makes directory/mlflow.db an empty MLflow store and returns its URI.
    The store is a copy of one MLflow made: MLflow's schema migrations take 3 s of CPU for each
    new store, and the suite makes a hundred."""

    def make(directory: Path) -> str:
        shutil.copyfile(_blank_store, directory / "mlflow.db")
        return f"sqlite:///{directory / 'mlflow.db'}"

    return make


def gentrain_in_terminal(*args: str, cwd: Path, columns: int, env: dict | None = None) -> str:
    """Run the CLI with its output on a terminal `columns` wide (a pseudo-terminal); what it
    showed there."""
    import fcntl
    import pty
    import struct
    import termios

    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environment = {**os.environ, "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": "", **(env or {})}
    for name in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM"):
        environment.pop(name, None)
    process = subprocess.Popen(
        [*GENTRAIN, *args], cwd=cwd, stdout=secondary, stderr=secondary, env=environment
    )
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the process ended and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    process.wait(timeout=60)
    os.close(main)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode()).replace("\r\n", "\n")


def gentrain(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None, preexec_fn=None):
    """Run the CLI in a fresh process, as a user would."""
    return subprocess.run(
        [*GENTRAIN, *args],
        cwd=cwd,
        preexec_fn=preexec_fn,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": "", **(env or {})},
    )


# --- a job run by a test in its own directory, tracked in that directory's mlflow.db -------------


def local_client(workdir: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def only_run(workdir: Path, experiment: str = "dcgan-digits"):
    client = local_client(workdir)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def logged_through(workdir: Path) -> int:
    """The last step whose loss the directory's only run logged (0 before it has one)."""
    try:
        run = only_run(workdir)
    except Exception:
        return 0
    history = local_client(workdir).get_metric_history(run.info.run_id, "loss")
    return max((m.step for m in history), default=0)


def train_workers_of(driver_pid: int) -> list[int]:
    """The Ray Train worker processes of the embedded Ray this driver started (other tests may
    run Rays of their own at the same time), lowest pid first."""
    found = subprocess.run(
        ["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True
    ).stdout.split()
    return sorted(int(pid) for pid in found if _descends_from(int(pid), driver_pid))


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid follows the state
    return False


def sample_grids(client, run_id: str) -> dict[int, str]:
    """step -> artifact path of each sample grid the run logged (MLflow images of key
    `samples`, as the UI's chart view shows them)."""
    grids = {}
    for artifact in client.list_artifacts(run_id, "images"):
        name = artifact.path.rsplit("/", 1)[-1]
        if name.startswith("samples+step+") and name.endswith(".png"):
            grids[int(name.split("+")[2])] = artifact.path
    return dict(sorted(grids.items()))


def sample_texts(client, run_id: str, directory: Path) -> dict[str, list]:
    """The run's table of sample texts (samples.json), column by column."""
    return mlflow_table(client, run_id, "samples.json", directory)


def mlflow_table(client, run_id: str, artifact: str, directory: Path) -> dict[str, list]:
    """An MLflow table the run logged, column by column."""
    local = client.download_artifacts(run_id, artifact, str(directory))
    table = json.loads(Path(local).read_text())  # pandas' "split" layout
    return {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, every: float = 1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # AWS_* settings that point boto3 and pyarrow at it

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1 for the session. Tests set its `env`
    (monkeypatch.setenv) and use buckets of their own: its state lives as long as the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials
    }
    yield S3Server(endpoint=endpoint, env=env)
    server.stop()


@pytest.fixture
def strict_s3():
    """A second S3 server that checks credentials (moto's IAM checks from the first request)."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(endpoint), 60, "the S3 server")
        yield endpoint
    finally:
        server.kill()


def _answers(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2)
    except OSError as err:
        return getattr(err, "code", None) is not None
    return True
