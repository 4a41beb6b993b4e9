"""A real 2-node Ray cluster on this machine (`ray start`: a head and a worker node, one CPU each,
token authentication on, the Jobs API on 127.0.0.1), jobs submitted to it with `gentrain submit`,
checkpoints in a real S3-compatible server (moto), and the `gentrain jobs` commands."""

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, free_port, gentrain, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

RAY = str(Path(sys.executable).parent / "ray")
BUCKET = "cluster-test"
ARTIFACTS = "mlflow-artifacts"


@dataclass(frozen=True)
class Cluster:
    address: str  # the Jobs API: http://127.0.0.1:PORT
    gcs: str  # 127.0.0.1:PORT
    env: dict[str, str]  # what a client of this cluster sets: its token, the S3 endpoint


@pytest.fixture(scope="module")
def cluster(s3_server, tracking_server, tmp_path_factory):
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    s3_server.client().create_bucket(Bucket=BUCKET)
    token = generate_new_authentication_token()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # The cluster's own environment: S3 and MLflow credentials (tracking_server's) live here,
    # never in a spec or a submission; a stopped job's driver gets time to close its MLflow run.
    node_env = {**os.environ, **auth, **s3_server.env, "RAY_JOB_STOP_WAIT_TIME_S": "30"}
    node_env["PATH"] = f"{Path(RAY).parent}{os.pathsep}{os.environ['PATH']}"  # gentrain installed
    node_env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats"]

    def own_ports() -> list[str]:
        """Each node's agents on ports of their own: Ray's defaults are shared by every Ray on
        this machine, and a node whose job agent could not bind takes no jobs."""
        names = ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export")
        return [f"--{name}-port={free_port()}" for name in names]

    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            f"--port={gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--temp-dir={tmp_path_factory.mktemp('ray')}",
            *common,
            *own_ports(),
        ],
        env=node_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nodes = [head]
    try:
        wait_for(lambda: _listening(dashboard_port), 120, "the head's Jobs API")
        nodes.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    f"--address=127.0.0.1:{gcs_port}",
                    # no --temp-dir: the head's, as a second `ray start` on one machine takes
                    # it (both nodes' runtime-env agents unpack a job's files in one place)
                    *common,
                    *own_ports(),
                ],
                env=node_env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        client_env = {**auth, "AWS_ENDPOINT_URL": s3_server.env["AWS_ENDPOINT_URL"]}
        found = Cluster(f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", client_env)
        # each `ray list` is a new process: asked every 3 s, not every second
        wait_for(lambda: len(_alive_nodes(found)) == 2, 120, "both nodes", every=3)
        yield found
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)  # what `ray start` left behind


@pytest.fixture(scope="module")
def tracking_server(s3_server, tmp_path_factory):
    """infra/local_stack.py's MLflow server (sign-in on): PostgreSQL behind it, artifacts in the
    S3 server. The module's processes, the cluster's nodes included, sign in as its admin."""
    s3_server.client().create_bucket(Bucket=ARTIFACTS)
    stack = tmp_path_factory.mktemp("stack")
    command = [sys.executable, str(REPO / "infra" / "local_stack.py")]
    env = {**os.environ, **s3_server.env}
    started = subprocess.run(
        [*command, "start", str(stack), "--s3-endpoint", s3_server.endpoint, "--bucket", ARTIFACTS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert started.returncode == 0, started.stderr
        assert "postgres" in json.loads((stack / "state.json").read_text())
        lines = (stack / "env").read_text().splitlines()
        settings = dict(shlex.split(line)[1].split("=", 1) for line in lines)
        with pytest.MonkeyPatch.context() as patch:
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                patch.setenv(name, settings[name])
            yield settings["MLFLOW_TRACKING_URI"]
    finally:
        subprocess.run([*command, "stop", str(stack)], env=env, timeout=120)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ray_list(cluster: Cluster, *args: str) -> list[dict]:
    result = subprocess.run(
        [RAY, "list", *args, "--address", cluster.address, "--format", "json", "--detail"],
        capture_output=True,
        text=True,
        env={**os.environ, **cluster.env},
        timeout=60,
    )
    start = result.stdout.find("[")  # after any warnings Ray prints first
    return json.loads(result.stdout[start:]) if result.returncode == 0 and start >= 0 else []


def _alive_nodes(cluster: Cluster) -> list[dict]:
    return [n for n in _ray_list(cluster, "nodes") if n.get("state") == "ALIVE"]


def _job_spec(workdir: Path, steps: int, tracking_uri: str | None = None) -> Path:
    spec = {
        "name": f"cluster-{workdir.name}",  # one experiment per test on the shared server
        "model": {"family": "gan", "flavor": "debug"},
        "data": {"source": "builtin:digits", "batch_size": 16},
        "train": {
            "workers": 2,
            "cpus_per_worker": 1,
            "max_steps": steps,
            "log_every": 5,
            "eval_every": steps,
            "checkpoint_every": 10,
        },
        "eval": {"metrics": [], "num_samples": 32},
        "tracking": {"uri": tracking_uri or _local_store(workdir), "system_metrics_every": 1},
        "storage": {"path": f"s3://{BUCKET}/{workdir.name}"},
    }
    path = workdir / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# The submitter's own MLflow credentials, which the server refuses: a job signs in with its
# node's, and fails if gentrain sent these with it.
SUBMITTER = {"MLFLOW_TRACKING_USERNAME": "submitter", "MLFLOW_TRACKING_PASSWORD": "planted-0451"}


def _client_env(cluster: Cluster) -> dict[str, str]:
    return {**cluster.env, **SUBMITTER, "RAY_ADDRESS": ""}


def _submit_and_follow(cluster: Cluster, workdir: Path):
    """`gentrain submit job.yaml --follow` from `workdir`, which must succeed."""
    result = gentrain(
        "submit",
        "job.yaml",
        "--address",
        cluster.address,
        "--follow",
        cwd=workdir,
        env=_client_env(cluster),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return result


def _commit_all(directory: Path) -> str:
    """`directory` as a git checkout of one commit; returns the commit."""
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the job"]):
        subprocess.run(["git", *identity, *args], cwd=directory, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True)
    return head.stdout.decode().strip()


def _local_store(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def _only_run(workdir: Path, tracking_uri: str):
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(f"cluster-{workdir.name}")
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_a_submitted_job_trains_on_both_nodes(cluster, s3_server, tracking_server, tmp_path):
    """A user's own model family (README's example, next to the spec) ships with the job."""
    spec = _job_spec(tmp_path, steps=20, tracking_uri=tracking_server)
    spec.write_text(spec.read_text().replace("family: gan", "family: tiny_vae:FAMILY"))
    shutil.copy(REPO / "examples" / "tiny_vae.py", tmp_path / "tiny_vae.py")
    (tmp_path / "mlflow.db").touch()  # a local store: never shipped with the job
    head = _commit_all(tmp_path)  # a checkout: the job ships without .git, reports its commit
    result = _submit_and_follow(cluster, tmp_path)
    assert "submitted job" in result.stdout and "SUCCEEDED" in result.stdout
    assert f"shipped {tmp_path} (" in result.stdout and "without .git, .venv" in result.stdout
    assert "/mlflow.db" in result.stdout
    shipped = f"shipped family tiny_vae:FAMILY: {tmp_path / 'tiny_vae.py'} (in the working"
    assert shipped in result.stdout
    run = _only_run(tmp_path, tracking_server)
    assert run.info.status == "FINISHED"
    assert f"look at it: {tracking_server}/#/runs/{run.info.run_id}\n" in result.stdout
    # signed in as the node's user (the stack's admin), with nothing of the submitter's sent
    assert run.data.tags["mlflow.user"] == "admin"
    job_id = result.stdout.split("submitted job ", 1)[1].split()[0]
    (job,) = [j for j in _ray_list(cluster, "jobs") if j.get("submission_id") == job_id]
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(
        job["runtime_env"].get("env_vars", {})
    ), job["runtime_env"]
    assert SUBMITTER["MLFLOW_TRACKING_PASSWORD"] not in result.stdout + result.stderr
    tags = run.data.tags
    assert (tags["mlflow.source.type"], tags["mlflow.source.git.commit"]) == ("JOB", head)
    # both Ray nodes here run on one machine (one IP), which Ray Train counts as one node: its
    # first worker logs the machine's series, unprefixed (tests/test_tracking.py: several)
    system = {name for name in run.data.metrics if name.startswith("system/")}
    assert "system/cpu_utilization_percentage" in system, system
    inputs = mlflow.MlflowClient(tracking_server).get_run(run.info.run_id).inputs
    assert {i.dataset.name for i in inputs.dataset_inputs} == {"digits", "digits-heldout"}
    assert not (tmp_path / "mlruns").exists(), "tracked by the server, nothing local"
    # its artifacts went through the server to S3
    listed = s3_server.client().list_objects_v2(Bucket=ARTIFACTS)
    keys = [item["Key"] for item in listed.get("Contents", [])]
    of_run = [key for key in keys if run.info.run_id in key]
    assert any(key.endswith("spec.yaml") for key in of_run), of_run
    assert any("/images/samples+step+20+" in key for key in of_run), of_run
    models = mlflow.MlflowClient(tracking_server).search_logged_models([run.info.experiment_id])
    (model,) = [m for m in models if m.name == "model"]  # (and its checkpoints)
    assert model.source_run_id == run.info.run_id
    assert any(model.model_id in key and key.endswith("model.pth") for key in keys), keys
    # the module's first job: the cluster's only Ray Train workers
    workers = _ray_list(cluster, "actors", "--filter", "class_name=RayTrainWorker")
    assert len(workers) == 2 and len({a["node_id"] for a in workers}) == 2, workers
    assert _checkpoints(s3_server, tmp_path)


def test_a_failed_jobs_traceback_is_in_its_log_and_its_run(cluster, tracking_server, tmp_path):
    _job_spec(tmp_path, steps=10, tracking_uri=tracking_server)
    # only a worker finds out, once it reads it, that one image of the folder is damaged (the
    # driver reads metadata and the first image)
    (tmp_path / "images").mkdir()
    for i in range(80):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(buffer, format="PNG")
        data = buffer.getvalue()[: 30 if i == 40 else None]
        (tmp_path / "images" / f"{i:02d}.png").write_bytes(data)
    env = _client_env(cluster)
    failing = ["--set", "data.source=images:images", "--set", "train.max_failures=0"]
    failing += ["--set", "data.channels=1", "--set", "data.batch_size=16"]
    result = gentrain(
        "submit", "job.yaml", *failing, "--address", cluster.address, cwd=tmp_path, env=env
    )
    job_id = result.stdout.split("submitted job ")[1].split()[0]
    status = ["jobs", "status", job_id, "--address", cluster.address]
    ended = lambda: gentrain(*status, cwd=tmp_path, env=env).stdout.strip() == "FAILED"  # noqa: E731
    wait_for(ended, 300, "the job to fail")
    logs = gentrain("jobs", "logs", job_id, "--address", cluster.address, cwd=tmp_path, env=env)
    assert "Traceback (most recent call last)" in logs.stdout, logs.stdout[-3000:]
    assert "Error Snippet]:" in logs.stdout and "gentrain/trainer.py" in logs.stdout
    last = [line for line in logs.stdout.splitlines() if line.strip()][-1]
    assert last.startswith("error: run ") and "40.png: not a readable image" in last
    run = _only_run(tmp_path, tracking_server)
    assert run.info.status == "FAILED" and run.info.run_id in last
    error = mlflow.MlflowClient(tracking_server).download_artifacts(
        run.info.run_id, "error.txt", str(tmp_path)
    )
    assert "Error Snippet]:" in Path(error).read_text()


def test_a_stopped_job_ends_killed_and_resumes_from_its_s3_checkpoint(
    cluster, s3_server, tracking_server, tmp_path
):
    _job_spec(tmp_path, steps=100000, tracking_uri=tracking_server)
    env = _client_env(cluster)
    submitted = gentrain("submit", "job.yaml", "--address", cluster.address, cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split("submitted job ")[1].split()[0]

    def status() -> str:
        return gentrain(
            "jobs", "status", job_id, "--address", cluster.address, cwd=tmp_path, env=env
        ).stdout.strip()

    wait_for(lambda: _checkpoints(s3_server, tmp_path), 300, "the job's first S3 checkpoint")
    assert status() == "RUNNING"
    owner = json.loads(_only_run(tmp_path, tracking_server).data.tags["gentrain.owner"])
    assert owner["ray_job"] == job_id and owner["ray_address"].startswith("http://")
    reconcile = ["runs", "reconcile", f"cluster-{tmp_path.name}", "--older-than", "0s"]
    reconcile += ["--tracking-uri", tracking_server, "--address", cluster.address]
    admin = {**cluster.env, "RAY_ADDRESS": ""}  # signed in as the stack's admin, as the jobs are
    running = gentrain(*reconcile, cwd=tmp_path, env=admin)  # asks the cluster: the job runs
    assert running.returncode == 0 and running.stdout.startswith("nothing to end"), running
    logs = gentrain("jobs", "logs", job_id, "--address", cluster.address, cwd=tmp_path, env=env)
    assert "MLflow run" in logs.stdout
    listed = gentrain("jobs", "list", "--address", cluster.address, cwd=tmp_path, env=env)
    assert job_id in listed.stdout
    stopped = gentrain("jobs", "stop", job_id, "--address", cluster.address, cwd=tmp_path, env=env)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: status() == "STOPPED", 120, "the job to stop")
    killed = lambda: _only_run(tmp_path, tracking_server).info.status == "KILLED"  # noqa: E731
    wait_for(killed, 60, "the run to end KILLED")
    # a run its job left RUNNING (the job's driver killed with its node): the job has stopped
    client = mlflow.MlflowClient(tracking_server)
    run = _only_run(tmp_path, tracking_server)
    left = client.create_run(run.info.experiment_id, tags={"gentrain.owner": json.dumps(owner)})
    ended = gentrain(*reconcile, cwd=tmp_path, env=admin)
    assert ended.returncode == 0, ended
    assert f"ended run {left.info.run_id}" in ended.stdout
    assert f"Ray job {job_id} (gone)" in ended.stdout
    assert client.get_run(left.info.run_id).info.status == "FAILED"
    client.delete_run(left.info.run_id)  # the experiment's one run is the job's again

    run_id = _only_run(tmp_path, tracking_server).info.run_id
    stopped_at = max(_loss_steps(tracking_server, run_id))
    end = stopped_at + 10
    resumed = gentrain(
        "submit",
        "job.yaml",
        "--set",
        f"train.max_steps={end}",
        "--resume",
        run_id,
        "--address",
        cluster.address,
        "--follow",
        cwd=tmp_path,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    run = _only_run(tmp_path, tracking_server)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    resumed_from = int(run.data.tags["gentrain.resumed_from_step"])
    assert 10 <= resumed_from <= stopped_at and resumed_from % 10 == 0, "an S3 checkpoint's step"
    assert _loss_steps(tracking_server, run_id) == list(range(5, end + 1, 5)), "each step once"


def _checkpoints(s3_server, workdir: Path) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=workdir.name)
    keys = [item["Key"] for item in listed.get("Contents", [])]
    return [key for key in keys if "checkpoint_" in key and key.endswith("state.json")]


def _loss_steps(tracking_uri: str, run_id: str) -> list[int]:
    client = mlflow.MlflowClient(tracking_uri)
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def test_a_submitted_sweep_runs_its_trials_on_both_nodes(
    cluster, s3_server, tracking_server, tmp_path
):
    spec_path = _job_spec(tmp_path, steps=5, tracking_uri=tracking_server)
    spec = yaml.safe_load(spec_path.read_text())
    spec["name"] = f"cluster-sweep-{tmp_path.name}"
    spec["train"] |= {"workers": 1, "eval_every": 5, "checkpoint_every": 5}
    spec["sweep"] = {
        "search": "grid",
        "metric": "loss",
        "concurrency": "auto",
        "space": {"optim.lr": {"grid": [1e-3, 2e-3]}},
    }
    spec_path.write_text(yaml.safe_dump(spec))
    result = _submit_and_follow(cluster, tmp_path)
    assert "(gentrain sweep job.yaml)" in result.stdout and "SUCCEEDED" in result.stdout
    # a CPU a node, a worker a trial: room for both trials at once
    assert "concurrency auto: 2 trials at once" in result.stdout, result.stdout[-3000:]
    parent, children = _sweep_runs(tracking_server, spec["name"])
    assert parent.info.status == "FINISHED" and "best_loss" in parent.data.metrics
    assert sorted(run.data.params["optim.lr"] for run in children) == ["0.001", "0.002"]
    assert all(run.info.status == "FINISHED" for run in children)
    # the sweep and its trials, wherever they ran, signed in as the nodes' MLflow user
    assert {run.data.tags["mlflow.user"] for run in [parent, *children]} == {"admin"}
    # one CPU a node, two trials at once: one trial on each node
    trials = _ray_list(cluster, "actors", "--filter", "class_name=ImplicitFunc")
    assert len({actor["node_id"] for actor in trials}) == 2, trials


def _sweep_runs(tracking_uri: str, experiment: str):
    """The sweep's parent run and its trials' child runs."""
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [
        run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    return parent, children


def test_a_submitted_sweep_of_two_worker_trials_spreads_each_trial_over_both_nodes(
    cluster, s3_server, tracking_server, tmp_path
):
    """Each trial is a Ray Train run of its own, nested in the Tune trial: its two workers take
    the cluster's two CPUs, one a node, and end before the next trial starts."""
    spec_path = _job_spec(tmp_path, steps=10, tracking_uri=tracking_server)
    spec = yaml.safe_load(spec_path.read_text())
    spec["name"] = f"cluster-sweep2-{tmp_path.name}"
    spec["train"] |= {"eval_every": 5, "checkpoint_every": 5}
    spec["sweep"] = {
        "search": "random",
        "metric": "loss",
        "trials": 2,
        "concurrency": "auto",
        "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
    }
    spec_path.write_text(yaml.safe_dump(spec))
    result = _submit_and_follow(cluster, tmp_path)
    assert "SUCCEEDED" in result.stdout, result.stdout[-3000:]
    # two CPUs in all, two workers a trial: one trial at a time
    assert "concurrency auto: 1 trial at once" in result.stdout, result.stdout[-3000:]
    parent, children = _sweep_runs(tracking_server, spec["name"])
    assert parent.info.status == "FINISHED" and "best_loss" in parent.data.metrics
    assert len(children) == 2 and all(run.info.status == "FINISHED" for run in children)
    assert all(run.data.tags["gentrain.workers"] == "2" for run in children)
    for child in children:  # each trial's own checkpoints, in S3
        keys = _checkpoints(s3_server, tmp_path)
        assert any(child.info.run_id in key for key in keys), (child.info.run_id, keys)
    # one CPU a node, one trial at a time: each trial's two workers ran one on each node
    job_id = _ray_job_id(cluster, result.stdout.split("submitted job ")[1].split()[0])
    workers = _ray_list(cluster, "actors", "--filter", "class_name=RayTrainWorker")
    of_sweep = [actor for actor in workers if actor["job_id"] == job_id]
    assert len(of_sweep) == 4 and len({a["node_id"] for a in of_sweep}) == 2, of_sweep


def test_a_users_own_family_from_outside_the_working_directory_ships_as_a_py_module(
    cluster, s3_server, tracking_server, tmp_path
):
    """README's example family from a directory outside the working directory, on PYTHONPATH:
    shipped as a py_module of its own. (Next to the spec, it ships with the working directory:
    the first test of this module.)"""
    spec = yaml.safe_load(_job_spec(tmp_path, steps=10, tracking_uri=tracking_server).read_text())
    spec["model"] = {"family": "tiny_vae:FAMILY", "flavor": "debug"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    outside = tmp_path.parent / f"{tmp_path.name}-code"
    outside.mkdir()
    shutil.copy(REPO / "examples" / "tiny_vae.py", outside / "tiny_vae.py")
    env = {**_client_env(cluster), "PYTHONPATH": str(outside)}
    submit = ["--address", cluster.address, "--follow"]
    result = gentrain("submit", "job.yaml", *submit, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"shipped family tiny_vae:FAMILY: {outside / 'tiny_vae.py'} (as a py_module)" in (
        result.stdout
    )
    run = _only_run(tmp_path, tracking_server)
    assert run.info.status == "FINISHED" and "recon" in run.data.metrics


def _ray_job_id(cluster: Cluster, submission_id: str) -> str:
    (job,) = [job for job in _ray_list(cluster, "jobs") if job["submission_id"] == submission_id]
    return job["job_id"]


def test_bad_addresses_tokens_and_buckets_are_one_line_errors(
    cluster, s3_server, strict_s3, tmp_path
):
    _job_spec(tmp_path, steps=10)
    jobs_before = len(_ray_list(cluster, "jobs"))
    unreachable = gentrain(
        "submit",
        "job.yaml",
        "--address",
        f"http://127.0.0.1:{free_port()}",
        cwd=tmp_path,
        env=_client_env(cluster),
    )
    assert unreachable.returncode == 1
    assert (
        unreachable.stderr.startswith("error: --address") and "Traceback" not in unreachable.stderr
    )
    wrong = gentrain(
        "submit",
        "job.yaml",
        "--address",
        cluster.address,
        cwd=tmp_path,
        env={**_client_env(cluster), "RAY_AUTH_TOKEN": "0" * 32},
    )
    assert wrong.returncode == 1 and "token" in wrong.stderr, wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    invalid = gentrain(
        "submit",
        "job.yaml",
        "--set",
        "train.workers=0",
        "--address",
        cluster.address,
        cwd=tmp_path,
        env=_client_env(cluster),
    )
    assert invalid.returncode == 2 and "train.workers" in invalid.stderr
    no_bucket = gentrain(
        "submit",
        "job.yaml",
        "--set",
        "storage.path=s3://no-such-bucket/runs",
        "--address",
        cluster.address,
        cwd=tmp_path,
        env={**_client_env(cluster), **s3_server.env},  # this machine has credentials: checked
    )
    assert no_bucket.returncode == 2, no_bucket.stderr
    assert no_bucket.stderr.startswith("error: storage.path: bucket 'no-such-bucket'")
    refused = gentrain(
        "submit",
        "job.yaml",
        "--address",
        cluster.address,
        cwd=tmp_path,
        env={
            **_client_env(cluster),
            **s3_server.env,
            "AWS_ENDPOINT_URL": strict_s3,
            "AWS_SECRET_ACCESS_KEY": "planted-key",
        },
    )
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: storage.path: S3 at") and "refused" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "planted-key" not in refused.stderr
    assert len(_ray_list(cluster, "jobs")) == jobs_before, "nothing was submitted"
    # joining the cluster directly: a local storage.path cannot hold what both nodes save
    local = gentrain(
        "run",
        "job.yaml",
        "--set",
        "storage.path=checkpoints",
        "--address",
        cluster.gcs,
        cwd=tmp_path,
        env=_client_env(cluster),
    )
    assert local.returncode == 2, local.stderr
    assert local.stderr.startswith("error: storage.path: checkpoints is local to each node")
    assert not (tmp_path / "checkpoints").exists()
    # nor can a local MLflow store take what rank 0 logs from whichever node it runs on
    local_store = gentrain(
        "run",
        "job.yaml",
        "--address",
        cluster.gcs,
        cwd=tmp_path,
        env={**_client_env(cluster), **s3_server.env},
    )
    assert local_store.returncode == 2, local_store.stderr
    assert local_store.stderr.startswith(
        f"error: tracking.uri: {_local_store(tmp_path)} is a store local to each node"
    )
