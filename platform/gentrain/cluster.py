"""Which Ray a job runs on (an embedded local one started by gentrain, or a running cluster), and
the Jobs API that submits specs to a cluster and manages their jobs."""

import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from gentrain.errors import GentrainError, SpecError, first_line
from gentrain.families.user import code_to_ship, installed_families
from gentrain.redact import redact
from gentrain.storage import check_bucket
from gentrain.tracking import source

EMBEDDED_RAY_TRAIN_SETTINGS = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def is_embedded(address: str | None) -> bool:
    """Whether a job with this --address runs on an embedded local Ray (on this machine)."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def connect(
    address: str | None = None, *, py_modules: list[Path] = (), cpus_wanted: int = 1
) -> None:
    """Join the Ray at `address` (or RAY_ADDRESS); without one, start an embedded local Ray bound
    to 127.0.0.1, with at least `cpus_wanted` CPUs (a job of more workers than this machine has
    cores shares them, rather than waiting for cores that never come). Worker logs stay in Ray's
    log files: the driver shows progress instead. `py_modules` (the user's family code) is
    importable in every worker of this driver's job."""
    if ray.is_initialized():
        return
    _leave_unpacked_working_dir()
    if _job_runtime_env().get("py_modules"):
        py_modules = []  # `gentrain submit` shipped them with the job: its workers have them
    runtime_env = {"py_modules": [str(path) for path in py_modules]} if py_modules else None
    _join_or_start(address, runtime_env, cpus_wanted)
    _stop_on_sigterm()


_own_working_dir: Path | None = None
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # Ray's Jobs API sets it for a job's driver


def in_submitted_job() -> bool:
    """Whether this process is the driver of a job submitted to a cluster (`gentrain submit`,
    a KubeRay RayJob): its output is the job's log."""
    return JOB_CONFIG_ENV in os.environ


def _leave_unpacked_working_dir() -> None:
    """A submitted job's driver starts in the copy of the shipped directory that Ray unpacked on
    its node, and Ray may unpack it there again while the job runs: another node's runtime-env
    agent that shares this node's Ray temp dir (two `ray start` on one machine) replaces the
    directory when its first worker needs it, and the driver is left in a deleted directory
    (os.getcwd() fails: Ray Tune's end of a sweep calls it). The driver moves to a copy of its
    own, hard links of the shipped files, for its lifetime (removed by `shutdown`)."""
    global _own_working_dir
    if _own_working_dir or not _job_runtime_env().get("working_dir"):
        return
    shipped = Path.cwd()
    own = Path(tempfile.mkdtemp(prefix="gentrain-driver-"))
    shutil.copytree(shipped, own, dirs_exist_ok=True, copy_function=_link_or_copy)
    os.chdir(own)
    sys.path[:] = [str(own) if entry == str(shipped) else entry for entry in sys.path]
    _own_working_dir = own


def _job_runtime_env() -> dict:
    """The runtime_env a submitted job was given ({} outside one)."""
    return json.loads(os.environ.get(JOB_CONFIG_ENV) or "{}").get("runtime_env") or {}


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def shutdown() -> None:
    """Stop this process's Ray connection (or embedded Ray) and remove what `connect` made."""
    ray.shutdown()
    if _own_working_dir:
        shutil.rmtree(_own_working_dir, ignore_errors=True)


def _stop_on_sigterm() -> None:
    """SIGTERM (`gentrain jobs stop`, Ray's Jobs API, a batch scheduler) stops the driver like
    Ctrl-C, so its run ends KILLED and can be resumed. Set after ray.init: Ray's core installs a
    handler of its own that ends the process at once."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _join_or_start(address: str | None, runtime_env: dict | None, cpus_wanted: int) -> None:
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
        "runtime_env": runtime_env,
    }
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as err:  # ConnectionError, an auth error, a version mismatch...
            raise GentrainError(
                f"--address {address}: cannot join the cluster: {first_line(err)}"
            ) from None
        return
    # The embedded Ray's processes inherit these: nothing preempts a single machine, and a short
    # poll lets short jobs start and end promptly.
    for name, value in EMBEDDED_RAY_TRAIN_SETTINGS.items():
        os.environ.setdefault(name, value)
    # Ray reads a node IP of 127.0.0.1 as "this machine's reachable address" and serves on it
    # (and on every interface): an embedded Ray serves this machine only, on loopback.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    # "local": a new Ray of its own, never one that `ray start` left running on this machine
    cpus = max(os.cpu_count() or 1, cpus_wanted)
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=cpus,
        **common,
    )


def check_multi_node(storage, tracking_uri: str) -> None:
    """On a cluster of several nodes, each node's own disk can hold neither a local storage.path
    (Ray Train's workers could not share checkpoints through it) nor a local MLflow store (rank 0
    may run on a node that has no such store and cannot log to the run)."""
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if nodes <= 1:
        return
    if "://" not in storage.path and not storage.shared:
        raise SpecError(
            f"storage.path: {storage.path} is local to each node and this cluster has "
            f"{nodes} nodes; use s3://BUCKET/PREFIX, or set storage.shared: true for a "
            "filesystem every node mounts"
        )
    if tracking_uri.split("://")[0] in ("sqlite", "file"):
        raise SpecError(
            f"tracking.uri: {tracking_uri} is a store local to each node and this cluster has "
            f"{nodes} nodes; use an MLflow server (tracking.uri or MLFLOW_TRACKING_URI: "
            "http://HOST:PORT)"
        )


def available_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))


def worker_slots(*, cpus: int, gpus: int) -> int:
    """How many workers of `cpus` CPUs and `gpus` GPUs each the cluster's live nodes hold at
    once (a worker lives on one node)."""
    slots = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            fit = int(have.get("CPU", 0) // cpus)
            slots += min(fit, int(have.get("GPU", 0) // gpus)) if gpus else fit
    return slots


# --- the Ray Jobs API: submit a spec to a cluster, follow and manage its jobs -----------------

# Never shipped with a job (gitignore patterns, as Ray reads them; a leading / anchors to the
# working directory): version control, environments, local MLflow stores, checkpoints, data.
EXCLUDED = [".git", ".venv", "venv", "__pycache__", "/mlflow.db", "/mlruns", "/.gentrain", "/data"]
# Where a cluster's workers find S3 (credentials stay with the cluster's own environment).
CARRIED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
AGENT_WAIT_S = 60  # how long a submission waits for a new cluster's job agent


def jobs_client(address: str | None):
    """A Jobs API client for `address` (or RAY_ADDRESS), token included when the cluster asks
    for one (RAY_AUTH_TOKEN or ~/.ray/auth_token, as Ray reads them)."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SpecError(
            "--address: give the cluster's Jobs API, e.g. --address http://HOST:8265, "
            "or set RAY_ADDRESS"
        )
    _quiet_ray_client_logs()
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # Ray raises ConnectionError, RuntimeError or ValueError here
        raise GentrainError(f"--address {address}: {_jobs_api_problem(err)}") from None


def _quiet_ray_client_logs() -> None:
    """Ray's client logs each file its packaging leaves out, the upload and the log stream's end:
    gentrain says what it shipped in one line and prints the job's own log."""
    from ray.dashboard.modules import dashboard_sdk
    from ray.dashboard.modules.job import sdk

    for logger in (logging.getLogger("ray._private.runtime_env"), dashboard_sdk.logger, sdk.logger):
        logger.setLevel(logging.ERROR)


def _jobs_api_problem(err: Exception) -> str:
    text = " ".join(str(err).split())
    if "auth" in text.lower() or "401" in text or "403" in text:
        return (
            "the cluster refused the token; set RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the "
            "cluster's token and RAY_AUTH_MODE=token"
        )
    return f"cannot reach the Ray Jobs API ({text[:300]})"


def shipped_directory(
    root: Path, storage_path: str, *, wanted: Path | None = None
) -> tuple[list[str], int, bool]:
    """The exclude patterns `submit` ships the working directory with (the local checkpoint
    directory too), the bytes left to ship (more than Ray's upload limit is a SpecError), and
    whether `wanted` (a file, or a directory's files) ships with it."""
    from ray._private.runtime_env import packaging  # Ray's own walk: what it would upload

    _quiet_ray_client_logs()
    excludes = list(EXCLUDED)
    storage = Path(storage_path).resolve()
    if "://" not in storage_path and storage.is_relative_to(root) and storage != root:
        excludes.append(f"/{storage.relative_to(root).as_posix()}")
    size, found = 0, False

    def add(path: Path) -> None:
        nonlocal size, found
        size += path.stat().st_size if path.is_file() else 0
        found = found or (wanted is not None and path.is_file() and path.is_relative_to(wanted))

    packaging._dir_travel(root, [packaging._get_excludes(root, excludes)], add, True)
    if size > packaging.GCS_STORAGE_MAX_SIZE:
        raise SpecError(
            f"working directory {root}: {size / 2**20:.0f} MiB to ship is over Ray's upload limit "
            f"of {packaging.GCS_STORAGE_MAX_SIZE / 2**20:.0f} MiB; move data to s3:// or elsewhere"
        )
    return excludes, size, found


@dataclass(frozen=True)
class Submission:
    job_id: str
    shipped: Path  # the working directory, shipped as the job's working_dir
    shipped_bytes: int
    excluded: list[str]  # gitignore patterns left out of it
    family_code: Path | None = None  # the user's family module, in the working directory or not
    family_code_apart: bool = False  # shipped as a py_module of its own (outside the directory)
    family_installed: str | None = None  # the installed package offering the job's family


def submit(
    spec_path: str,
    sets: list[str],
    *,
    address: str | None,
    command: str,
    resume_run_id: str | None = None,
    allow_data_change: bool = False,
) -> Submission:
    """Submit `gentrain COMMAND SPEC --set ... [--resume RUN_ID [--allow-data-change]]` to run on
    the cluster, shipping the working directory."""
    root = Path.cwd()
    spec_file = Path(spec_path).resolve()
    if not spec_file.is_relative_to(root):
        raise SpecError(f"{spec_path}: the spec must be inside the working directory it ships with")
    from gentrain import spec as spec_module

    job = spec_module.load(spec_file, sets)
    if job.tracking.uri and redact(job.tracking.uri) != job.tracking.uri:
        raise SpecError(
            "tracking.uri: a password in it would travel with the job (its command line and "
            "files); give the cluster's nodes their own MLflow credentials instead "
            "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD; KubeRay: Secret "
            "gentrain-mlflow)"
        )
    if _has_s3_credentials():  # else only the cluster's own environment can tell
        check_bucket(job.storage.path, "storage.path")
    family_code = code_to_ship(job.model.family)
    excludes, size, in_working_dir = shipped_directory(
        root, job.storage.path, wanted=family_code.resolve() if family_code else None
    )
    runtime_env = {"working_dir": str(root), "excludes": excludes}
    apart = bool(family_code and not in_working_dir)
    with tempfile.TemporaryDirectory(prefix="gentrain-ship-") as packed:
        if apart:
            runtime_env["py_modules"] = [_as_package(family_code, Path(packed))]
        argv = ["gentrain", command, str(spec_file.relative_to(root))]
        for item in sets:
            argv += ["--set", item]
        if resume_run_id:
            argv += ["--resume", resume_run_id]
        if allow_data_change:
            argv.append("--allow-data-change")
        described = source.describe(spec_file.relative_to(root), kind="JOB")
        job_id = _submit_job(
            address, argv, runtime_env, {"gentrain.spec": job.name}, described=described
        )
    installed = installed_families().get(job.model.family)
    package = installed.dist if installed and ":" not in job.model.family else None
    return Submission(job_id, root, size, excludes, family_code, apart, package)


def _as_package(module: Path, directory: Path) -> str:
    """A module as the Jobs API ships py_modules: a directory (a one-file module becomes a
    package of the same name whose __init__.py is that file)."""
    if module.is_dir():
        return str(module)
    package = directory / module.stem
    package.mkdir()
    shutil.copy(module, package / "__init__.py")
    return str(package)


def _submit_job(
    address: str | None, argv: list[str], runtime_env: dict, metadata: dict, *, described: dict
) -> str:
    env = {name: os.environ[name] for name in CARRIED_ENV if os.environ.get(name)}
    env[source.SOURCE_ENV] = json.dumps(described)  # the checkout's, for the job's runs
    client = jobs_client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(
                entrypoint=shlex.join(argv),
                runtime_env={**runtime_env, "env_vars": env},
                metadata=metadata,
            )
        except Exception as err:
            # a cluster that has just started may have no job agent ready yet: Ray says so
            if "try again later" not in str(err) or time.monotonic() > deadline:
                raise GentrainError(f"submit: {_jobs_api_problem(err)}") from None
            time.sleep(2)


def _has_s3_credentials() -> bool:
    """Whether this machine has AWS credentials of its own (read without asking the network)."""
    named = os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
    return bool(named) or (Path.home() / ".aws" / "credentials").exists()


def job_status(client, job_id: str) -> str:
    try:
        return str(client.get_job_status(job_id).value)
    except Exception as err:
        raise SpecError(f"JOB_ID: no job '{job_id}' on this cluster ({first_line(err)})") from None


def follow_logs(client, job_id: str, write) -> str:
    """Stream the job's logs to `write` until it ends; returns its final status."""
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    asyncio.run(tail())
    return job_status(client, job_id)


# --- the processes of a run: its workers (the stall watchdog) and its owner (reconcile) --------


@dataclass(frozen=True)
class WorkerProcess:
    rank: int
    node_id: str  # Ray's node id
    pid: int


def inspect_workers(workers: list[WorkerProcess], *, stacks: bool) -> list[dict]:
    """For each worker, on its own node: alive, stopped and (with `stacks`) its Python stacks
    by py-spy, which reads a stopped or blocked process without running it."""
    calls = [_on_node(_inspect_process, w.node_id).remote(w.pid, stacks) for w in workers]
    return ray.get(calls, timeout=120)


def kill_workers(workers: list[WorkerProcess]) -> None:
    """SIGKILL each worker process (a stopped one too): Ray Train sees its workers die and
    restarts them from the last checkpoint, as after any worker failure."""
    ray.get([_on_node(_kill_process, w.node_id).remote(w.pid) for w in workers], timeout=120)


def _on_node(task, node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    where = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return task.options(num_cpus=0, scheduling_strategy=where)


@ray.remote(max_retries=0)
def _inspect_process(pid: int, stacks: bool) -> dict:
    import subprocess

    import psutil

    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return {"alive": False, "stopped": False, "text": ""}
    alive = status != psutil.STATUS_ZOMBIE
    found = {"alive": alive, "stopped": status == psutil.STATUS_STOPPED, "text": ""}
    if stacks and alive:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        try:
            done = subprocess.run(
                [py_spy, "dump", "--pid", str(pid), "--nonblocking"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            found["text"] = done.stdout if done.returncode == 0 else f"py-spy: {done.stderr}"
        except (OSError, subprocess.TimeoutExpired) as err:
            found["text"] = f"py-spy: {err}"
    return found


@ray.remote(max_retries=0)
def _kill_process(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def this_process() -> dict:
    """Who owns a run started here: this host and process (its start time tells a reused pid
    apart) and, in a submitted job, the job and its cluster's Jobs API."""
    import socket

    import psutil

    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
    }
    if in_submitted_job():
        metadata = json.loads(os.environ[JOB_CONFIG_ENV]).get("metadata") or {}
        owner["ray_job"] = metadata.get("job_submission_id", "")
        try:
            owner["ray_address"] = "http://" + ray._private.worker.get_dashboard_url()
        except Exception:  # no dashboard: reconcile asks the cluster at --address
            pass
    return owner


def owner_alive(owner: dict, address: str | None = None) -> bool | None:
    """Whether the process that owns a run still runs: True, False, or None when it cannot be
    told from here (another machine, its cluster unreachable)."""
    import socket

    import psutil

    if owner.get("host") == socket.gethostname() and "pid" in owner:
        try:
            process = psutil.Process(int(owner["pid"]))
            alive = process.status() != psutil.STATUS_ZOMBIE
            return alive and abs(process.create_time() - float(owner.get("started", 0))) < 1
        except psutil.Error:
            return False
    job, address = owner.get("ray_job"), address or owner.get("ray_address")
    if job and address and "://" in address:
        try:
            from ray.job_submission import JobSubmissionClient

            _quiet_ray_client_logs()
            status = str(JobSubmissionClient(address).get_job_status(job).value)
        except Exception:  # the cluster is away, or forgot the job: cannot tell
            return None
        return status in ("PENDING", "RUNNING")
    return None
