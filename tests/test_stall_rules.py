"""The stall rules on their own: the limits train.stall_timeout sets, and what a real py-spy dump
of a stopped process says about where it was stuck."""

import os
import signal
import subprocess
import sys
import time

import pytest

from gentrain import cluster, stall
from gentrain.cluster import WorkerProcess

LOOP = """
import threading

def spin():
    while True:
        sum(range(1000))

def train():
    spin()

threading.Thread(target=train, name="TrainingThread").start()
"""
MAIN = "import time, gentrain.trainer\nwhile True: time.sleep(1)"  # as Ray's: elsewhere


def test_limits_follow_the_setting():
    assert stall.step_limit("off") is None and stall.collective_limit("off") is None
    assert stall.step_limit(12.0) == 12.0
    assert stall.collective_limit(10.0) == 40.0, "at least 30 s past the step limit"
    assert stall.collective_limit(600.0) == 900.0, "half the step limit past it"
    assert stall.step_limit("auto", slowest_step=0.5) == stall.AUTO_FLOOR
    assert stall.step_limit("auto", slowest_step=40.0) == 400.0
    assert stall.collective_limit("auto", slowest_step=40.0) == 600.0


def test_the_pulse_sends_progress_and_beats_alone_only_while_rank_0_works():
    sent = []
    pulse = stall.Pulse(pid=7, every=0.02)
    pulse.start(sent.append)
    time.sleep(0.2)
    assert sent == [], "nothing before the first progress"
    pulse.beat(3, slowest_step=0.5)
    time.sleep(0.2)
    assert sent == [stall.Beat(7, step=3, count=1, slowest_step=0.5)], "the latest, once"
    with pulse.working():
        time.sleep(0.2)
    during = len(sent)
    assert during > 3 and {b.step for b in sent} == {3}, "beats while working, at its step"
    time.sleep(0.2)
    assert len(sent) <= during + 1, "silent again once the work is done"
    pulse.finished()
    time.sleep(0.2)
    assert len(sent) > during + 3, "beats from the end of training on"


def test_the_first_progress_is_sent_at_once():
    """A worker that hangs within a second of its first step is still watched: its first
    beat does not wait for the pulse's next round."""
    sent = []
    pulse = stall.Pulse(pid=7, every=30.0)
    pulse.start(sent.append)
    pulse.beat(1, slowest_step=0.1)
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent == [stall.Beat(7, step=1, count=1, slowest_step=0.1)]


@pytest.fixture
def stopped_trainer(tmp_path):
    """A process whose training thread spins in gentrain/trainer.py, stopped with SIGSTOP."""
    (tmp_path / "gentrain").mkdir()
    (tmp_path / "gentrain" / "__init__.py").write_text("")
    (tmp_path / "gentrain" / "trainer.py").write_text(LOOP)
    process = subprocess.Popen([sys.executable, "-c", MAIN], cwd=tmp_path)
    time.sleep(1.5)
    os.kill(process.pid, signal.SIGSTOP)
    yield process
    process.kill()
    process.wait()


def test_a_stopped_rank_is_named_with_the_frame_of_its_training_thread(stopped_trainer):
    import ray

    ray.init(num_cpus=1, include_dashboard=False)
    try:
        node = ray.get_runtime_context().get_node_id()
        worker = WorkerProcess(rank=1, node_id=node, pid=stopped_trainer.pid)
        (found,) = cluster.inspect_workers([worker], stacks=True)
    finally:
        ray.shutdown()
    assert found["alive"] and found["stopped"]
    stack = stall.RankStack(rank=1, pid=worker.pid, stopped=True, text=found["text"])
    assert stack.frames()[0].startswith("spin (gentrain/trainer.py:"), found["text"]
    waiting = stall.RankStack(
        rank=0,
        pid=2,
        stopped=False,
        text='Thread 2 (idle): "TrainingThread"\n'
        "    all_reduce (torch/distributed/distributed_c10d.py:2950)\n"
        "    _mean_over_workers (gentrain/trainer.py:440)\n",
    )
    line = stall.explain(30, 12.4, [waiting, stack])
    assert line == (
        "stalled after step 30: no progress for 12 s; rank 1 (process stopped) in spin "
        f"({stack.frames()[0].split('(')[1]}; rank 0 waits in all_reduce "
        "(torch/distributed/distributed_c10d.py:2950), called from _mean_over_workers "
        "(gentrain/trainer.py:440)"
    )


COLLECTIVE_TIMEOUTS = """
import torch, torch.distributed as dist
from gentrain.collectives import set_collective_timeout

def timeout(group):
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds()

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
before = dist.new_group([0])
set_collective_timeout(450.0)
after = dist.new_group([0])
print(timeout(dist.distributed_c10d._get_default_group()), timeout(before), timeout(after))
"""


def test_the_collective_timeout_reaches_every_group_now_and_later():
    """What a worker sets from train.stall_timeout (and raises under auto as steps slow)."""
    done = subprocess.run(
        [sys.executable, "-c", COLLECTIVE_TIMEOUTS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["450.0", "450.0", "450.0"], "torch's default is 1800"


def test_a_stall_the_busy_store_missed_is_recorded_once_the_stalled_workers_are_gone(
    new_store, tmp_path
):
    """A worker stopped mid-write holds the SQLite store's lock: the driver records the stall's
    stacks and tag when new workers progress (or once it has killed the stalled ones)."""
    import sqlite3
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from gentrain import launch

    uri = new_store(tmp_path)
    client = MlflowClient(uri)
    artifacts = (tmp_path / "artifacts").as_uri()
    run_id = client.create_run(
        client.create_experiment("x", artifact_location=artifacts)
    ).info.run_id
    warnings = []
    spec = SimpleNamespace(train=SimpleNamespace(stall_timeout=10, workers=1))
    watchdog = launch._watchdog(
        spec,
        None,
        run_id=run_id,
        uri=uri,
        relay=SimpleNamespace(warn=warnings.append),
        heartbeat=None,
    )
    stack = stall.RankStack(rank=0, pid=123, stopped=True, text="Process 123: python\n")
    found = stall.Stall(7, 12.0, [stack], "stalled after step 7: no progress for 12 s")

    held = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    held.execute("BEGIN EXCLUSIVE")  # as a worker stopped mid-write holds it
    watchdog.on_stall(found)
    held.execute("ROLLBACK")
    assert warnings == [
        f"{found.message}; stacks in MLflow stall/step_7/; its workers will be restarted"
    ]
    assert "gentrain.stall" not in client.get_run(run_id).data.tags

    watchdog.on_step(21)  # new workers progressed: the stopped one is gone
    assert client.get_run(run_id).data.tags["gentrain.stall"] == found.message
    assert [a.path for a in client.list_artifacts(run_id, "stall/step_7")] == [
        "stall/step_7/rank_0.txt"
    ]
    assert len(warnings) == 1


def test_a_kill_that_failed_is_tried_again_until_the_stalled_worker_is_gone():
    """Ray too busy to run the kill (its call times out): the watchdog tries again, once the
    worker is seen still alive, and no more once it is gone."""
    import psutil

    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    os.kill(stopped.pid, signal.SIGSTOP)
    worker = WorkerProcess(rank=0, node_id="this node", pid=stopped.pid)
    kills = []

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def kill(workers: list) -> None:
        kills.append(time.monotonic())
        if len(kills) == 1:
            raise TimeoutError("Ray did not run the kill in time")
        for w in workers:
            os.kill(w.pid, signal.SIGKILL)

    looks = []

    def inspect(workers: list, stacks: bool) -> list[dict]:
        looks.append(stacks)
        return [{"alive": alive(w.pid), "stopped": True, "text": ""} for w in workers]

    stalls = []
    watchdog = stall.Watchdog(
        0.2,
        world=1,
        poll=lambda: ([worker], stall.Beat(stopped.pid, step=3, count=1, slowest_step=0.01)),
        inspect=inspect,
        kill=kill,
        on_stall=stalls.append,
        on_step=lambda step: None,
        interval=0.05,
        kill_again=0.5,
    )
    watchdog.start()
    try:
        stopped.wait(timeout=30)
        time.sleep(1.5)  # rounds in which the dead worker is still listed
    finally:
        watchdog.stop()
        stopped.kill()
    assert [s.step for s in stalls] == [3]
    assert len(kills) == 2 and kills[1] - kills[0] >= 0.5, kills
    # the dump, then a look before the second kill and at most one each 0.5 s after it
    assert looks[0] is True and 2 <= looks.count(False) <= 5, looks
    assert stopped.returncode == -signal.SIGKILL
