"""One `gentrain run` per family on its shipped job, debug flavor, a few steps: metrics, samples and
model all land in MLflow. (The GAN is covered in depth by test_run.py.)"""

import math
import os
import subprocess
import sys
from collections import defaultdict

import mlflow
import pytest

from conftest import JOBS, gentrain
from gentrain import spec as spec_module
from gentrain.data import load_dataset
from gentrain.families import all_families

pytestmark = pytest.mark.slow


def _job_per_family() -> dict[str, str]:
    jobs = defaultdict(list)
    for path in sorted(JOBS.glob("*.yaml")):
        jobs[spec_module.load(path).model.family].append(path)
    return {family: str(paths[0]) for family, paths in jobs.items()}


JOB_PER_FAMILY = _job_per_family()
FAMILIES = sorted(set(all_families()) - {"gan"})


def test_every_family_ships_a_job():
    assert set(JOB_PER_FAMILY) == set(all_families())


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_end_to_end(family, tmp_path):
    path = JOB_PER_FAMILY[family]
    overrides = [
        "model.flavor=debug",
        "train.max_steps=12",
        "train.log_every=4",
        "train.eval_every=12",
        "train.checkpoint_every=12",
        "eval.num_samples=64",
        "data.batch_size=16",
    ]
    job = spec_module.load(path, overrides)
    result = gentrain("run", path, *[a for o in overrides for a in ("--set", o)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(job.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [4, 8, 12]
    for metric in job.eval_metrics:
        value = run.data.metrics[metric]
        assert math.isfinite(value), metric
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    suffix = "png" if all_families()[family].modality == "image" else "txt"
    assert samples == {f"samples/step_12.{suffix}"}
    assert run.data.tags["gentrain.family"] == family
    models = client.search_logged_models([experiment.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]
    shape = _sample_shape_in_a_fresh_process(run.info.run_id, cwd=tmp_path)
    assert shape == (2, *load_dataset(job.data).info.shape)


def _sample_shape_in_a_fresh_process(run_id: str, *, cwd) -> tuple[int, ...]:
    code = (
        "import mlflow; "
        f"print(tuple(mlflow.pytorch.load_model('runs:/{run_id}/model').sample(2).shape))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return tuple(int(n) for n in result.stdout.strip().splitlines()[-1].strip("()").split(",") if n)
