"""storage.path on S3: a missing bucket or refused credentials stop a job before anything starts
(no Ray, no MLflow run), each with one line naming storage.path."""

from pathlib import Path

import mlflow
import yaml

from conftest import gentrain


def _spec(workdir: Path, storage: str) -> Path:
    spec = {
        "name": "s3-storage",
        "model": {"family": "vae", "flavor": "debug"},
        "data": {"source": "builtin:digits", "batch_size": 16},
        "train": {"workers": 1, "max_steps": 5},
        "eval": {"metrics": []},
        "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
        "storage": {"path": storage},
    }
    (workdir / "job.yaml").write_text(yaml.safe_dump(spec))
    return workdir / "job.yaml"


def _nothing_started(workdir: Path, stderr: str) -> None:
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    if (workdir / "mlflow.db").exists():
        client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "Started a local Ray instance" not in stderr


def test_a_missing_bucket_is_bad_input(s3_server, tmp_path):
    _spec(tmp_path, "s3://no-such-bucket/runs")
    result = gentrain("run", "job.yaml", cwd=tmp_path, env=s3_server.env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: storage.path: bucket 'no-such-bucket' does not exist")
    _nothing_started(tmp_path, result.stderr)


def test_refused_credentials_are_a_plain_error(s3_server, strict_s3, tmp_path):
    _spec(tmp_path, "s3://checkpoints/runs")
    env = {**s3_server.env, "AWS_ENDPOINT_URL": strict_s3, "AWS_SECRET_ACCESS_KEY": "planted-key"}
    result = gentrain("run", "job.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: storage.path: S3 at")
    assert "refused access to bucket 'checkpoints'" in result.stderr
    assert "planted-key" not in result.stderr + result.stdout
    _nothing_started(tmp_path, result.stderr)
