"""A password in a URI never leaves gentrain: MLflow params and spec.yaml hold it masked, and
errors that name the store mask it. (test_run.py plants secrets in a whole run's environment and
searches everything that run writes.)"""

import mlflow
import yaml

from conftest import JOBS, gentrain
from gentrain import spec as spec_module
from gentrain import tracking
from gentrain.errors import first_line, traceback_of
from gentrain.redact import redact

PLANTED = "planted-secret-0451"
URI = f"http://gentrain:{PLANTED}@127.0.0.1:9"  # port 9 (discard): nothing answers there


def test_redact_masks_the_password_of_any_uri():
    assert redact(f"postgresql://mlflow:{PLANTED}@db:5432/mlflow") == (
        "postgresql://mlflow:***@db:5432/mlflow"
    )
    assert redact(f"see {URI}/x and s3://bucket/key") == (
        "see http://gentrain:***@127.0.0.1:9/x and s3://bucket/key"
    )
    assert redact("http://127.0.0.1:5000 user@example.com") == (
        "http://127.0.0.1:5000 user@example.com"
    )


def test_an_errors_line_and_traceback_mask_the_password_of_the_url_it_names():
    try:
        raise RuntimeError(f"API request to {URI}/api/2.0/mlflow/runs/get failed")
    except RuntimeError as err:
        assert "gentrain:***@127.0.0.1:9/api" in first_line(err)
        assert PLANTED not in first_line(err) + traceback_of(err)


def test_params_and_spec_yaml_hold_the_tracking_uri_masked(tmp_path):
    spec = spec_module.load(JOBS / "vae_digits.yaml", [f"tracking.uri={URI}"])
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(spec, uri=store)
    client = mlflow.MlflowClient(store)
    params = client.get_run(run_id).data.params
    assert params["tracking.uri"] == "http://gentrain:***@127.0.0.1:9"
    assert all(PLANTED not in value for value in params.values())
    shown = yaml.safe_load(open(client.download_artifacts(run_id, "spec.yaml", str(tmp_path))))
    assert shown["tracking"]["uri"] == "http://gentrain:***@127.0.0.1:9"


def test_an_error_naming_the_store_masks_its_password(tmp_path):
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    result = gentrain(
        "run", str(JOBS / "vae_digits.yaml"), "--set", f"tracking.uri={URI}", cwd=tmp_path, env=fast
    )
    assert result.returncode == 1
    assert "gentrain:***@127.0.0.1:9" in result.stderr
    assert PLANTED not in result.stdout + result.stderr
