"""A loss that becomes NaN or Inf (a learning rate of 1e30 makes one at step 2): with
train.on_nan: stop the run ends FAILED saying at which step; with skip_step those optimizer steps
are skipped and the run finishes with finite weights."""

import math

import mlflow
import pytest
import ray
import torch

from conftest import JOBS
from gentrain import launch
from gentrain import spec as spec_module
from gentrain.errors import GentrainError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    yield  # launch.run starts the embedded Ray once; both tests use it
    ray.shutdown()


def _job(tmp_path, on_nan: str):
    return spec_module.load(
        JOBS / "vae_digits.yaml",
        [
            "model.flavor=debug",
            "optim.lr=1e30",
            "train.max_steps=6",
            "train.log_every=2",
            "train.eval_every=6",
            "train.max_failures=0",
            f"train.on_nan={on_nan}",
            "eval.metrics=[]",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"storage.path={tmp_path / 'checkpoints'}",
        ],
    )


def _only_run(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vae-digits").experiment_id])
    return client, run


def test_a_nan_loss_stops_the_run_failed_with_its_step(new_store, tmp_path):
    new_store(tmp_path)
    with pytest.raises(GentrainError, match=r"the loss became (nan|inf) at step 2"):
        launch.run(_job(tmp_path, "stop"))
    _, run = _only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert "at step 2 (train.on_nan: stop)" in run.data.tags["gentrain.failure"]


def test_skip_step_skips_non_finite_steps_and_finishes(new_store, tmp_path):
    new_store(tmp_path)
    result = launch.run(_job(tmp_path, "skip_step"))
    client, run = _only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["skipped_steps"] == 5  # all but the first
    mlflow.set_tracking_uri(result.tracking_uri)
    model = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model", map_location="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(client.get_metric_history(run.info.run_id, "loss")[0].value)
