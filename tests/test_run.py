"""A real job end to end: `gentrain run` on an embedded local Ray with 2 DDP workers (gloo), tracked
in a local MLflow store, checkpointed under storage.path; failure and resume under SIGKILL."""

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import browse, needs_browser, ui_server
from conftest import (
    GENTRAIN,
    JOBS,
    gentrain,
    local_client,
    logged_through,
    only_run,
    sample_grids,
    train_workers_of,
    wait_for,
)

pytestmark = pytest.mark.slow

SPEC = str(JOBS / "dcgan_digits.yaml")
# Every run of this module trains this job (the `finished` run's losses are what a run killed
# midway must reproduce): checkpoints at steps 20, 40 and 60, evaluations at 30 and 60.
SMALL_JOB = [
    "--set",
    "model.flavor=debug",
    "--set",
    "train.max_steps=60",
    "--set",
    "train.log_every=5",
    "--set",
    "train.eval_every=30",
    "--set",
    "train.checkpoint_every=20",
    "--set",
    "eval.num_samples=200",
]


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def _losses(client, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, "loss")}


PLANTED = "planted-secret-0451"  # in the environment of the `finished` run: it must leak nowhere
SECRETS = {
    "AWS_ACCESS_KEY_ID": f"id-{PLANTED}",
    "AWS_SECRET_ACCESS_KEY": PLANTED,
    "MLFLOW_TRACKING_PASSWORD": PLANTED,
    "RAY_REDIS_PASSWORD": PLANTED,
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = gentrain(
        "run",
        SPEC,
        *SMALL_JOB,
        "--set",
        "tracking.register_as=digits-gan",
        "--set",
        "tracking.system_metrics_every=1",
        cwd=workdir,
        env=SECRETS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir, result, only_run(workdir)


def test_no_planted_secret_reaches_what_the_run_wrote(finished):
    workdir, result, run = finished
    assert PLANTED not in result.stdout + result.stderr
    for value in [*run.data.params.values(), *run.data.tags.values()]:
        assert PLANTED not in value
    written = [path for path in workdir.rglob("*") if path.is_file()]
    assert any(p.name == "spec.yaml" for p in written), "artifacts are under the workdir"
    assert any(p.name == "state.json" for p in written), "checkpoints are under the workdir"
    assert [p for p in written if PLANTED.encode() in p.read_bytes()] == []


def test_the_run_names_its_data_and_the_commit_of_its_spec(finished):
    workdir, _, run = finished
    inputs = local_client(workdir).get_run(run.info.run_id).inputs.dataset_inputs
    contexts = {i.dataset.name: {t.key: t.value for t in i.tags} for i in inputs}
    assert contexts == {
        "digits": {"mlflow.data.context": "train"},
        "digits-heldout": {"mlflow.data.context": "eval"},
    }
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=JOBS, capture_output=True, text=True)
    tags = run.data.tags  # the spec lies in this repository's checkout
    assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert tags["mlflow.source.name"] == f"jobs/{Path(SPEC).name}"
    assert tags["mlflow.source.type"] == "LOCAL"


def test_the_node_logs_what_the_machine_was_doing(finished):
    workdir, _, run = finished
    system = [name for name in run.data.metrics if name.startswith("system/")]
    shown = {name.removeprefix("system/") for name in system}  # one node: no node in the names
    wanted = {
        "cpu_utilization_percentage",
        "system_memory_usage_megabytes",
        "disk_usage_percentage",
    }
    assert wanted <= shown and any(name.startswith("network_") for name in shown), shown
    assert run.data.tags["gentrain.node_0"] == socket.gethostname(), "its first worker's node"
    cpu = local_client(workdir).get_metric_history(
        run.info.run_id, "system/cpu_utilization_percentage"
    )
    assert len(cpu) >= 2, "sampled every second through the run"


def test_each_checkpoint_is_a_logged_model_with_its_steps_metrics(finished):
    workdir, _, run = finished
    client = local_client(workdir)
    models = {m.name: m for m in client.search_logged_models([run.info.experiment_id])}
    assert set(models) == {
        "checkpoint-step-20",
        "checkpoint-step-40",
        "checkpoint-step-60",
        "model",
    }
    at_60 = {m.key: m for m in models["checkpoint-step-60"].metrics}
    assert {"loss", "fid", "is"} <= set(at_60) and {m.step for m in at_60.values()} == {60}
    assert at_60["fid"].value == run.data.metrics["fid"], "the run's own value at that step"
    assert models["checkpoint-step-20"].tags["gentrain.checkpoints"].endswith(run.info.run_id)
    final = {m.key: m.value for m in models["model"].metrics}  # what the registry shows
    assert final["fid"] == run.data.metrics["fid"]
    fids = client.get_metric_history(run.info.run_id, "fid")
    assert sorted(m.step for m in fids) == [30, 60], "the run's history has each value once"


@needs_browser
def test_the_run_page_shows_its_data_source_machine_and_samples_in_a_browser(finished):
    workdir, _, run = finished
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    commit = run.data.tags["mlflow.source.git.commit"]
    with ui_server(workdir) as address:
        page = browse(f"{address}/#/experiments/{experiment_id}/runs/{run_id}")
        image = '<img class="rc-image-img" src="'
        charts = browse(
            f"{address}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics", holding=image
        )
    assert "Model training" in page.text, "the experiment opens as a training one"
    source = re.search(r"Source dcgan_digits\.yaml (\S+ )?(\w+) ", page.text)  # (branch) commit
    assert source and source[2] == commit[:7], page.text[page.text.find("About this run") :][:600]
    assert "Datasets digits (" in page.text
    assert "System metrics" in page.text and "system/cpu_utilization_percentage" in page.text
    # the "samples" card shows the grid: MLflow 3.17 links the artifact, 3.18 fetches it into a blob
    assert " samples " in charts.text
    shown = re.search(image + r"(get-artifact\?path=images%2Fsamples%2Bstep%2B|blob:)", charts.html)
    assert shown, "the sample grid"


def test_cli_shows_driver_progress_and_ends_with_the_run_id(finished):
    _, result, run = finished
    assert f"done: MLflow run {run.info.run_id}" in result.stdout
    assert "gentrain ui" in result.stdout
    assert "step 60/60" in result.stdout and "samples/s" in result.stdout and "eta" in result.stdout
    assert "RayTrainWorker" not in result.stdout + result.stderr, "no per-worker log wall"


def test_run_holds_flattened_params_and_tags(finished):
    _, _, run = finished
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.family"] == "gan" and params["model.flavor"] == "debug"
    assert params["optim.lr"] == "0.0005" and params["train.workers"] == "2"
    assert params["train.max_steps"] == "60" and params["data.source"] == "builtin:digits"
    tags = run.data.tags
    assert tags["gentrain.family"] == "gan" and tags["gentrain.strategy"] == "ddp"
    assert tags["gentrain.workers"] == "2" and len(tags["gentrain.spec_sha256"]) == 64


def test_metrics_are_logged_by_optimizer_step(finished):
    workdir, _, run = finished
    client = local_client(workdir)
    run_id = run.info.run_id
    for key in ("loss", "loss_g", "loss_d", "samples_per_sec"):
        assert _steps(client, run_id, key) == list(range(5, 61, 5)), key
    for key in ("fid", "is"):
        assert _steps(client, run_id, key) == [30, 60], key
    assert run.data.metrics["fid"] > 0 and run.data.metrics["is"] >= 1
    loss = _losses(client, run_id)
    assert loss[60] == pytest.approx(run.data.metrics["loss_g"] + run.data.metrics["loss_d"])


def test_artifacts_hold_spec_samples_and_model(finished):
    workdir, _, run = finished
    client = local_client(workdir)
    run_id = run.info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert "spec.yaml" in top
    grids = sample_grids(client, run_id)  # MLflow images: the chart view's step slider
    assert list(grids) == [0, 30, 60], "the untrained model's, then each evaluation's"
    local = client.download_artifacts(run_id, grids[60], str(workdir / "dl"))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_final_model_samples_images_in_a_fresh_process(finished):
    workdir, _, run = finished
    code = (
        "import mlflow, torch; "
        f"m = mlflow.pytorch.load_model('runs:/{run.info.run_id}/model'); "
        "x = m.sample(6); print(tuple(x.shape), float(x.min()), float(x.max()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shape, low, high = (
        result.stdout.strip().splitlines()[-1].rsplit(" ", 2)[0],
        *map(float, result.stdout.split()[-2:]),
    )
    assert shape == "(6, 1, 8, 8)" and -1 <= low < high <= 1


def test_model_is_registered_under_tracking_register_as(finished):
    workdir, _, run = finished
    versions = local_client(workdir).search_model_versions("name = 'digits-gan'")
    assert [v.run_id for v in versions] == [run.info.run_id]


def test_every_worker_reports_into_a_checkpoint_under_storage_path(finished):
    workdir, _, run = finished
    run_dir = workdir / ".gentrain" / "checkpoints" / run.info.run_id
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2  # the last two of three
    last = checkpoints[-1]
    state = json.loads((last / "state.json").read_text())
    data = state.pop("data")
    layout = {"strategy": "ddp", "workers": 2}
    assert state == {"step": 60, "mlflow_run_id": run.info.run_id, "world": 2, "layout": layout}
    positions = data["positions"]  # where each of the data's 16 partitions stands, both ranks'
    assert len(positions) == 16 and all(set(p) == {"epoch", "block", "offset"} for p in positions)
    assert all(p != {"epoch": 0, "block": 0, "offset": 0} for p in positions), "all went on"
    assert data["fingerprint"]["files"] == {"builtin:digits": [0, 1797]}
    parts = {"dcp", "schedules.pt", "rng_rank0.pt", "rng_rank1.pt", "manifest_rank0.json"}
    assert parts | {"manifest_rank1.json"} <= {p.name for p in last.iterdir()}


def test_a_failing_job_ends_failed_with_its_reason_and_traceback(new_store, tmp_path):
    new_store(tmp_path)
    # Only the workers find out, once they read it, that one image of the folder is damaged:
    # the driver reads metadata and the first image only.
    images = tmp_path / "images"
    images.mkdir()
    for i in range(80):
        pixels = np.full((8, 8), i, dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (images / f"{i:02d}.png").write_bytes(buffer.getvalue()[: 30 if i == 40 else None])
    failing = [
        "run",
        SPEC,
        *SMALL_JOB,
        "--set",
        f"data.source=images:{images}",
        "--set",
        "data.channels=1",
        "--set",
        "data.batch_size=16",
        "--set",
        "eval.metrics=[]",
        "--set",
        "train.max_failures=0",
        "--set",
        "train.workers=1",  # the error is any worker's: one is enough
    ]
    result = gentrain(*failing, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "40.png: not a readable image" in error_lines[0], (
        result.stderr[-2000:]
    )
    assert "gentrain.errors" not in error_lines[0]
    assert error_lines[0].endswith("(gentrain --debug shows the traceback)")
    run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert "40.png: not a readable image" in run.data.tags["gentrain.failure"]
    # the whole traceback, the worker's own frames included, is the run's error.txt
    client = local_client(tmp_path)
    error_file = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    error = Path(error_file).read_text()
    assert error.startswith("Traceback") and "40.png: not a readable image" in error
    assert "[Rank 0 Error Snippet]" in error and "gentrain/trainer.py" in error, "the worker's"

    debug = gentrain("--debug", *failing, cwd=tmp_path)
    assert debug.returncode == 1
    assert debug.stderr.count("Traceback (most recent call last)") >= 1
    assert "[Rank 0 Error Snippet]" in debug.stderr
    last = debug.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: run ")
        and "40.png: not a readable image" in last
        and "--debug" not in last
    )


def test_missing_inception_weights_stop_the_job_before_anything_starts(tmp_path):
    result = gentrain(
        "run",
        SPEC,
        *SMALL_JOB,
        "--set",
        "eval.features=inception",
        cwd=tmp_path,
        env={"GENTRAIN_INCEPTION_WEIGHTS": str(tmp_path / "missing.pth")},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "missing.pth" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists(), "no MLflow run was opened"


# The runs killed midway are compared with `finished` by their losses alone: without FID and IS
# they skip importing torchmetrics at each (re)start. Evaluation draws on random streams of its
# own, so the losses are the same.
UNSCORED = ["--set", "eval.metrics=[]"]


def _start_driver(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*GENTRAIN, "run", SPEC, *SMALL_JOB, *UNSCORED, *args],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": ""},
    )


def _assert_same_history_as(finished, workdir: Path, run_id: str) -> None:
    """The run's losses are the uninterrupted `finished` run's, each step logged once."""
    client = local_client(workdir)
    assert _steps(client, run_id, "loss") == list(range(5, 61, 5)), "each step once, none missing"
    reference_dir, _, reference = finished
    expected = _losses(local_client(reference_dir), reference.info.run_id)
    actual = _losses(client, run_id)
    for step in expected:
        assert actual[step] == pytest.approx(expected[step], rel=1e-5), step


def test_resume_after_the_driver_is_killed_continues_the_same_run(new_store, tmp_path, finished):
    new_store(tmp_path)
    driver = _start_driver(tmp_path)
    workers = []
    try:
        # past step 30's evaluation, most often before step 40's checkpoint: the resumed run
        # replays from step 20, and logs step 30's samples no second time
        wait_for(lambda: logged_through(tmp_path) >= 35, 300, "step 35, past an evaluation", 0.05)
        workers = train_workers_of(driver.pid)
        for worker in workers:  # no step more: a fast run cannot end before its driver dies
            os.kill(worker, signal.SIGSTOP)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
        for worker in workers:  # stopped, they would not see their Ray go
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
    run = only_run(tmp_path)
    run_id = run.info.run_id
    assert run.info.status == "RUNNING", "the driver was killed before the end"

    resumed = gentrain("run", SPEC, *SMALL_JOB, *UNSCORED, "--resume", run_id, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run = only_run(tmp_path)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    _assert_same_history_as(finished, tmp_path, run_id)
    grids = [a.path for a in local_client(tmp_path).list_artifacts(run_id, "images")]
    steps = sorted(int(p.split("+")[2]) for p in grids if p.endswith(".png"))
    assert steps == [0, 30, 60], "each evaluation's samples once"


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(new_store, tmp_path, finished):
    new_store(tmp_path)
    no_system_metrics = ["tracking.system_metrics=false", "tracking.system_metrics_every=1"]
    driver = _start_driver(tmp_path, *(x for s in no_system_metrics for x in ("--set", s)))
    try:
        wait_for(lambda: logged_through(tmp_path) >= 25, 300, "step 25, past a checkpoint", 0.2)
        workers = train_workers_of(driver.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        _, stderr = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, stderr
    run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert not [name for name in run.data.metrics if name.startswith("system/")], "turned off"
    _assert_same_history_as(finished, tmp_path, run.info.run_id)
