"""Runs in a real local MLflow store: what the store cannot take never leaves a run
RUNNING, a spec value longer than MLflow takes as a param does not fail the run, and
`gentrain runs compare` shows runs in a terminal, piped, as CSV and as JSON."""

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from PIL import Image

from conftest import JOBS, gentrain, gentrain_in_terminal
from gentrain import spec as spec_module
from gentrain import tracking
from gentrain.data import open_data
from gentrain.errors import GentrainError
from gentrain.tracking import outbox, source, system
from gentrain.tracking.datasets import dataset_inputs
from gentrain.tracking.logger import text_rows

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


def _git(directory, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    done = subprocess.run(["git", *identity, *args], cwd=directory, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_run_names_its_checkout_and_opens_in_the_training_view(new_store, tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "jobs").mkdir(parents=True)
    shutil.copy(JOBS / "vae_digits.yaml", checkout / "jobs" / "vae.yaml")
    _git(checkout, "init", "-q", "-b", "main")
    _git(checkout, "remote", "add", "origin", "https://user:secret@git.example.com/team/models")
    _git(checkout, "add", ".")
    _git(checkout, "commit", "-qm", "a job")
    commit = _git(checkout, "rev-parse", "HEAD")
    monkeypatch.chdir(checkout)
    monkeypatch.delenv(source.SOURCE_ENV, raising=False)
    assert source.describe("jobs/vae.yaml") == {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": "jobs/vae.yaml",
        "mlflow.source.git.commit": commit,
        "mlflow.source.git.dirty": "false",
        "mlflow.source.git.branch": "main",
        "mlflow.source.git.repoURL": "https://git.example.com/team/models",  # no password
    }
    (checkout / "jobs" / "vae.yaml").write_text("changed: not committed\n")
    submitted = source.describe(Path("jobs/vae.yaml"), kind="JOB")
    dirty, kind = submitted["mlflow.source.git.dirty"], submitted["mlflow.source.type"]
    assert (dirty, kind) == ("true", "JOB")

    store = new_store(tmp_path)
    monkeypatch.setenv(source.SOURCE_ENV, json.dumps(submitted))  # as a submitted job has it
    spec = spec_module.load(JOBS / "vae_digits.yaml")
    run = mlflow.MlflowClient(store).get_run(tracking.start_run(spec, uri=store))
    assert {k: run.data.tags[k] for k in submitted} == submitted
    experiment = mlflow.MlflowClient(store).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    monkeypatch.chdir(tmp_path)  # outside a checkout: no git tags
    monkeypatch.delenv(source.SOURCE_ENV)
    assert set(source.of_spec(None)) == {"mlflow.source.type", "mlflow.source.name"}


def _two_runs(uri: str) -> list[str]:
    """Two runs of one experiment whose params differ (one value long), with a loss each."""
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("compared")
    ids = []
    for lr, note, loss in ((0.1, "short", 0.5), (0.01, "a-long-value-" * 8, 0.25)):
        run = client.create_run(experiment, run_name=f"lr-{lr}")
        client.log_param(run.info.run_id, "optim.lr", lr)
        client.log_param(run.info.run_id, "note", note)
        client.log_metric(run.info.run_id, "loss", loss)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return ids


def test_runs_compare_as_a_table_csv_or_json_unwrapped_when_piped(new_store, tmp_path):
    uri = new_store(tmp_path)
    first, second = _two_runs(uri)
    base = ["runs", "compare", "compared", "--tracking-uri", uri]

    piped = gentrain(*base, cwd=tmp_path)  # into a pipe, as `> file` does
    assert piped.returncode == 0, piped.stderr
    rows = [line for line in piped.stdout.splitlines() if first[:8] in line or second[:8] in line]
    assert len(rows) == 2 and "a-long-value-" * 8 in rows[0], "a run's row is one whole line"
    assert second[:8] in rows[0], "best (lowest loss) first"

    shown = gentrain_in_terminal(*base, cwd=tmp_path, columns=60)
    assert first[:8] in shown and max(len(line) for line in shown.splitlines()) <= 60, shown
    assert "a-long-value-" * 8 not in shown.replace("\n", ""), "in a terminal cells fold"

    csv_out = gentrain(*base, "--format", "csv", cwd=tmp_path).stdout
    assert csv_out.splitlines()[0] == "run_id,name,status,note,optim.lr,loss"
    assert csv_out.splitlines()[1].startswith(f"{second},lr-0.01,FINISHED,")

    parsed = json.loads(gentrain(*base, "--format", "json", cwd=tmp_path).stdout)
    assert (parsed["metric"], parsed["mode"], parsed["params"]) == (
        "loss",
        "min",
        ["note", "optim.lr"],
    )
    assert [row["run_id"] for row in parsed["rows"]] == [second, first]
    assert parsed["rows"][0]["loss"] == 0.25

    bad = gentrain(*base, "--format", "xml", cwd=tmp_path)
    assert bad.returncode == 2 and "'xml' is not one of 'table', 'csv', 'json'" in bad.stderr


def test_preview_texts_become_a_table_of_prompts_generations_and_references():
    texts = [
        "[prompt]\nonce upon\n[reference]\na time\n[model]\na mouse\nran",
        "[sample]\nfree text",
        "[original]\nthe cat\n[masked]\nthe ▯\n[filled]\nthe dog\n[note]\nown label",
    ]
    assert text_rows(texts, step=5) == {
        "prompt": ["once upon", "(free sample 1)", "the ▯"],
        "generation": ["a mouse\nran", "free text", "the dog"],
        "reference": ["a time", "", "the cat"],
        "step": [5, 5, 5],
        "sample": [0, 1, 2],
        "note": ["", "", "own label"],
    }


def _inputs(client, run_id: str) -> dict[str, tuple]:
    """name -> (digest, context, profile, schema) of the run's dataset inputs."""
    found = {}
    for item in client.get_run(run_id).inputs.dataset_inputs:
        context = {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]
        dataset = item.dataset
        found[dataset.name] = (dataset.digest, context, json.loads(dataset.profile), dataset)
    return found


def test_a_runs_data_are_mlflow_dataset_inputs_whose_digest_follows_the_data(new_store, tmp_path):
    uri = new_store(tmp_path)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("datasets")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(30):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(images / f"{i}.png")

    def logged(source: str) -> dict[str, tuple]:
        run_id = client.create_run(experiment).info.run_id
        box = outbox.Outbox(tmp_path / "box", uri=uri, run_id=run_id, warn=print)
        box.put({"datasets": dataset_inputs(open_data(source), source)})
        assert box.close(timeout=60)
        return _inputs(client, run_id)

    digits = logged("builtin:digits")
    assert set(digits) == {"digits", "digits-heldout"}
    assert (digits["digits"][1], digits["digits-heldout"][1]) == ("train", "eval")
    train, heldout = (digits[name][2]["examples"] for name in ("digits", "digits-heldout"))
    stream = open_data("builtin:digits").stream
    assert (train, heldout) == (len(stream.everything()), len(stream.heldout(limit=10**6)))
    schema = json.loads(digits["digits"][3].schema)
    assert "[-1, 1, 8, 8]" in json.dumps(schema).replace("(", "[").replace(")", "]")
    assert logged("builtin:digits")["digits"][0] == digits["digits"][0], "same data, same digest"

    first = logged(f"images:{images}")
    assert json.loads(first["images"][3].source) == {"uri": str(images)}
    assert first["images"][3].source_type == "local" and first["images"][2]["files"] == 30
    Image.new("RGB", (8, 8), "blue").save(images / "new.png")
    assert logged(f"images:{images}")["images"][0] != first["images"][0], "new data, new digest"


def test_each_node_of_a_job_on_several_logs_its_own_system_metrics(new_store, tmp_path):
    uri = new_store(tmp_path)
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("nodes")).info.run_id
    monitors = [
        system.start(uri=uri, run_id=run_id, node_rank=rank, nodes_apart=True, every_s=0.5)
        for rank in (0, 1)
    ]
    time.sleep(2)
    for monitor in monitors:
        system.stop(monitor)
    run = client.get_run(run_id)
    for rank in (0, 1):
        assert f"system/node_{rank}/cpu_utilization_percentage" in run.data.metrics
        assert run.data.tags[f"gentrain.node_{rank}"] == socket.gethostname()
