"""Strict validation: each problem is one line naming the field, exit 2, nothing started."""

import subprocess
import sys

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


def test_text_quality_is_asked_for_by_name_and_a_sweep_may_optimise_it(tmp_path):
    gpt = "name: t\nmodel: {family: gpt, flavor: debug}\n"
    assert spec_module.load(_write(tmp_path, gpt)).text_metrics == ()
    asked = ["eval.metrics=[perplexity,similarity,mauve]"]
    job = spec_module.load(_write(tmp_path, gpt), asked)
    assert job.text_metrics == ("similarity", "mauve")
    for metric in ("similarity", "similarity_raw", "mauve"):
        sweep = f"sweep: {{metric: {metric}, mode: max, space: {{optim.lr: {{choice: [0.1]}}}}}}\n"
        assert spec_module.load(_write(tmp_path, gpt + sweep), asked).sweep.metric == metric
    with pytest.raises(SpecError, match="sweep.metric: 'relevance' is not reported"):
        spec_module.load(_write(tmp_path, gpt + sweep.replace("mauve", "relevance")), asked)


@pytest.mark.parametrize(
    ("family", "source"), [("gpt", "builtin:python_docs"), ("vae", "builtin:digits")]
)
def test_a_spec_without_a_data_source_takes_its_familys(tmp_path, family, source):
    text = f"name: t\nmodel: {{family: {family}, flavor: debug}}\ndata: {{batch_size: 8}}\n"
    assert spec_module.load(_write(tmp_path, text)).data.source == source
    bare = f"name: t\nmodel: {{family: {family}, flavor: debug}}\n"
    assert spec_module.load(_write(tmp_path, bare)).data.source == source


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


def test_every_job_validates_without_importing_torch():
    """Validation (every family's flavors, overrides and metrics) stays fast: torch, Ray and
    MLflow take seconds to import, and bad input is refused before any of them. The Hugging Face
    families' configs are checked by transformers itself, which imports torch: their jobs
    validate without Ray or MLflow."""
    code = (
        "import sys; from pathlib import Path; from gentrain import spec\n"
        f"paths = sorted(Path({str(JOBS)!r}).rglob('*.yaml'))\n"
        "for path in paths: spec.load(path) if not path.name.startswith('hf_') else None\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
        "for path in paths: spec.load(path)\n"
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.split() == ["[]", "[]"]


def test_cli_ls_lists_families_flavors_and_strategies(tmp_path):
    result = gentrain("ls", cwd=tmp_path)
    assert result.returncode == 0
    for word in ("gan", "gpt", "debug", "small", "base", "ddp", "classifier:digits"):
        assert word in result.stdout
    assert (
        "text quality:    gpt, hf_causal_lm: similarity, relevance, coherence, fluency, "
        "groundedness, mauve"
    ) in result.stdout
    assert "text quality:    bert, hf_masked_lm: similarity, fluency" in result.stdout
    for word in (
        "builtin:python_docs",
        "images:DIR",
        "parquet:PATH",
        "text:PATH",
        "prepared:DIR",
        "s3://",
    ):
        assert word in result.stdout
    assert "grid, random, bayesian" in result.stdout and "none, asha, pbt" in result.stdout
