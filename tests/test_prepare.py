"""`gentrain prepare` (issue 36): shards and a manifest made on Ray Data, the same examples as
the raw source gives, kept when a prepare is run again or stopped part way, a BPE tokenizer
trained once and saved beside the shards, and a spec that trains from the prepared path."""

import io
import json

import mlflow
import numpy as np
import torch
from PIL import Image

from conftest import gentrain
from gentrain.data import load_dataset
from gentrain.spec_sections import DataSection


def _images(directory, count: int) -> None:
    directory.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
        (directory / f"{i:04d}.png").write_bytes(buffer.getvalue())


def test_prepared_images_are_the_raw_examples_and_a_second_prepare_keeps_them(tmp_path):
    _images(tmp_path / "images", 300)  # two shards of image files (256 a shard)
    (tmp_path / "job.yaml").write_text(
        "name: imgs\nmodel: {family: gan, flavor: debug}\n"
        "data: {source: 'images:images', image_size: 8, batch_size: 16}\n"
    )
    out = tmp_path / "prepared"
    first = gentrain("prepare", "job.yaml", "--out", str(out), cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "examples in 2 shards" in first.stdout and "examples/s" in first.stdout
    assert f"--set data.source=prepared:{out}" in first.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["shape"], manifest["dtype"], len(manifest["shards"])) == (
        [3, 8, 8],
        "uint8",
        2,
    )

    raw = load_dataset(DataSection(source=f"images:{tmp_path / 'images'}", image_size=8))
    prepared = load_dataset(DataSection(source=f"prepared:{out}"))
    assert torch.equal(prepared.train, raw.train) and torch.equal(prepared.heldout, raw.heldout)
    assert manifest["examples"] == {"train": len(raw.train), "heldout": len(raw.heldout)}

    again = gentrain("prepare", "job.yaml", "--out", str(out), cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("already prepared"), again.stdout

    (out / "manifest.json").unlink()  # as a prepare stopped before its end leaves it
    (out / "shard-000001.parquet").unlink()
    resumed = gentrain("prepare", "job.yaml", "--out", str(out), cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0 and "1 shards kept from before" in resumed.stdout
    assert json.loads((out / "manifest.json").read_text()) == manifest

    other = gentrain(
        "prepare", "job.yaml", "--out", str(out), "--set", "data.image_size=4", cwd=tmp_path
    )
    assert other.returncode == 2 and "--out: " in other.stderr and "choose another" in other.stderr

    (out / "manifest.json").unlink()  # a stopped prepare: its shards are not mixed with others
    other = gentrain(
        "prepare", "job.yaml", "--out", str(out), "--set", "data.image_size=4", cwd=tmp_path
    )
    assert other.returncode == 2, other.stderr
    assert "shard-000000.parquet, prepared from other data or settings" in other.stderr


def test_text_prepared_with_bpe_trains_from_the_prepared_path(new_store, tmp_path):
    new_store(tmp_path)
    (tmp_path / "job.yaml").write_text(
        "name: words\nmodel: {family: gpt, flavor: debug}\n"
        "data: {source: 'builtin:python_docs', tokenizer: bpe, vocab_size: 300, seq_len: 32,"
        " batch_size: 8}\n"
        "train: {workers: 1, max_steps: 4, log_every: 2, eval_every: 4, checkpoint_every: 4}\n"
        "eval: {max_examples: 16}\n"
    )
    out = tmp_path / "prepared"
    made = gentrain("prepare", "job.yaml", "--out", str(out), cwd=tmp_path, timeout=300)
    assert made.returncode == 0, made.stderr
    assert (out / "tokenizer.json").is_file(), "trained once, saved beside the shards"
    prepared = load_dataset(f"prepared:{out}")
    raw = load_dataset(
        DataSection(source="builtin:python_docs", tokenizer="bpe", vocab_size=300, seq_len=32)
    )
    assert prepared.info.vocab_size == 300 and torch.equal(prepared.train, raw.train)

    run = gentrain("run", "job.yaml", "--set", f"data.source=prepared:{out}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("words").experiment_id])
    assert logged.data.metrics["perplexity"] > 1
    files = [f.path for f in client.list_artifacts(logged.info.run_id, "tokenizer")]
    assert files == ["tokenizer/tokenizer.json"], "the tokenizer is logged with the run"
