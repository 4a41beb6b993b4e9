"""Checkpoints are loaded only whole: a worker killed while saving leaves the previous checkpoint
in use, and a damaged checkpoint in storage gives way to the newest whole one before it."""

import json
from pathlib import Path

import mlflow
import pytest
import ray
import torch

from conftest import JOBS
from gentrain import checkpoints, cluster, launch
from gentrain import spec as spec_module

TESTS = Path(__file__).parent


def test_a_sealed_checkpoint_is_whole_until_a_file_changes(tmp_path):
    for rank in (0, 1):
        part = tmp_path / f"rank{rank}"
        part.mkdir()
        torch.save({"w": torch.arange(10)}, part / f"weights{rank}.pt")
        if rank == 0:
            (part / checkpoints.STATE).write_text(json.dumps({"step": 5, "world": 2}))
        checkpoints.seal(part, rank=rank)
    merged = tmp_path / "merged"  # what Ray Train makes of the ranks' parts
    merged.mkdir()
    for part in (tmp_path / "rank0", tmp_path / "rank1"):
        for path in part.iterdir():
            path.rename(merged / path.name)
    assert checkpoints.problem(merged) is None
    torch.save({"w": torch.arange(9)}, merged / "weights1.pt")
    assert "weights1.pt is not the file that was saved" in checkpoints.problem(merged)
    (merged / "weights1.pt").unlink()
    assert checkpoints.problem(merged) == "weights1.pt is missing"
    (merged / "manifest_rank1.json").unlink()
    assert checkpoints.problem(merged) == "rank 1's manifest is missing or unreadable"


def _job(workdir: Path, steps: int):
    return spec_module.load(
        JOBS / "vae_digits.yaml",
        [
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
            f"storage.path={workdir / 'checkpoints'}",
            "model.flavor=debug",
            "data.batch_size=16",
            "train.workers=2",
            f"train.max_steps={steps}",
            "train.log_every=1",
            f"train.eval_every={steps}",
            "train.checkpoint_every=10",
            "train.max_failures=1",
            "eval.num_samples=32",
        ],
    )


@pytest.fixture(scope="module")
def killed_while_saving(tmp_path_factory, monkeypatch_module, new_store):
    """A 30-step job whose rank 1 is killed while saving the checkpoint of step 20."""
    workdir = tmp_path_factory.mktemp("killed-while-saving")
    new_store(workdir)
    for name, value in cluster.EMBEDDED_RAY_TRAIN_SETTINGS.items():
        monkeypatch_module.setenv(name, value)
    # Ray Train's controller collects reports when it polls the workers. Polling every 5 s, it
    # has most often not collected step 10's checkpoint yet when rank 1 dies at step 20: the
    # restarted workers must find that checkpoint themselves.
    monkeypatch_module.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "5")
    marker = workdir / "killed"
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": str(TESTS), "GENTRAIN_FAULT_MARKER": str(marker)},
            "worker_process_setup_hook": "faults.die_sealing_second_checkpoint",
        },
    )
    try:
        result = launch.run(_job(workdir, 30))
        yield workdir, result
    finally:
        ray.shutdown()
    assert marker.exists(), "the fault was injected"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _run(workdir: Path, run_id: str):
    return mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id)


def _loss_steps(workdir: Path, run_id: str) -> list[int]:
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def test_a_worker_killed_while_saving_leaves_the_previous_checkpoint_in_use(killed_while_saving):
    workdir, result = killed_while_saving
    assert (workdir / "killed").exists(), "rank 1 was killed while saving"
    run = _run(workdir, result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gentrain.resumed_from_step"] == "10", "step 20's checkpoint was torn"
    assert _loss_steps(workdir, result.run_id) == list(range(1, 31)), "each step once"


def test_a_damaged_checkpoint_gives_way_to_the_one_before(killed_while_saving):
    workdir, result = killed_while_saving
    run_dir = workdir / "checkpoints" / result.run_id
    committed = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    latest = committed[-1]
    assert json.loads((latest / checkpoints.STATE).read_text())["step"] == 30
    with (latest / "schedules.pt").open("r+b") as damaged:
        damaged.truncate(100)
    resumed = launch.run(_job(workdir, 40), resume_run_id=result.run_id)
    run = _run(workdir, resumed.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gentrain.resumed_from_step"] == "20"
    assert (
        "schedules.pt is not the file that was saved"
        in run.data.tags["gentrain.checkpoints_skipped"]
    )
    assert _loss_steps(workdir, result.run_id) == list(range(1, 41)), "each step once"
