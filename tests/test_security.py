"""Secure defaults: the embedded Ray listens on loopback only, with token authentication on."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

LISTENING = """
import json, psutil
from gentrain import cluster
from ray._private.authentication.authentication_utils import is_token_auth_enabled
cluster.connect()
ours = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
listening = [c for c in psutil.net_connections("inet") if c.status == "LISTEN"]
print(json.dumps({
    "addresses": [c.laddr.ip for c in listening if c.pid in ours],
    "token_auth": is_token_auth_enabled(),
}))
"""


def test_the_embedded_ray_listens_on_loopback_only_with_token_auth(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LISTENING], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(found["addresses"]) >= 3, "the GCS, the raylet and its workers were found"
    assert set(found["addresses"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, found
    assert found["token_auth"] is True
