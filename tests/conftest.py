"""Shared fixtures. Tests run the real thing small: local Ray, real MLflow stores, gloo on CPU."""

import os
import subprocess
import sys
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


def gentrain(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None):
    """Run the CLI in a fresh process, as a user would."""
    return subprocess.run(
        [*GENTRAIN, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": "", **(env or {})},
    )
