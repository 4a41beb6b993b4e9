"""`gentrain plan`: a job's model probed on this machine, every layout estimated per worker, and
the one to pick; through the CLI as a person runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import JOBS, REPO, gentrain, gentrain_in_terminal, local_client, only_run
from gentrain import spec as spec_module
from gentrain.data import open_data
from gentrain.families import get_family
from gentrain.plan import parse_size

FIELDS = {
    "strategy",
    "zero_stage",
    "offload",
    "stages",
    "workers",
    "params_bytes",
    "grads_bytes",
    "optimizer_bytes",
    "activations_bytes",
    "total_bytes",
    "fits",
    "comm_bytes_per_step",
}


def _rows(tmp_path, *args: str) -> dict[tuple[str, int], dict]:
    shown = gentrain("plan", *args, "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    return {(row["name"], row["workers"]): row for row in json.loads(shown.stdout)}


def _parameters(job: str) -> int:
    spec = spec_module.load(JOBS / job)
    family = get_family(spec.model.family)
    config = family.config(flavor=spec.model.flavor, overrides=spec.model.overrides)
    models = family.make_step().build(config, open_data(spec.data).info)
    return sum(p.numel() for model in models.values() for p in model.parameters())


def _state(row: dict) -> int:
    return row["params_bytes"] + row["grads_bytes"] + row["optimizer_bytes"]


def test_every_layout_of_a_gpt_job_is_sized_and_the_cheapest_that_fits_is_picked(tmp_path):
    rows = _rows(tmp_path, str(JOBS / "gpt_python_docs.yaml"), "--workers", "1,2")
    strategies = ("ddp", "fsdp", "zero1", "zero2", "zero3")
    assert set(rows) == {(s, n) for s in strategies for n in (1, 2)} | {("pipeline 2x4", 2)}
    assert all(FIELDS <= set(row) for row in rows.values())
    psi = _parameters("gpt_python_docs.yaml")
    ddp, zero3 = rows["ddp", 2], rows["zero3", 2]
    assert ddp["params_bytes"] == 4 * psi, "the model's exact size, fp32"
    assert _state(ddp) == 16 * psi, "Adam: weights, gradients, two moments"
    assert _state(zero3) == 8 * psi, "ZeRO-3 splits all of it over 2 workers"
    zero2 = rows["zero2", 2]
    assert zero2["grads_bytes"] == 2 * psi and zero2["params_bytes"] == 4 * psi
    assert rows["ddp", 1]["comm_bytes_per_step"] == 0
    assert ddp["comm_bytes_per_step"] == 4 * psi, "a ring all-reduce sends 2(N-1)/N of it"
    assert zero3["comm_bytes_per_step"] == pytest.approx(1.5 * 4 * psi, abs=2)
    pipeline = rows["pipeline 2x4", 2]
    assert pipeline["params_bytes"] == 4 * psi and pipeline["grads_bytes"] < 4 * psi, (
        "every stage keeps the whole model, and trains its part"
    )
    assert ddp["activations_bytes"] < rows["ddp", 1]["activations_bytes"], "half the batch each"
    chosen = [key for key, row in rows.items() if row["recommended"]]
    assert chosen == [("ddp", 1)], "fits, and sends nothing"
    for row in rows.values():
        parts = ("params", "grads", "optimizer", "activations", "transient", "overhead")
        assert row["total_bytes"] == pytest.approx(sum(row[f"{p}_bytes"] for p in parts), abs=6)


def test_gpu_jobs_get_offload_layouts_and_checkpointing_shrinks_activations(tmp_path):
    job = str(JOBS / "gpt_python_docs.yaml")
    gpu = ("--set", "train.use_gpu=true", "--device-memory", "80GB")
    rows = _rows(tmp_path, job, *gpu, "--workers", "1")
    offloaded = rows["zero3 offload optimizer+param", 1]
    assert offloaded["params_bytes"] == 0 and offloaded["optimizer_bytes"] == 0
    assert rows["zero2 offload optimizer", 1]["optimizer_bytes"] == 0
    assert (
        rows["ddp", 1]["total_bytes"]
        == _state(rows["ddp", 1]) + rows["ddp", 1]["activations_bytes"]
    ), "a GPU's memory holds no process baseline"
    checkpointing = ("--set", "train.activation_checkpointing=true")
    checkpointed = _rows(tmp_path, job, *gpu, *checkpointing, "--workers", "1")
    assert checkpointed["ddp", 1]["activations_bytes"] < rows["ddp", 1]["activations_bytes"]
    allowed = {"ddp", "fsdp", "fsdp offload cpu"}
    assert {name for name, _ in checkpointed} == allowed, "where the option applies"


def test_a_job_that_fits_nowhere_is_told_the_smallest_need(tmp_path):
    shown = gentrain("plan", str(JOBS / "vae_digits.yaml"), "--device-memory", "1MiB", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    (line,) = [x for x in shown.stdout.splitlines() if x.startswith("nothing fits")]
    assert "no layout fits in 1.0 MiB per worker (--device-memory): the smallest" in line
    assert " needs " in line and "MiB" in line.split(" needs ")[1]


def test_your_own_family_is_planned(tmp_path):
    shown = gentrain("plan", str(REPO / "examples" / "tiny_vae.yaml"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("tiny_vae:FAMILY small: ") and "recommended: " in shown.stdout


def test_the_table_folds_in_a_terminal_and_keeps_a_row_a_line_in_a_file(tmp_path):
    job = str(JOBS / "dcgan_digits.yaml")
    shown = gentrain_in_terminal("plan", job, cwd=tmp_path, columns=80)
    assert "recommended: ddp on 2 workers" in shown, shown
    table = [line for line in shown.splitlines() if line.startswith(("┃", "│", "┏", "└"))]
    assert table and max(len(line) for line in table) <= 80, shown
    piped = gentrain("plan", job, cwd=tmp_path).stdout
    (zero3,) = [line for line in piped.splitlines() if line.startswith("│ zero3 ")]
    assert zero3.rstrip().endswith("│") and " yes " in zero3, piped


def test_strategy_auto_is_the_plans_pick_shown_by_validate_and_logged_by_the_run(
    new_store, tmp_path
):
    job = str(JOBS / "vae_digits.yaml")
    auto = ("--set", "train.strategy=auto")
    (pick,) = [row for row in _rows(tmp_path, job).values() if row["recommended"]]
    shown = gentrain("validate", job, *auto, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    said = f"train.strategy auto: {pick['name']} on 2 workers: it holds "
    assert shown.stdout.startswith(said), shown.stdout
    assert f"(auto: {pick['strategy']}, 2 workers, " in shown.stdout

    new_store(tmp_path)
    short = [f"--set={key}" for key in ("train.max_steps=4", "train.eval_every=4")]
    short += ["--set=train.checkpoint_every=4", "--set=eval.metrics=[]"]
    ran = gentrain("run", job, *auto, *short, "--set=tracking.system_metrics=false", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert said in ran.stdout
    run = only_run(tmp_path, "vae-digits")
    assert run.info.status == "FINISHED"
    assert run.data.params["train.strategy"] == pick["strategy"], "it trained in the pick"
    assert run.data.tags["gentrain.strategy_auto"].startswith(f"{pick['name']} on 2 workers")
    client = local_client(tmp_path)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "plan")}
    assert logged == {"plan/plan.txt", "plan/plan.json"}
    table = Path(client.download_artifacts(run.info.run_id, "plan/plan.txt", str(tmp_path)))
    assert f"recommended: {pick['name']} on 2 workers" in table.read_text()


def test_strategy_auto_that_fits_nowhere_is_refused_in_one_line(tmp_path):
    job = str(JOBS / "vae_digits.yaml")
    tight = ("--set", "train.strategy=auto", "--set", "train.device_memory=1MiB")
    for command in ("validate", "run"):
        shown = gentrain(command, job, *tight, cwd=tmp_path)
        assert shown.returncode == 2 and len(shown.stderr.splitlines()) == 1, shown.stderr
        assert shown.stderr.startswith(
            "error: train.strategy: auto: no layout fits in 1.0 MiB per worker "
            "(train.device_memory): the smallest, "
        ), shown.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--device-memory", "lots"), "error: --device-memory: a size such as 24GiB"),
        (("--workers", "0,2"), "error: --workers: worker counts of 1 or more"),
    ],
)
def test_bad_options_are_one_line(tmp_path, args, message):
    shown = gentrain("plan", str(JOBS / "vae_digits.yaml"), *args, cwd=tmp_path)
    assert shown.returncode == 2 and shown.stderr.startswith(message), shown.stderr
    assert len(shown.stderr.splitlines()) == 1 and shown.stdout == ""


def test_sizes_read_as_people_write_them():
    assert parse_size("24GiB") == 24 * 2**30
    assert parse_size("80GB") == 80 * 10**9
    assert parse_size("512mib") == 512 * 2**20
    assert parse_size("1.5T") == 1.5 * 10**12
    assert parse_size("1000") == 1000
    for bad in ("", "GiB", "3 apples", "0", "2iB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_the_launcher_imports_no_pipeline_machinery():
    """Ray Train's controller imports gentrain.launch for every run (its failure callback), and
    the launcher imports the plan: torch's pipelining, and with it dynamo, is a second of each
    run's start that only a pipeline layout needs."""
    code = (
        "import sys; import gentrain.launch\n"
        "print(sorted(m for m in ('torch.distributed.pipelining', 'torch._dynamo') "
        "if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.split() == ["[]"]
