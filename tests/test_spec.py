"""Strict validation: each problem is one line naming the field, exit 2, nothing started."""

import pytest

from conftest import JOBS, gentrain
from gentrain import spec as spec_module
from gentrain.errors import SpecError

SHIPPED = sorted(JOBS.glob("**/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_job_validates(path):
    job = spec_module.load(path)
    assert job.name and job.model.family
    assert spec_module.JobSpec.model_validate(job.to_dict()) == job  # what workers receive


def test_a_deepspeed_spec_survives_the_trip_to_the_workers(tmp_path):
    job = spec_module.load(
        _write(tmp_path, DEEPSPEED),
        ["train.deepspeed.zero_stage=3", "train.deepspeed.config={zero_optimization: {a: 1}}"],
    )
    assert job.train.deepspeed.zero_stage == 3
    assert spec_module.JobSpec.model_validate(job.to_dict()) == job


def _write(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


MINIMAL = "name: t\nmodel: {family: gan, flavor: debug}\n"
DEEPSPEED = MINIMAL + "train: {strategy: deepspeed}\n"
PIPELINE = MINIMAL + "train: {strategy: pipeline}\n"
SWEEP = MINIMAL + "sweep: {metric: fid, space: {optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}}\n"


def test_defaults_fill_a_minimal_spec_and_overrides_apply(tmp_path):
    job = spec_module.load(
        _write(tmp_path, MINIMAL),
        ["optim.lr=3e-4", "train.workers=4", "model.overrides.latent_dim=16"],
    )
    assert job.optim.lr == 3e-4 and job.train.workers == 4
    assert job.model.overrides == {"latent_dim": 16}
    assert job.experiment == "t"
    assert spec_module.flatten(job.to_dict())["optim.lr"] == 3e-4


def test_eval_metrics_default_to_the_familys_and_an_empty_list_turns_them_off(tmp_path):
    job = spec_module.load(_write(tmp_path, MINIMAL))
    assert job.eval_metrics == ("fid", "is") and job.image_features == "classifier:digits"
    off = spec_module.load(_write(tmp_path, MINIMAL), ["eval.metrics=[]"])
    assert off.eval_metrics == () and off.image_features is None
    own = spec_module.load(
        _write(tmp_path, MINIMAL), ["eval.metrics=[is]", "eval.features=inception"]
    )
    assert own.eval_metrics == ("is",) and own.image_features == "inception"


@pytest.mark.parametrize(
    ("family", "source"), [("gpt", "builtin:python_docs"), ("vae", "builtin:digits")]
)
def test_a_spec_without_a_data_source_takes_its_familys(tmp_path, family, source):
    text = f"name: t\nmodel: {{family: {family}, flavor: debug}}\ndata: {{batch_size: 8}}\n"
    assert spec_module.load(_write(tmp_path, text)).data.source == source
    bare = f"name: t\nmodel: {{family: {family}, flavor: debug}}\n"
    assert spec_module.load(_write(tmp_path, bare)).data.source == source


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
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
            "model.family: unknown family 'vq'; allowed: bert, diffusion, flow, gan, gpt, vae",
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
        (MINIMAL, ["train.strategy=fsdp"], "train.strategy"),
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
            "data.batch_size: 64 must be a multiple of train.workers x gradient_accumulation_steps "
            "(6)",
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
        (MINIMAL, ["name=has space"], "name"),
        ("model: {family: gan}\n", [], "name: Field required"),
        ("- a\n- b\n", [], "a job spec is a YAML mapping"),
        ("name: [unclosed\n", [], "invalid YAML (line"),
        ("name: !!python/object/apply:os.system [echo hi]\n", [], "invalid YAML"),
        (MINIMAL, ["optim.lr"], "expected KEY=VALUE"),
        (MINIMAL, ["name.x=1"], "'name' is not a section"),
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_field(tmp_path, text, overrides, expected):
    with pytest.raises(SpecError) as caught:
        spec_module.load(_write(tmp_path, text), overrides)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "job.yaml")) or message.startswith("--set")


def test_a_sweep_spec_validates_every_value_its_space_can_give(tmp_path):
    job = spec_module.load(
        _write(tmp_path, SWEEP),
        [
            "sweep.search=grid",
            "sweep.scheduler=asha",
            "sweep.asha={grace_period: 2}",
            "sweep.space={optim.lr: {grid: [0.1, 0.01]}, model.overrides.latent_dim: {grid: [8]}}",
        ],
    )
    assert job.sweep.search == "grid" and job.sweep.asha.grace_period == 2
    assert spec_module.JobSpec.model_validate(job.to_dict()) == job  # what trials receive
    with pytest.raises(SpecError, match="latent_dim: 'wide' makes an invalid job"):
        spec_module.load(
            _write(tmp_path, SWEEP),
            ["sweep.space={model.overrides.latent_dim: {choice: [8, wide]}}"],
        )


def test_missing_directory_and_binary_spec_files(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        spec_module.load(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not a file"):
        spec_module.load(tmp_path)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(SpecError, match="not a text file"):
        spec_module.load(binary)


def test_cli_validate_exit_codes_and_starts_nothing(tmp_path):
    good = gentrain("validate", str(JOBS / "dcgan_digits.yaml"), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "valid gan job" in good.stdout
    bad = gentrain(
        "validate", str(JOBS / "dcgan_digits.yaml"), "--set", "train.workers=0", cwd=tmp_path
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "train.workers" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_run_with_an_invalid_spec_starts_nothing(tmp_path):
    result = gentrain("run", str(JOBS / "dcgan_digits.yaml"), "--set", "optim.lr=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {JOBS / 'dcgan_digits.yaml'}: optim.lr: Input should be greater than 0 (got -1)"
    ]
    assert list(tmp_path.iterdir()) == [], "no MLflow store, no checkpoints: nothing started"


def test_cli_ls_lists_families_flavors_and_strategies(tmp_path):
    result = gentrain("ls", cwd=tmp_path)
    assert result.returncode == 0
    for word in ("gan", "gpt", "debug", "small", "base", "ddp", "classifier:digits"):
        assert word in result.stdout
    for word in ("builtin:python_docs", "images:DIR", "parquet:PATH", "text:FILE", "s3://"):
        assert word in result.stdout
    assert "grid, random, bayesian" in result.stdout and "none, asha, pbt" in result.stdout
