"""Faults that raise nothing: a worker frozen with SIGSTOP, a collective that never returns, a
driver killed with SIGKILL whose run stays RUNNING. Each on a real embedded Ray and a local
MLflow store, bounded in time."""

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    GENTRAIN,
    JOBS,
    gentrain,
    local_client,
    logged_through,
    only_run,
    train_workers_of,
    wait_for,
)

pytestmark = pytest.mark.slow

SPEC = str(JOBS / "dcgan_digits.yaml")
# checkpoints at steps 20, 40 and 60; logged every 5 steps
JOB = [
    *("--set", "model.flavor=debug"),
    *("--set", "train.max_steps=60"),
    *("--set", "train.log_every=5"),
    *("--set", "train.eval_every=30"),
    *("--set", "train.checkpoint_every=20"),
    *("--set", "eval.metrics=[]"),
    *("--set", "tracking.system_metrics=false"),
]
STALL_TIMEOUT = 10  # seconds


def _start(workdir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The driver, its output in files: a pipe nobody reads while the test waits could fill and
    block the driver's next warning (and the watchdog thread that prints it)."""
    with open(workdir / "driver.out", "w") as out, open(workdir / "driver.err", "w") as err:
        return subprocess.Popen(
            [*GENTRAIN, "run", SPEC, *JOB, *args],
            cwd=workdir,
            stdout=out,
            stderr=err,
            text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": "", **(env or {})},
            start_new_session=True,  # its group: the driver and the Ray it starts
        )


def _driver_stderr(workdir: Path) -> str:
    return (workdir / "driver.err").read_text()


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stall_files(workdir: Path, run_id: str) -> dict[str, str]:
    client = local_client(workdir)
    found = {}
    for folder in client.list_artifacts(run_id, "stall"):
        for item in client.list_artifacts(run_id, folder.path):
            local = client.download_artifacts(run_id, item.path, str(workdir / "downloads"))
            found[item.path] = Path(local).read_text()
    return found


def _stop_a_worker(workdir: Path, driver: subprocess.Popen) -> tuple[list[int], float, str]:
    """SIGSTOP the run's first worker past step 25 (its checkpoint of step 20 written); returns
    the workers, the seconds until new ones replaced them all, and the driver's stderr."""
    try:
        wait_for(lambda: logged_through(workdir) >= 25, 300, "step 25, past a checkpoint", 0.2)
        workers = train_workers_of(driver.pid)
        os.kill(workers[0], signal.SIGSTOP)
        frozen_at = time.monotonic()

        def replaced() -> bool:
            now = train_workers_of(driver.pid)
            return bool(now) and not set(workers) & set(now)

        try:
            wait_for(replaced, 180, "new workers", 0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}; the driver said:\n{_driver_stderr(workdir)}") from None
        restarted_after = time.monotonic() - frozen_at
        driver.wait(timeout=300)
    finally:
        _kill_group(driver)
    stderr = _driver_stderr(workdir)
    assert driver.returncode == 0, stderr
    return workers, restarted_after, stderr


def _the_stall_line(stderr: str) -> str:
    # a busy SQLite store's error log may quote the stall too: count the warnings
    lines = [x for x in stderr.splitlines() if x.startswith("warning: stalled after step")]
    assert len(lines) == 1, f"one stall, and one only:\n{stderr}"
    return lines[0]


def _heartbeat_step(workdir: Path) -> int:
    try:
        return int(only_run(workdir).data.tags.get("gentrain.heartbeat_step", 0))
    except Exception:  # no run yet
        return 0


def _finished_with_one_history(workdir: Path):
    run = only_run(workdir)
    steps = [m.step for m in local_client(workdir).get_metric_history(run.info.run_id, "loss")]
    assert run.info.status == "FINISHED"
    assert steps == list(range(5, 61, 5)), "one history: each step once"
    return run


def test_a_frozen_worker_has_its_stack_dumped_and_is_restarted(new_store, tmp_path):
    new_store(tmp_path)
    stall_timeout = ["--set", f"train.stall_timeout={STALL_TIMEOUT}"]
    driver = _start(tmp_path, "--set", "train.workers=1", *stall_timeout)
    (worker,), restarted_after, stderr = _stop_a_worker(tmp_path, driver)
    print(f"frozen worker -> restarted worker: {restarted_after:.1f} s")
    run = _finished_with_one_history(tmp_path)
    assert run.data.tags["gentrain.resumed_from_step"] in ("20", "40")
    stalls = _stall_files(tmp_path, run.info.run_id)
    (path,) = stalls
    assert path.startswith("stall/step_") and path.endswith("/rank_0.txt")
    assert f"Process {worker}" in stalls[path] and "trainer.py" in stalls[path], stalls[path]
    line = _the_stall_line(stderr)
    assert "rank 0 (process stopped) in " in line and "stall/step_" in line, line
    assert line.startswith(f"warning: {run.data.tags['gentrain.stall']}"), line
    assert STALL_TIMEOUT <= restarted_after < STALL_TIMEOUT + 60


def test_a_collective_left_waiting_by_a_stopped_rank_times_out(new_store, tmp_path):
    """One rank is stopped; the other waits for it in a collective. The watchdog dumps both
    stacks, then the collective's timeout (set from train.stall_timeout) fails the waiting
    rank's step, and Ray Train restarts both."""
    new_store(tmp_path)
    driver = _start(tmp_path, "--set", f"train.stall_timeout={STALL_TIMEOUT}")
    workers, restarted_after, stderr = _stop_a_worker(tmp_path, driver)
    print(f"stopped rank -> collective timeout -> restarted workers: {restarted_after:.1f} s")
    run = _finished_with_one_history(tmp_path)
    files = _stall_files(tmp_path, run.info.run_id)
    stacks = {int(Path(path).stem[5:]): text for path, text in files.items()}
    assert sorted(stacks) == [0, 1]
    (stopped,) = [rank for rank, text in stacks.items() if f"Process {workers[0]}:" in text]
    waiting = 1 - stopped
    line = _the_stall_line(stderr)
    assert f"rank {stopped} (process stopped) in " in line, line
    assert f"rank {waiting} waits in " in line, line
    assert line.startswith(f"warning: {run.data.tags['gentrain.stall']}"), line
    # the waiting rank's collective times out; or, where it waits outside one (for rank 0's
    # evaluation), the watchdog kills the workers once the collectives' limit has passed too
    failures = [x for x in stderr.splitlines() if f"worker rank {waiting} failed" in x]
    timed_out = failures and re.search(r"timed out|timeout", failures[0], re.I)
    assert timed_out or "killing the stalled workers" in stderr, stderr
    collective_timeout = STALL_TIMEOUT + 30  # stall.collective_limit
    assert collective_timeout <= restarted_after < collective_timeout + 30


def test_a_killed_drivers_run_is_reconciled_and_still_resumes(new_store, tmp_path):
    """The driver and its embedded Ray are SIGKILLed (its machine went away): the run stays
    RUNNING until `gentrain runs reconcile` finds its heartbeat old and its owner gone."""
    new_store(tmp_path)
    # long enough that the driver dies mid-run: 60 steps take ~2 s
    longer = [*("--set", "train.max_steps=600"), *("--set", "train.eval_every=300")]
    driver = _start(tmp_path, *longer, env={"GENTRAIN_HEARTBEAT_S": "1"})
    workers = []
    try:
        wait_for(lambda: _heartbeat_step(tmp_path) >= 20, 300, "a heartbeat past step 20", 0.2)
        workers = train_workers_of(driver.pid)
        for worker in workers:  # the run cannot end before its driver dies
            os.kill(worker, signal.SIGSTOP)
    finally:
        _kill_group(driver)
        for worker in workers:  # groups of their own; stopped, they would not see Ray go
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
        driver.wait(timeout=60)
    run = only_run(tmp_path)
    run_id, step = run.info.run_id, run.data.tags["gentrain.heartbeat_step"]
    assert run.info.status == "RUNNING" and int(step) >= 20
    assert json.loads(run.data.tags["gentrain.owner"])["pid"] == driver.pid

    uri = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    listed = gentrain(
        "runs", "reconcile", "dcgan-digits", "--older-than", "1s", "--dry-run", *uri, cwd=tmp_path
    )
    assert listed.returncode == 0 and f"would end run {run_id}" in listed.stdout, listed
    assert only_run(tmp_path).info.status == "RUNNING", "--dry-run changes nothing"
    ended = gentrain("runs", "reconcile", "--older-than", "1s", *uri, cwd=tmp_path)
    assert ended.returncode == 0 and f"ended run {run_id}" in ended.stdout, ended
    run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["gentrain.failure"] == f"heartbeat lost at step {step}"

    resumed = gentrain("run", SPEC, *JOB, *longer, "--resume", run_id, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run = only_run(tmp_path)
    steps = [m.step for m in local_client(tmp_path).get_metric_history(run_id, "loss")]
    assert run.info.status == "FINISHED" and steps == list(range(5, 601, 5))
