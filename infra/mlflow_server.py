"""MLflow's tracking server with its basic-auth app on: no one reads, writes or deletes a run
without a user and password. Every MLflow server gentrain starts or deploys runs through this
(infra/local_stack.py, docker-compose.yml, kuberay/mlflow.yaml).

    python mlflow_server.py --state DIR [mlflow server options...]

It runs `mlflow server --app-name basic-auth OPTIONS` with, in DIR (kept across restarts):
- basic_auth.ini (mode 600): users and permissions in MLFLOW_AUTH_DATABASE_URI (default: SQLite
  DIR/basic_auth.db); default permission NO_PERMISSIONS, so a user sees only the experiments they
  created or were granted; checked credentials cached for CREDENTIALS_CACHED_S;
- the admin user `admin` (MLFLOW_AUTH_ADMIN_USERNAME): its password is MLFLOW_AUTH_ADMIN_PASSWORD,
  else the file named by MLFLOW_AUTH_ADMIN_PASSWORD_FILE (a Docker or Kubernetes secret), else one
  generated at the first start into DIR/admin_password (mode 600). MLflow reads it only while no
  admin exists: change it later through MLflow's update-password API;
- MLFLOW_FLASK_SERVER_SECRET_KEY (the UI's CSRF protection) likewise, else DIR/flask_secret_key.
"""

import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

ADMIN = "admin"
DEFAULT_PERMISSION = "NO_PERMISSIONS"
# How long a server process trusts a user and password it has checked. Checking one (a slow
# password hash, by design) made every request 222 ms on 2 cores instead of 16 ms cached: a run
# logging its metrics fell minutes behind. A password changed or a user deleted through another
# process of the same server is refused by this one at most this long after.
CREDENTIALS_CACHED_S = 30


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--state":
        sys.exit("usage: python mlflow_server.py --state DIR [mlflow server options...]")
    state, options = Path(argv[1]), argv[2:]
    os.execve(sys.executable, server_command(options), server_env(state, os.environ))


def server_command(options: list[str]) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", *options]


def server_env(state: Path, env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the auth config, the admin's password and the secret key the server needs."""
    state.mkdir(parents=True, exist_ok=True)
    env = {name: value for name, value in env.items() if value != ""}  # empty: not given
    database = env.pop("MLFLOW_AUTH_DATABASE_URI", None) or f"sqlite:///{state / 'basic_auth.db'}"
    config = state / "basic_auth.ini"
    _write_private(
        config,
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {database.replace('%', '%%')}\n"  # read by configparser
        f"admin_username = {env.get('MLFLOW_AUTH_ADMIN_USERNAME', ADMIN)}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {CREDENTIALS_CACHED_S}\n",
    )
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_password(state, env)
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD_FILE", None)
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", _generated_once(state / "flask_secret_key"))
    # no job runner and its seven consumers: they serve MLflow's GenAI jobs, which gentrain never
    # submits (about 25 s of CPU at every start)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def admin_password(state: Path, env: Mapping[str, str]) -> str:
    """The password the admin is created with: given, in a secret's file, or generated once."""
    if env.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        return env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    if env.get("MLFLOW_AUTH_ADMIN_PASSWORD_FILE"):
        return Path(env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"]).read_text().strip()
    return _generated_once(state / "admin_password")


def _generated_once(path: Path) -> str:
    if not path.exists() or not path.read_text().strip():  # none yet, or its writing cut short
        _write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    """`text` in `path`, readable by its owner only before the first byte is written."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # a file that was already there keeps its mode otherwise
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
