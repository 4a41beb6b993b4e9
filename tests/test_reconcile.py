"""`gentrain runs reconcile` and the heartbeat it reads, on a real local MLflow store: runs left
RUNNING by an owner that is gone end FAILED; runs whose owner lives, or that beat recently, stay;
`runs compare` marks a stale heartbeat."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil

from conftest import gentrain
from gentrain.tracking.heartbeat import (
    HEARTBEAT,
    HEARTBEAT_STEP,
    OWNER,
    Heartbeat,
    age,
    format_time,
)

EXPERIMENT = "reconciled"


def _dead_owner() -> dict:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(process.pid).create_time()
    process.wait()
    return {"host": socket.gethostname(), "pid": process.pid, "started": started}


def _living_owner() -> dict:
    return {"host": socket.gethostname(), "pid": 1, "started": psutil.Process(1).create_time()}


def _run_with_heartbeat(client, uri: str, experiment_id: str, name: str, owner: dict, step: int):
    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    heartbeat = Heartbeat(run_id, uri=uri, owner=owner, every=3600)
    heartbeat.step = step
    heartbeat.start()
    heartbeat.stop()
    return run_id


def _store(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    runs = {
        "gone": _run_with_heartbeat(client, uri, experiment_id, "gone", _dead_owner(), 7),
        "alive": _run_with_heartbeat(client, uri, experiment_id, "alive", _living_owner(), 3),
        "elsewhere": _run_with_heartbeat(
            client, uri, experiment_id, "elsewhere", {"host": "another-machine", "pid": 42}, 5
        ),
    }
    finished = client.create_run(experiment_id, run_name="finished").info.run_id
    client.set_terminated(finished, "FINISHED")
    runs["finished"] = finished
    return uri, client, runs


def _reconcile(tmp_path: Path, uri: str, *args: str):
    return gentrain("runs", "reconcile", *args, "--tracking-uri", uri, cwd=tmp_path)


def test_heartbeat_records_its_owner_and_step(tmp_path):
    uri, client, runs = _store(tmp_path)
    tags = client.get_run(runs["gone"]).data.tags
    assert tags[HEARTBEAT_STEP] == "7"
    assert 0 <= age(tags) < 60, tags[HEARTBEAT]
    assert json.loads(tags[OWNER])["host"] == socket.gethostname()


def test_reconcile_ends_the_runs_whose_owner_is_gone_and_lists_them(tmp_path):
    uri, client, runs = _store(tmp_path)

    fresh = _reconcile(tmp_path, uri, EXPERIMENT)  # default --older-than 10m: all beat just now
    assert fresh.returncode == 0, fresh.stderr
    assert "nothing to end: no RUNNING run has a heartbeat older than 10m" in fresh.stdout

    listed = _reconcile(tmp_path, uri, EXPERIMENT, "--older-than", "0s", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("would end run ") for line in lines), lines
    assert any(runs["gone"] in line and "at step 7" in line and "(gone)" in line for line in lines)
    assert any(runs["elsewhere"] in line and "not reachable" in line for line in lines)
    assert {client.get_run(r).info.status for r in runs.values()} == {"RUNNING", "FINISHED"}

    ended = _reconcile(tmp_path, uri, "--older-than", "0s")  # every experiment
    assert ended.returncode == 0, ended.stderr
    assert len(ended.stdout.strip().splitlines()) == 2
    gone, elsewhere = client.get_run(runs["gone"]), client.get_run(runs["elsewhere"])
    assert gone.info.status == elsewhere.info.status == "FAILED"
    assert gone.data.tags["gentrain.failure"] == "heartbeat lost at step 7"
    assert elsewhere.data.tags["gentrain.failure"] == "heartbeat lost at step 5"
    assert client.get_run(runs["alive"]).info.status == "RUNNING", "its owner still runs"
    assert client.get_run(runs["finished"]).info.status == "FINISHED"


def test_compare_marks_a_running_run_whose_heartbeat_is_stale(tmp_path):
    uri, client, runs = _store(tmp_path)
    client.set_tag(runs["alive"], HEARTBEAT, format_time(time.time() - 700))
    shown = gentrain(
        "runs", "compare", EXPERIMENT, "--format", "csv", "--tracking-uri", uri, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    statuses = {line.split(",")[1]: line.split(",")[2] for line in shown.stdout.splitlines()[1:]}
    assert statuses["alive"] == "RUNNING (no heartbeat for 11m)"
    assert statuses["gone"] == "RUNNING" and statuses["finished"] == "FINISHED"


def test_a_bad_duration_is_refused_in_one_line(tmp_path):
    uri, client, runs = _store(tmp_path)
    refused = _reconcile(tmp_path, uri, "--older-than", "10 minutes")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: --older-than: '10 minutes' is not a duration (e.g. 90s, 10m, 2h, 1d)"
    )
    assert client.get_run(runs["gone"]).info.status == "RUNNING", "nothing was ended"
