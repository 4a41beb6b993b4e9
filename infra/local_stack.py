"""A local stack for trying gentrain's cluster path on one machine, every service bound to
127.0.0.1: an MLflow tracking server with authentication on (infra/mlflow_server.py), its runs and
users in PostgreSQL (Debian's `postgresql` package), its artifacts in S3 on a local S3-compatible
server (moto's; or your MinIO with --s3-endpoint, taking its credentials from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY).

    python infra/local_stack.py start DIR [--s3-endpoint URL] [--bucket NAME]
    python infra/local_stack.py stop DIR

`start` writes DIR/env (mode 600): the settings a gentrain job uses (`source DIR/env`):
MLFLOW_TRACKING_URI, the MLflow admin's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD,
AWS_ENDPOINT_URL and the S3 credentials. The admin's password is MLFLOW_AUTH_ADMIN_PASSWORD where
set, else generated at the first start and kept in DIR/mlflow-auth/. Needs
`pip install -e '.[stack]'`.
"""

import argparse
import contextlib
import glob
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow_server import ADMIN, admin_password

BIN = Path(sys.executable).parent
STATE = "state.json"
AUTH_STATE = "mlflow-auth"  # the MLflow server's auth config and generated secrets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("dir", type=Path, help="where the stack keeps its state and logs")
    parser.add_argument("--s3-endpoint", help="an S3-compatible server to use instead of moto")
    parser.add_argument("--bucket", default="mlflow", help="bucket for MLflow's artifacts")
    args = parser.parse_args()
    if args.command == "start":
        start(args.dir, args.s3_endpoint, args.bucket)
    else:
        stop(args.dir)


def start(directory: Path, s3_endpoint: str | None, bucket: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / STATE).exists():
        sys.exit(f"{directory}: a stack is already there; `stop` it first")
    state: dict = {"pids": []}
    try:
        databases = _start_postgres(state, directory)
        s3 = _start_s3(state, directory, s3_endpoint)
        _create_bucket(s3, bucket)
        tracking_uri = _start_mlflow(state, directory, databases, s3, f"s3://{bucket}/artifacts")
    except BaseException:
        _stop(state)
        raise
    (directory / STATE).write_text(json.dumps(state))
    admin = {
        "MLFLOW_TRACKING_USERNAME": os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or ADMIN,
        "MLFLOW_TRACKING_PASSWORD": admin_password(directory / AUTH_STATE, os.environ),
    }
    env = {"MLFLOW_TRACKING_URI": tracking_uri, **admin, **s3}
    env_file = directory / "env"
    env_file.touch(mode=0o600)
    env_file.chmod(0o600)
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    print(f"MLflow {tracking_uri}: sign-in required, PostgreSQL, artifacts in s3://{bucket}")
    print(f"MLflow admin: {admin['MLFLOW_TRACKING_USERNAME']} (password in {env_file})")
    print(f"S3 {s3['AWS_ENDPOINT_URL']}")
    print(f"settings for jobs: source {env_file}")


def stop(directory: Path) -> None:
    path = directory / STATE
    if not path.exists():
        sys.exit(f"{directory}: no stack started there")
    _stop(json.loads(path.read_text()))
    path.unlink()


def _stop(state: dict) -> None:
    for pid in reversed(state["pids"]):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    if "postgres" in state:
        pg = state["postgres"]
        subprocess.run(
            [*_as_postgres(), _pg_bin("pg_ctl"), "stop", "-D", pg["data"], "-m", "fast"],
            capture_output=True,
        )
        shutil.rmtree(pg["root"], ignore_errors=True)


# --- PostgreSQL ----------------------------------------------------------------------------


def _start_postgres(state: dict, directory: Path) -> dict[str, str]:
    """A new PostgreSQL cluster with the databases `mlflow` (runs) and `mlflow_auth` (users and
    permissions); returns their URIs (with the password) by name."""
    # PostgreSQL refuses to run as root; its files live where the postgres user can reach them
    root = Path(tempfile.mkdtemp(prefix="gentrain-postgres-"))
    data, password, port = root / "data", secrets.token_urlsafe(16), _free_port()
    (root / "password").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "password", "postgres")
    as_postgres = _as_postgres()
    _check(
        [
            *as_postgres,
            _pg_bin("initdb"),
            "-D",
            str(data),
            "-U",
            "mlflow",
            f"--pwfile={root / 'password'}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
        ],
        "initdb",
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    log = root / "postgres.log"
    state["postgres"] = {"root": str(root), "data": str(data)}
    _check(
        [
            *as_postgres,
            _pg_bin("pg_ctl"),
            "start",
            "-w",
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(log),
        ],
        "pg_ctl start",
    )
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=port, user="mlflow", password=password, dbname="postgres"
    ) as admin:
        admin.autocommit = True
        for name in DATABASES:
            admin.execute(f"CREATE DATABASE {name}")
    return {name: f"postgresql://mlflow:{password}@127.0.0.1:{port}/{name}" for name in DATABASES}


DATABASES = ("mlflow", "mlflow_auth")


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        sys.exit(f"{name}: PostgreSQL is not installed (Debian: apt-get install postgresql)")
    return found[-1]


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


# --- S3 and MLflow -------------------------------------------------------------------------


def _start_s3(state: dict, directory: Path, endpoint: str | None) -> dict[str, str]:
    """The AWS settings that reach the S3 server: `endpoint`'s, or a new moto server's."""
    if endpoint:
        return {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
        }
    port = _free_port()
    log = directory / "s3.log"
    server = _spawn(state, log, [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)])
    endpoint = f"http://127.0.0.1:{port}"
    _wait_for(lambda: _answers(endpoint), server, log, f"the S3 server at {endpoint}")
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local-stack",  # moto takes any credentials
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(16),
        "AWS_REGION": "us-east-1",
    }


def _create_bucket(s3: dict[str, str], bucket: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3["AWS_ENDPOINT_URL"],
        region_name=s3["AWS_REGION"],
        aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
    )
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def _start_mlflow(
    state: dict, directory: Path, databases: dict[str, str], s3: dict[str, str], artifacts: str
) -> str:
    port = _free_port()
    server = Path(__file__).with_name("mlflow_server.py")
    command = [sys.executable, str(server), "--state", str(directory / AUTH_STATE)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--artifacts-destination", artifacts, "--workers", "1"]
    # the database password stays out of the command line (visible to every user in `ps`)
    env = {
        **os.environ,
        **s3,
        "MLFLOW_BACKEND_STORE_URI": databases["mlflow"],
        "MLFLOW_AUTH_DATABASE_URI": databases["mlflow_auth"],
    }
    log = directory / "mlflow.log"
    server = _spawn(state, log, command, env=env)
    uri = f"http://127.0.0.1:{port}"
    _wait_for(lambda: _answers(f"{uri}/health"), server, log, f"the MLflow server at {uri}")
    return uri


# --- processes -----------------------------------------------------------------------------


def _spawn(state: dict, log: Path, command: list[str], env: dict | None = None) -> subprocess.Popen:
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    state["pids"].append(process.pid)
    return process


def _check(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed: {(result.stderr or result.stdout).strip()[-500:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError as err:
        return getattr(err, "code", None) is not None  # an HTTP error status is an answer


def _wait_for(ready, process: subprocess.Popen, log: Path, what: str, seconds=180) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise SystemExit(f"{what} did not start (see {log}): {tail[0]}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
