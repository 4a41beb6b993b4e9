"""Families from the user's own code (`model.family: package.module:NAME`) and from installed
packages (entry points `gentrain.families`): refused in one line when they are not what gentrain
needs, listed, checked by `gentrain check`, and trained like a built-in family by `gentrain run`
and `gentrain sweep` (README's example, examples/tiny_vae.py)."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import ray
from typer.testing import CliRunner

from conftest import REPO, gentrain
from gentrain.cli import app

EXAMPLES = REPO / "examples"
SPEC = "name: mine\nmodel: {family: FAMILY, flavor: small}\ntrain: {workers: 1}\n"
GOOD_STEP = """
import torch
from dataclasses import dataclass
from gentrain.families import FamilySpec

@dataclass(frozen=True)
class Config:
    width: int = 4

class Step:
    phases = ("net",)
    def build(self, config, data):
        return {"net": torch.nn.Linear(64, 64)}
    def loss(self, models, batch, *, phase):
        LOSS
    def sample(self, models, n):
        SAMPLE
"""
GOOD_LOSS = "return ((models['net'](batch.flatten(1)) - batch.flatten(1)) ** 2).mean(), {}"
GOOD_SAMPLE = "return torch.tanh(models['net'](torch.randn(n, 64))).view(n, 1, 8, 8)"


def _family_module(loss: str = GOOD_LOSS, sample: str = GOOD_SAMPLE, extra: str = "") -> str:
    code = textwrap.dedent(GOOD_STEP).replace("LOSS", loss).replace("SAMPLE", sample)
    return (
        code
        + extra
        + (
            "\nFAMILY = FamilySpec(name='mine', modality='image', config_cls=Config, "
            "flavors={'small': {'width': 4}}, step=Step)\n"
        )
    )


MODULES = {
    "mymod.py": _family_module(extra="\nclass Thing:\n    pass\n"),
    "broken.py": "x = 1\ndef f(:\n",
    "raising.py": "raise RuntimeError('boom at import')\n",
    "calls.py": "from pathlib import Path\n\ndef FAMILY():\n    Path('called').write_text('x')\n",
    "noloss.py": _family_module().replace("def loss(", "def lossy("),
    "badflavor.py": _family_module().replace("{'width': 4}", "{'wdith': 4}"),
}
CASES = [
    ("os:system", "model.family: os:system is a function, not a FamilySpec"),
    ("calls:FAMILY", "model.family: calls:FAMILY is a function, not a FamilySpec"),
    ("gentrain:families", "model.family: gentrain:families is a module, not a FamilySpec"),
    ("mymod:Thing", "model.family: mymod:Thing is a class, not a FamilySpec"),
    ("mymod:NOPE", "model.family: module mymod ("),
    ("nosuch:FAMILY", "model.family: no module nosuch in the spec's directory"),
    (
        "broken:FAMILY",
        "model.family: importing broken failed: SyntaxError: invalid syntax (broken.py, line 2)",
    ),
    (
        "raising:FAMILY",
        "model.family: importing raising failed: RuntimeError: boom at import (raising.py, line 1)",
    ),
    ("noloss:FAMILY", "model.family: noloss:FAMILY: Step has no loss(); a step needs build()"),
    ("badflavor:FAMILY", "model.family: badflavor:FAMILY: flavor 'small' sets wdith, which"),
    ("my mod:X", "model.family: 'my mod:X' is not a family name"),
]


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("user-code")
    for name, code in MODULES.items():
        (directory / name).write_text(code)
    return directory


def _invoke(monkeypatch, cwd: Path, *args: str):
    """The CLI in this process, from `cwd` (each case imports modules of its own names)."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("family, expected", CASES)
def test_a_family_gentrain_cannot_use_is_refused_in_one_line(
    modules, monkeypatch, family, expected
):
    spec = modules / f"spec_{abs(hash(family))}.yaml"
    spec.write_text(SPEC.replace("FAMILY", family))
    result = _invoke(monkeypatch, modules, "validate", str(spec))
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in lines[0], lines[0]
    assert not (modules / "called").exists(), "nothing the spec names is called"


def test_a_strategy_that_needs_a_missing_method_is_refused_before_anything_starts(
    modules, monkeypatch
):
    spec = modules / "pipeline.yaml"
    spec.write_text(SPEC.replace("FAMILY", "mymod:FAMILY") + "storage: {path: ckpt}\n")
    pipeline = ["--set", "train.strategy=pipeline", "--set", "train.workers=2"]
    result = _invoke(monkeypatch, modules, "run", str(spec), *pipeline)
    assert result.exit_code == 2 and not ray.is_initialized()
    assert result.stderr.strip().endswith(
        "train.strategy: pipeline needs mine's step to define pipeline(); "
        "ddp, fsdp and deepspeed work without it"
    )
    assert not (modules / "ckpt").exists() and not (modules / "mlflow.db").exists()


def test_a_user_familys_flavors_and_overrides_are_validated(monkeypatch):
    spec = str(EXAMPLES / "tiny_vae.yaml")
    result = _invoke(monkeypatch, REPO, "validate", spec, "--set", "model.overrides.hiden=3")
    assert result.exit_code == 2
    assert "model.overrides.hiden: unknown tiny_vae setting; allowed: hidden, latent" in (
        result.stderr
    )
    result = _invoke(monkeypatch, REPO, "validate", spec, "--set", "model.flavor=huge")
    assert "model.flavor: 'huge' is not a tiny_vae flavor; allowed: debug, small" in result.stderr
    result = gentrain("validate", spec, cwd=REPO.parent)  # a fresh process: found by the spec
    assert result.returncode == 0 and "valid tiny_vae:FAMILY job" in result.stdout


def _installed_package(site: Path) -> dict[str, str]:
    """An installed distribution (its dist-info on the path) that offers family `tiny` through
    the entry-point group, as `pip install` of a package declaring it would leave it."""
    info = site / "tiny_families-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-families\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gentrain.families]\ntiny = tiny_vae:FAMILY\n")
    shutil.copy(EXAMPLES / "tiny_vae.py", site / "tiny_vae.py")
    return {"PYTHONPATH": str(site)}


def test_an_installed_packages_family_is_listed_validated_and_checked(tmp_path):
    env = _installed_package(tmp_path / "site")
    listed = gentrain("ls", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("│ tiny "))
    assert "image" in row and "debug, small" in row and "fid, is" in row
    (tmp_path / "spec.yaml").write_text(SPEC.replace("FAMILY", "tiny"))
    assert gentrain("validate", "spec.yaml", cwd=tmp_path, env=env).returncode == 0
    unknown = gentrain("validate", "spec.yaml", cwd=tmp_path)  # not installed there
    assert "model.family: unknown family 'tiny'" in unknown.stderr


def test_gentrain_check_passes_the_example_and_says_pipeline_is_not_supported():
    result = gentrain("check", "tiny_vae:FAMILY", cwd=EXAMPLES)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    for check in ("finite loss", "loss falls", "state dict round trip", "samples", "export"):
        assert "│ pass" in rows[check], rows[check]
    assert "│ skip" in rows["pipeline composes"]
    assert "│ yes" in rows["ddp"] and "│ yes" in rows["deepspeed"]
    assert "│ no " in rows["pipeline"] and "TinyVAEStep defines no pipeline()" in rows["pipeline"]
    assert "ok: tiny_vae:FAMILY passes 7 checks in" in result.stdout


@pytest.mark.parametrize(
    "loss, sample, failed",
    [
        ("return models['net'].weight.sum() * 0 + 1.0, {}", GOOD_SAMPLE, "loss falls"),
        ("return models['net'].weight.sum() * float('nan'), {}", GOOD_SAMPLE, "finite loss"),
        (GOOD_LOSS, "return torch.randn(n, 1, 8, 8) * 5", "samples"),
        (GOOD_LOSS, "return torch.zeros(n, 64)", "samples"),
    ],
)
def test_gentrain_check_fails_a_family_that_breaks_a_check(
    tmp_path, monkeypatch, loss, sample, failed
):
    name = f"faulty_{tmp_path.name}"  # a module of its own: this process imports each once
    (tmp_path / f"{name}.py").write_text(_family_module(loss, sample))
    result = _invoke(monkeypatch, tmp_path, "check", f"{name}:FAMILY")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: {name}:FAMILY: ") and failed in result.stderr
    row = next(line for line in result.stdout.splitlines() if f"│ {failed} " in line)
    assert "FAIL" in row


def test_gentrain_check_refuses_an_unknown_family_or_flavor(tmp_path, monkeypatch):
    result = _invoke(monkeypatch, tmp_path, "check", "nosuch:FAMILY")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: FAMILY nosuch:FAMILY: no module nosuch")
    result = _invoke(monkeypatch, tmp_path, "check", "gan", "--flavor", "huge")
    assert result.exit_code == 2
    assert "error: FAMILY gan: 'huge' is not a gan flavor; allowed: debug, small, base" in (
        result.stderr
    )


TINY_RUN = [
    *("--set", "model.flavor=debug", "--set", "train.max_steps=20"),
    *("--set", "train.log_every=5", "--set", "train.eval_every=10"),
    *("--set", "train.checkpoint_every=10", "--set", "eval.num_samples=64"),
]


@pytest.mark.slow
def test_the_example_family_trains_then_sweeps_under_deepspeed_from_its_model(tmp_path, new_store):
    """`gentrain run` of README's example from another directory: 2 DDP workers, checkpoints, its
    own loss terms in MLflow, a model that loads where tiny_vae.py is not; then `gentrain sweep`
    of it, two DeepSpeed ZeRO-2 trials starting from that model (model.init_from)."""
    spec = str(EXAMPLES / "tiny_vae.yaml")
    new_store(tmp_path)
    first = gentrain("run", spec, *TINY_RUN, "--set", "storage.path=ckpt", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-vae-digits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["model.family"] == "tiny_vae:FAMILY"
    assert {"loss", "recon", "kl", "fid", "is"} <= set(run.data.metrics)
    assert len(list((tmp_path / "ckpt").rglob("checkpoint_*"))) >= 2
    loaded = subprocess.run(
        [sys.executable, "-c", f"import mlflow; print(type(mlflow.pytorch.load_model("
         f"'runs:/{run.info.run_id}/model')).__name__)"],
        cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )  # fmt: skip
    assert loaded.stdout.strip() == "TinyVAE", loaded.stderr[-2000:]

    sweep = (EXAMPLES / "tiny_vae.yaml").read_text() + textwrap.dedent("""
        sweep:
          search: grid
          metric: loss
          mode: min
          space:
            optim.lr: {grid: [1.0e-3, 3.0e-3]}
    """)
    (tmp_path / "tiny_vae.py").write_text((EXAMPLES / "tiny_vae.py").read_text())
    (tmp_path / "sweep.yaml").write_text(sweep)
    result = gentrain(
        "sweep", "sweep.yaml", *TINY_RUN, "--set", "train.workers=1", "--set", "eval.metrics=[]",
        "--set", "train.strategy=deepspeed", "--set", "storage.path=ckpt2",
        "--set", f"model.init_from=runs:/{run.info.run_id}/model", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 4 and len(children) == 2
    assert {r.data.params["optim.lr"] for r in children} == {"0.001", "0.003"}
    first_loss = client.get_metric_history(run.info.run_id, "loss")[0].value
    for child in children:
        assert child.info.status == "FINISHED" and "recon" in child.data.metrics
        assert child.data.tags["gentrain.strategy"] == "deepspeed"
        assert client.get_metric_history(child.info.run_id, "loss")[0].value < first_loss


def test_readme_shows_the_example_family_as_it_is_in_the_repo():
    example = (EXAMPLES / "tiny_vae.py").read_text()
    assert f"```python\n{example}```" in (REPO / "README.md").read_text()
    assert len(example.splitlines()) < 80
