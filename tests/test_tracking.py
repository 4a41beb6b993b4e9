"""A run's start in a real local MLflow store: what the store cannot take never leaves a run
RUNNING, and a spec value longer than MLflow takes as a param does not fail the run."""

import mlflow
import pytest
import yaml

from conftest import JOBS
from gentrain import spec as spec_module
from gentrain import tracking
from gentrain.errors import GentrainError

LONG = "x" * 7000  # MLflow takes params of at most 6000 characters


def test_a_param_longer_than_mlflow_takes_is_cut_and_spec_yaml_keeps_it(new_store, tmp_path):
    store = new_store(tmp_path)
    sets = ["train.strategy=deepspeed", f"train.deepspeed.config={{comment: {LONG}}}"]
    spec = spec_module.load(JOBS / "vae_digits.yaml", sets)
    run_id = tracking.start_run(spec, uri=store)
    client = mlflow.MlflowClient(store)
    param = client.get_run(run_id).data.params["train.deepspeed.config.comment"]
    assert len(param) == 6000 and param.endswith("...")
    shown = yaml.safe_load(open(client.download_artifacts(run_id, "spec.yaml", str(tmp_path))))
    assert shown["train"]["deepspeed"]["config"]["comment"] == LONG


def test_a_store_that_refuses_the_spec_ends_the_run_failed(new_store, tmp_path):
    store = new_store(tmp_path)
    (tmp_path / "a-file").write_text("artifacts cannot go under a file")
    spec = spec_module.load(JOBS / "vae_digits.yaml")
    client = mlflow.MlflowClient(store)
    client.create_experiment(spec.experiment, artifact_location=str(tmp_path / "a-file" / "x"))
    with pytest.raises(GentrainError, match=r"^run \w+ failed: the tracking store did not take"):
        tracking.start_run(spec, uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name(spec.experiment).experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["gentrain.failure"].startswith("the tracking store did not take the spec")
