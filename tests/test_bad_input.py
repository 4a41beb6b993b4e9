"""The bad-input corpus: every case goes through `gentrain run` (or `sweep`) and ends with exit 2
and one line on stderr naming the field or file and what is allowed, with no traceback and nothing
started: no Ray, no MLflow store or run, no checkpoint."""

from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from gentrain.cli import app
from test_spec import DEEPSPEED, MINIMAL, PIPELINE, SWEEP

GPT = "name: t\nmodel: {family: gpt, flavor: debug}\n"
IMAGES = MINIMAL + "data: {source: 'images:pictures', image_size: 8}\n"
TEXT = GPT + "data: {source: 'text:corpus.txt'}\n"

SPEC_CASES = [
    (MINIMAL + "extra: 1\n", [], "extra: unknown key"),
    (MINIMAL, ["train.wrkers=2"], "train.wrkers: unknown key; allowed: strategy, workers"),
    (MINIMAL, ["train.workers=two"], "train.workers"),
    (MINIMAL, ["train.workers=0"], "train.workers: Input should be greater than or equal to 1"),
    (MINIMAL, ["optim.lr=0"], "optim.lr: Input should be greater than 0"),
    (MINIMAL, ["optim.name=adamax"], "optim.name"),
    (MINIMAL, ["data.batch_size=0"], "data.batch_size"),
    (
        MINIMAL,
        ["data.batch_size=63"],
        "data.batch_size: 63 must be a multiple of train.workers",
    ),
    (MINIMAL, ["data.source=builtin:cifar"], "data.source"),
    (MINIMAL, ["data.augment=[rotate]"], "data.augment.0"),
    (
        MINIMAL,
        ["model.family=vq"],
        "model.family: unknown family 'vq'; allowed: bert, diffusion, flow, gan, gpt, "
        "hf_causal_lm, hf_masked_lm, hf_unet2d, vae, or package.module:NAME",
    ),
    (MINIMAL, ["model.flavor=huge"], "model.flavor: 'huge' is not a gan flavor"),
    (MINIMAL, ["model.overrides.depth=3"], "model.overrides.depth: unknown gan setting"),
    (MINIMAL, ["model.overrides.latent_dim=big"], "model.overrides.latent_dim: expected int"),
    (
        MINIMAL,
        ["eval.metrics=[perplexity]"],
        "eval.metrics: 'perplexity' does not fit family gan",
    ),
    (MINIMAL, ["eval.features=vgg"], "eval.features: must be one of"),
    (
        MINIMAL,
        ["model.init_from=/no/such/ckpt"],
        "model.init_from: /no/such/ckpt does not exist",
    ),
    (MINIMAL, ["train.precision=bf16"], "needs train.use_gpu"),
    (MINIMAL, ["train.strategy=horovod"], "train.strategy"),
    (
        DEEPSPEED,
        ["train.deepspeed.zero_stage=4"],
        "train.deepspeed.zero_stage: Input should be less than or equal to 3",
    ),
    (
        DEEPSPEED,
        ["train.deepspeed.offload_param=cpu"],
        "train.deepspeed: offload_param cpu needs zero_stage 3 (got 2)",
    ),
    (
        DEEPSPEED,
        ["train.deepspeed.zero_stage=0", "train.deepspeed.offload_optimizer=cpu"],
        "offload_optimizer cpu needs zero_stage 1-3",
    ),
    (
        DEEPSPEED,
        ["train.deepspeed.zero_stage=3", "train.deepspeed.offload_param=nvme"],
        "train.deepspeed: nvme offload needs nvme_path",
    ),
    (
        DEEPSPEED,
        ["train.deepspeed.offload_optimizer=disk"],
        "train.deepspeed.offload_optimizer",
    ),
    (
        DEEPSPEED,
        ["train.deepspeed.gradient_accumulation_steps=3"],
        "data.batch_size: 64 must be a multiple of train.workers x gradient_accumulation_steps (6)",
    ),
    (MINIMAL, ["train.deepspeed.zero_stage=3"], "deepspeed is set but strategy is ddp"),
    (
        PIPELINE,
        ["train.pipeline.stages=4"],
        "train: pipeline.stages 4 must divide train.workers 2",
    ),
    (
        PIPELINE,
        ["train.workers=3"],
        "train: pipeline.stages 2 must divide train.workers 3",
    ),
    (PIPELINE, ["train.pipeline.stages=1"], "train.pipeline.stages: Input should be greater"),
    (
        PIPELINE,
        ["train.pipeline.schedule=1f1b", "train.pipeline.microbatches=1"],
        "schedule 1f1b needs microbatches >= stages (1 < 2)",
    ),
    (PIPELINE, ["train.pipeline.schedule=zb"], "train.pipeline.schedule"),
    (
        PIPELINE,
        ["train.workers=4", "train.pipeline.microbatches=3"],
        "data.batch_size: 64 must be a multiple of replicas (workers / stages) x "
        "pipeline.microbatches (6)",
    ),
    (MINIMAL, ["train.pipeline.stages=4"], "pipeline is set but strategy is ddp"),
    (MINIMAL, ["train.fsdp.reshard_after_forward=false"], "fsdp is set but strategy is ddp"),
    (
        MINIMAL,
        ["train.strategy=fsdp", "train.fsdp.offload=cpu"],
        "fsdp.offload cpu needs train.use_gpu: true",
    ),
    (
        MINIMAL,
        ["train.strategy=fsdp", "train.use_gpu=true", "train.precision=fp16"],
        "fsdp trains in fp32 or bf16, not fp16",
    ),
    (MINIMAL, ["train.strategy=fsdp", "train.fsdp.offload=nvme"], "train.fsdp.offload"),
    (SWEEP, ["sweep.metric=perplexity"], "sweep.metric: 'perplexity' is not reported"),
    (SWEEP, ["sweep.search=hyperband"], "sweep.search"),
    (SWEEP, ["sweep.scheduler=median"], "sweep.scheduler"),
    (SWEEP, ["sweep.space={}"], "sweep.space: name at least one dotted spec key"),
    (
        SWEEP,
        ["sweep.space={optim.lrr: {uniform: [0.1, 0.2]}}"],
        "sweep.space.optim.lrr: 0.1 makes an invalid job: optim.lrr: unknown key",
    ),
    (
        SWEEP,
        ["sweep.space={model.overrides.width: {choice: [8, 16]}}"],
        "model.overrides.width: unknown gan setting",
    ),
    (
        SWEEP,
        ["sweep.space={optim.lr: {uniform: [0.2, 0.1]}}"],
        "sweep.space: optim.lr: uniform needs low < high (got [0.2, 0.1])",
    ),
    (
        SWEEP,
        ["sweep.space={optim.lr: {loguniform: [0, 0.1]}}"],
        "loguniform needs 0 < low",
    ),
    (
        SWEEP,
        ["sweep.space={train.workers: {int: [1, 2.5]}}"],
        "int takes [low, high] (integers)",
    ),
    (SWEEP, ["sweep.space={optim.lr: {grid: []}}"], "grid takes a non-empty list"),
    (SWEEP, ["sweep.space={optim.lr: {beta: [1, 2]}}"], "optim.lr: must be one of {uniform"),
    (
        SWEEP,
        ["sweep.space={optim.lr: {uniform: [-1, 0.1]}}"],
        "sweep.space.optim.lr: -1 makes an invalid job: optim.lr: Input should be greater",
    ),
    (
        SWEEP,
        ["sweep.search=grid"],
        "space.optim.lr: search grid takes {grid: [...]} only (got loguniform)",
    ),
    (
        SWEEP,
        ["sweep.search=bayesian", "sweep.space={optim.lr: {grid: [0.1, 0.2]}}"],
        "search bayesian cannot take a grid; use choice",
    ),
    (SWEEP, ["sweep.asha={grace_period: 2}"], "sweep: asha is set but scheduler is none"),
    (SWEEP, ["sweep.trials=0"], "sweep.trials: Input should be greater than or equal to 1"),
    (SWEEP, ["sweep.concurrency=0"], "sweep.concurrency: a number of trials at once (1 or more)"),
    (SWEEP, ["sweep.concurrency=many"], "or auto (got 'many')"),
    (SWEEP, ["sweep.budget_steps=0"], "sweep.budget_steps: Input should be greater than or equal"),
    (SWEEP, ["sweep.tpe={multivariate: true}"], "sweep: tpe is set but search is not bayesian"),
    (SWEEP, ["sweep.warm_start=no-such-sweep"], "sweep.warm_start: no sweep's parent run and no"),
    (MINIMAL, ["name=has space"], "name"),
    ("model: {family: gan}\n", [], "name: Field required"),
    ("- a\n- b\n", [], "a job spec is a YAML mapping"),
    ("name: [unclosed\n", [], "invalid YAML (line"),
    ("name: !!python/object/apply:os.system [echo hi]\n", [], "invalid YAML"),
    (MINIMAL, ["optim.lr"], "expected KEY=VALUE"),
    (MINIMAL, ["name.x=1"], "'name' is not a section"),
    # unknown keys at every level
    (MINIMAL, ["model.colour=red"], "model.colour: unknown key"),
    (MINIMAL, ["data.colour=red"], "data.colour: unknown key"),
    (MINIMAL, ["eval.colour=red"], "eval.colour: unknown key"),
    (MINIMAL, ["tracking.colour=red"], "tracking.colour: unknown key"),
    (MINIMAL, ["storage.colour=red"], "storage.colour: unknown key"),
    (DEEPSPEED, ["train.deepspeed.stage=2"], "train.deepspeed.stage: unknown key"),
    (SWEEP, ["sweep.colour=red"], "sweep.colour: unknown key"),
    # numbers out of range, wrong types
    (MINIMAL, ["train.max_steps=-5"], "train.max_steps"),
    (MINIMAL, ["optim.lr=fast"], "optim.lr"),
    (GPT, ["eval.metrics=[fid]"], "eval.metrics: 'fid' does not fit family gpt"),
    (SWEEP, ["sweep.metric=bleu"], "sweep.metric: 'bleu' is not reported"),
    (SWEEP, ["sweep.mode=lowest"], "sweep.mode"),
    # YAML that is no spec
    ("", [], "a job spec is a YAML mapping"),
    ("name: !!python/name:os.system\n", [], "invalid YAML"),
    ("name: t\nname: u\n", [], "invalid YAML (line 2): key 'name' is given twice"),
    ("name: t\n[a, b]: 1\n", [], "invalid YAML (line 2): found unhashable key"),
    # --set syntax
    (MINIMAL, ["=1"], "--set"),
    (MINIMAL, ["train..workers=2"], "--set"),
    # data that does not exist or cannot be read
    (MINIMAL, ["data.source=images:/no/such/dir"], "data.source: /no/such/dir does not exist"),
    (IMAGES, [], "not a readable image"),
    (TEXT, [], "corpus.txt: too little data: 0 training windows"),
    # every field that names a place: only the forms gentrain supports (places.py)
    (
        MINIMAL,
        ["data.source=parquet:gs://b/x.parquet"],
        "data.source: gs:// is not supported; use a local path or s3://BUCKET/KEY",
    ),
    (MINIMAL, ["data.source=images:s3://"], "data.source: expected s3://BUCKET/KEY"),
    (MINIMAL, ["data.source=images:s3://Big_Bucket/x"], "data.source: expected s3://BUCKET/KEY"),
    (MINIMAL, ["data.source=images:job.yaml"], "data.source: job.yaml is not a directory"),
    (GPT, ["data.source=text:pictures"], "pictures: no .txt/.md/.jsonl files found"),
    (
        MINIMAL,
        ["storage.path=gs://bucket/checkpoints"],
        "storage.path: gs:// is not supported; use a local directory or s3://BUCKET/PREFIX",
    ),
    (MINIMAL, ["storage.path=s3://"], "storage.path: expected s3://BUCKET/PREFIX"),
    (MINIMAL, ["storage.path=job.yaml"], "storage.path: a file, not a directory"),
    (MINIMAL, ["tracking.uri=foo://x"], "tracking.uri: foo:// is not supported; use http(s)://"),
    (MINIMAL, ["tracking.uri=file:///tmp/mlruns"], "tracking.uri: file:// is not supported"),
    (
        MINIMAL,
        ["tracking.uri=mlruns"],
        "tracking.uri: a local store is a SQLite file ending in .db",
    ),
    (MINIMAL, ["tracking.uri=http://"], "tracking.uri: no host; use http://HOST"),
    (
        MINIMAL,
        ["tracking.uri=sqlite:///"],
        "tracking.uri: no path; a local store is sqlite:///PATH",
    ),
    (MINIMAL, ["tracking.register_as=team/gan"], "tracking.register_as: a registered model's name"),
    (
        MINIMAL,
        ["model.init_from=s3://bucket/checkpoint_000001"],
        "model.init_from: s3:// is not supported; expected runs:/RUN_ID/model, models:/",
    ),
    (MINIMAL, ["model.init_from=runs:/abc"], "model.init_from: an MLflow run's model is runs:/"),
    (MINIMAL, ["model.init_from=models:/"], "model.init_from: a registered model is models:/"),
    (
        DEEPSPEED,
        [
            "train.deepspeed.zero_stage=3",
            "train.deepspeed.offload_param=nvme",
            "train.deepspeed.nvme_path=swap",
        ],
        "train.deepspeed.nvme_path: give an absolute local directory on the workers' machines",
    ),
    (
        MINIMAL,
        ["eval.metrics=[fid,similarity]"],
        "eval.metrics: 'similarity' does not fit family gan; allowed: fid, is",
    ),
    (
        GPT,
        ["eval.metrics=[similarity]", "eval.dataset=missing.jsonl"],
        "eval.dataset: missing.jsonl does not exist",
    ),
    (
        GPT,
        ["eval.dataset=corpus.txt"],
        "eval.dataset: corpus.txt: a question file must be .jsonl, .csv, .parquet, .pq",
    ),
    (
        GPT,
        ["eval.metrics=[relevance,similarity]", "eval.dataset=questions.csv"],
        "eval.metrics: similarity needs the column 'ground_truth' of eval.dataset",
    ),
    (
        GPT,
        ["eval.metrics=[relevance]", "eval.dataset=answers.jsonl"],
        "answers.jsonl has no column 'question' (it has answer)",
    ),
    (
        GPT,
        ["eval.metrics=[relevance]", "eval.dataset=broken.parquet"],
        "broken.parquet cannot be read",
    ),
    (GPT, ["eval.decoding.top_p=0"], "eval.decoding.top_p: Input should be greater than 0"),
    (
        GPT,
        ["eval.judge=openai:/gpt-4o-mini"],
        "eval.judge: serves the text-quality metrics, which eval.metrics does not name; offered: "
        "similarity, relevance, coherence, fluency, groundedness, mauve",
    ),
    (
        MINIMAL,
        ["eval.dataset=questions.csv"],
        "eval.dataset: serves the text-quality metrics, which eval.metrics does not name; "
        "offered: none for family gan",
    ),
    (
        GPT,
        ["eval.metrics=[fluency]", "eval.judge=gpt-4o"],
        "eval.judge: Malformed model uri 'gpt-4o'. The URI must be in the format of "
        "<provider>:/<model-name>",
    ),
    (
        GPT,
        ["model.family=bert", "eval.metrics=[similarity]", "eval.dataset=questions.csv"],
        "eval.dataset: bert fills masked spans of held-out text, it answers no questions; a "
        "question file is for gpt, hf_causal_lm",
    ),
]


def _write_data(workdir: Path) -> None:
    pictures = workdir / "pictures"
    pictures.mkdir()
    (pictures / "a.png").write_text("not a picture")
    (pictures / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (workdir / "corpus.txt").write_text("   \n\n")
    (workdir / "questions.csv").write_text("question,context\nWhat is a list?,A list is ...\n")
    (workdir / "answers.jsonl").write_text('{"answer": "a list"}\n')
    (workdir / "broken.parquet").write_bytes(b"PAR1 not parquet")


@pytest.mark.parametrize(("text", "overrides", "expected"), SPEC_CASES)
def test_bad_specs_are_one_line_errors_and_start_nothing(
    tmp_path, monkeypatch, text, overrides, expected
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _write_data(tmp_path)
    (tmp_path / "job.yaml").write_text(text)
    before = set(tmp_path.rglob("*"))
    command = "sweep" if "sweep" in text else "run"
    args = [command, "job.yaml"] + [arg for item in overrides for arg in ("--set", item)]
    result = CliRunner().invoke(app, args)
    _assert_rejected(result, expected)
    assert set(tmp_path.rglob("*")) == before, "no MLflow store, no checkpoints"


def _assert_rejected(result, expected: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.yaml", "no such file"),
        (lambda d: d, "not a file"),
        (
            lambda d: (d / "b.yaml").write_bytes(b"\xff\xfe\x00\x81") and d / "b.yaml",
            "not a text file",
        ),
    ],
    ids=["missing", "directory", "binary"],
)
def test_spec_files_that_are_no_spec(tmp_path, monkeypatch, make, expected):
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    _assert_rejected(CliRunner().invoke(app, ["run", str(path)]), expected)


@pytest.mark.parametrize(
    ("command", "run_id", "expected"),
    [
        ("run", "../../elsewhere", "--resume: '../../elsewhere' is not an MLflow run id"),
        ("run", "/tmp/abs", "--resume: '/tmp/abs' is not an MLflow run id"),
        ("submit", "../up", "--resume: '../up' is not an MLflow run id"),
        ("run", "0123456789abcdef0123456789abcdef", "--resume: no MLflow run"),
    ],
)
def test_resume_names_an_existing_run_never_a_path(
    tmp_path, monkeypatch, command, run_id, expected
):
    """A run id names its checkpoint directory under storage.path: no way out of it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "job.yaml").write_text(MINIMAL)
    args = [command, "job.yaml", "--resume", run_id]
    result = CliRunner().invoke(
        app, args + (["--address", "http://127.0.0.1:9"] if command == "submit" else [])
    )
    _assert_rejected(result, expected)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("./mlruns", "MLFLOW_TRACKING_URI: a local store is a SQLite file ending in .db"),
        ("gs://bucket/mlflow", "MLFLOW_TRACKING_URI: gs:// is not supported"),
    ],
)
def test_a_tracking_uri_from_the_environment_is_checked_like_the_specs(
    tmp_path, monkeypatch, uri, expected
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "job.yaml").write_text(MINIMAL)
    _assert_rejected(CliRunner().invoke(app, ["run", "job.yaml"]), expected)
    assert not (tmp_path / "mlruns").exists()


def test_validate_reads_the_local_data_as_run_does(tmp_path, monkeypatch):
    """What `validate` accepts, `run` does not refuse for a reason a check could have seen."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _write_data(tmp_path)
    (tmp_path / "job.yaml").write_text(IMAGES)
    _assert_rejected(CliRunner().invoke(app, ["validate", "job.yaml"]), "not a readable image")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "./mlruns")
    (tmp_path / "job.yaml").write_text(MINIMAL)
    _assert_rejected(CliRunner().invoke(app, ["validate", "job.yaml"]), "MLFLOW_TRACKING_URI")
