"""User data sources (images:, parquet:, text:, local or s3://) and the spec's data section, on real
files made here: PNG/JPEG with Pillow, parquet with pyarrow, S3 on a real server (moto)."""

import io
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import gentrain
from gentrain import spec as spec_module
from gentrain.cli import app
from gentrain.data import Dataset, load_dataset, open_data
from gentrain.data.augment import augment
from gentrain.data.sources import CorpusSource
from gentrain.data.text import BPETokenizer, ByteTokenizer, builtin_corpus
from gentrain.errors import GentrainError, SpecError
from gentrain.spec_sections import DataSection, source_modality
from gentrain.storage import filesystem, read_bytes

RNG = np.random.default_rng(0)


def _pixels(height: int = 8, width: int = 8) -> np.ndarray:
    """(H, W, 3) uint8 that spans 0..255, so the scaled images span exactly [-1, 1]."""
    pixels = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 0, 255
    return pixels


def _encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _scaled(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1


def _image_folder(root, n: int = 10) -> list[np.ndarray]:
    """n PNGs, half of them in a nested folder, next to files that are not images."""
    (root / "nested" / "deeper").mkdir(parents=True)
    images = [_pixels() for _ in range(n)]
    for i, pixels in enumerate(images):
        folder = root / "nested" / "deeper" if i % 2 else root
        (folder / f"img{i:02d}.png").write_bytes(_encode(pixels))
    (root / "README.txt").write_text("not an image")
    (root / "nested" / "labels.csv").write_text("a,b\n")
    return images


def _tuples(tensor: torch.Tensor) -> list[tuple[float, ...]]:
    return [tuple(x.flatten().tolist()) for x in tensor]


def _rows(tensor: torch.Tensor) -> set[tuple[float, ...]]:
    return set(_tuples(tensor))


def _load(source: str, **data) -> Dataset:
    return load_dataset(DataSection(source=source, **data))


# --- images:DIR ------------------------------------------------------------------------------


def test_image_folder_is_decoded_scaled_and_split_deterministically(tmp_path):
    images = _image_folder(tmp_path)
    data = _load(f"images:{tmp_path}")
    assert data.modality == "image" and data.info.shape == (3, 8, 8)
    assert (len(data.train), len(data.heldout)) == (9, 1), "nested folders count, text files not"
    assert data.train.dtype == torch.float32
    assert data.train.min() == -1 and data.train.max() == 1
    everything = torch.cat([data.train, data.heldout])
    assert _rows(everything) == _rows(torch.stack([_scaled(p) for p in images])), "lossless"
    assert not _rows(data.train) & _rows(data.heldout)
    again = _load(f"images:{tmp_path}")
    assert torch.equal(again.train, data.train) and torch.equal(again.heldout, data.heldout)


def test_channels_and_image_size(tmp_path):
    for i in range(4):  # not square, mixed sizes: centre-cropped and resized
        (tmp_path / f"{i}.png").write_bytes(_encode(_pixels(8 + 2 * i, 12)))
    gray = _load(f"images:{tmp_path}", channels=1, image_size=6)
    assert gray.info.shape == (1, 6, 6) and gray.train.shape[1:] == (1, 6, 6)
    assert -1 <= gray.train.min() and gray.train.max() <= 1
    rgb = _load(f"images:{tmp_path}", channels=3, image_size=4)
    assert rgb.info.shape == (3, 4, 4)
    assert _load(f"images:{tmp_path}", image_size=4).info.shape == (3, 4, 4), "default: RGB"


def test_grayscale_values_and_jpeg_files(tmp_path):
    gray = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    for name in ("a.png", "b.PNG"):
        (tmp_path / name).write_bytes(_encode(np.stack([gray] * 3, axis=-1)))
    data = _load(f"images:{tmp_path}", channels=1)
    expected = torch.from_numpy(gray.astype(np.float32))[None] / 127.5 - 1
    assert torch.equal(data.train[0], expected) and torch.equal(data.heldout[0], expected)

    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 1, 3))
    for name in ("a.jpg", "b.jpeg", "c.JPG"):
        (jpegs / name).write_bytes(_encode(smooth, "JPEG"))
    data = _load(f"images:{jpegs}")
    assert data.info.shape == (3, 16, 16)
    assert (torch.cat([data.train, data.heldout]) - _scaled(smooth)).abs().max() < 0.1, "lossy"


def test_image_folder_errors_name_the_file_and_the_fix(tmp_path):
    _image_folder(tmp_path, n=4)
    (tmp_path / "nested" / "broken.png").write_bytes(_encode(_pixels())[:60])
    with pytest.raises(GentrainError, match=r"broken\.png: not a readable image"):
        _load(f"images:{tmp_path}")
    (tmp_path / "nested" / "broken.png").write_bytes(b"plain text, not a PNG")
    with pytest.raises(GentrainError, match=r"broken\.png: not a readable image \(unknown format"):
        _load(f"images:{tmp_path}")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.png").write_bytes(_encode(_pixels(8, 8)))
    (mixed / "b.png").write_bytes(_encode(_pixels(16, 12)))
    with pytest.raises(GentrainError) as caught:
        _load(f"images:{mixed}")
    message = str(caught.value)
    assert "b.png is 12x16 but" in message and "a.png is 8x8" in message
    assert "data.image_size" in message and "\n" not in message
    assert _load(f"images:{mixed}", image_size=8).info.shape == (3, 8, 8)

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(GentrainError, match=r"empty: no \.png/\.jpg/\.jpeg files found"):
        _load(f"images:{empty}")
    single = tmp_path / "single"
    single.mkdir()
    (single / "a.png").write_bytes(_encode(_pixels()))
    with pytest.raises(GentrainError, match="single: no held-out images"):
        _load(f"images:{single}")


# --- parquet:PATH ------------------------------------------------------------------------------


def _image_table(n: int, *, column: str = "image", hugging_face: bool = False) -> pa.Table:
    encoded = [_encode(_pixels()) for _ in range(n)]
    if hugging_face:  # datasets' Image feature: struct<bytes: binary, path: string>
        values = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(encoded)])
    else:
        values = pa.array(encoded, type=pa.binary())
    return pa.table({"label": list(range(n)), column: values})


def _text_table(n: int) -> pa.Table:
    texts = [f"Paragraph {i} says hello. " * 4 for i in range(n)]
    return pa.table({"id": list(range(n)), "text": texts})


def test_parquet_image_bytes_column(tmp_path):
    pq.write_table(_image_table(10), tmp_path / "auto.parquet")
    data = _load(f"parquet:{tmp_path / 'auto.parquet'}")
    assert data.modality == "image" and data.info.shape == (3, 8, 8)
    assert (len(data.train), len(data.heldout)) == (9, 1)
    assert data.train.min() == -1 and data.train.max() == 1

    pq.write_table(_image_table(10, column="picture"), tmp_path / "named.parquet")
    named = _load(f"parquet:{tmp_path / 'named.parquet'}", column="picture", channels=1)
    assert named.info.shape == (1, 8, 8)

    pq.write_table(_image_table(10, hugging_face=True), tmp_path / "hf.parquet")
    hf = _load(f"parquet:{tmp_path / 'hf.parquet'}", image_size=4)
    assert hf.info.shape == (3, 4, 4) and len(hf.train) + len(hf.heldout) == 10


def test_parquet_text_column_and_a_directory_of_files(tmp_path):
    pq.write_table(_text_table(20), tmp_path / "text.parquet")
    data = _load(f"parquet:{tmp_path / 'text.parquet'}", seq_len=16)
    assert data.modality == "text" and data.train.dtype == torch.int64
    start = data.info.decode(data.train.flatten().tolist())  # windows follow each other
    assert start.startswith("Paragraph ") and "hello. \n\nParagraph " in start
    assert len(data.train) == len(start.encode()) // 16

    folder = tmp_path / "parts"
    folder.mkdir()
    table = _image_table(12)
    for k in range(3):
        pq.write_table(table.slice(4 * k, 4), folder / f"part-{k}.parquet")
    parts = _load(f"parquet:{folder}")
    assert len(parts.train) + len(parts.heldout) == 12
    assert len(_rows(torch.cat([parts.train, parts.heldout]))) == 12, "every row once"


def test_parquet_errors_list_the_columns(tmp_path):
    pq.write_table(pa.table({"pixels": [b"x"], "caption": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(GentrainError) as caught:
        _load(f"parquet:{tmp_path / 't.parquet'}")
    message = str(caught.value)
    assert "no column 'image' or 'text'" in message and "columns: pixels, caption" in message
    assert "data.column" in message
    with pytest.raises(GentrainError, match="no column 'photo'; columns: pixels, caption"):
        _load(f"parquet:{tmp_path / 't.parquet'}", column="photo")

    pq.write_table(pa.table({"image": [1, 2, 3]}), tmp_path / "ints.parquet")
    with pytest.raises(GentrainError, match="column 'image' is int64; expected encoded image"):
        _load(f"parquet:{tmp_path / 'ints.parquet'}")
    pq.write_table(pa.table({"image": pa.array([], type=pa.binary())}), tmp_path / "none.parquet")
    with pytest.raises(GentrainError, match="none.parquet: too little data: 0 training images"):
        _load(f"parquet:{tmp_path / 'none.parquet'}")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(GentrainError, match="fake.parquet: cannot read parquet"):
        _load(f"parquet:{tmp_path / 'fake.parquet'}")


# --- text:FILE and built-in corpora ----------------------------------------------------------


def _numbered_text(n: int = 400) -> str:
    """Text whose every marker is unique, so that overlap between windows is visible."""
    return "".join(f"<{i:04d}> Ünïcode and ascii.\n\n" for i in range(n))


def _markers(text: str) -> set[str]:
    return {piece.split(">")[0] for piece in text.split("<")[1:] if ">" in piece}


def test_text_file_byte_windows_and_whole_heldout_paragraphs(tmp_path):
    text = _numbered_text()
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    data = _load(f"text:{tmp_path / 'corpus.txt'}", seq_len=32)
    assert data.modality == "text" and data.info.shape == (32,)
    assert data.info.vocab_size == 257 and data.info.mask_id == 256
    assert data.train.dtype == torch.int64 and data.train.shape[1] == 32
    assert data.train.max() < 256 and data.heldout.max() < 256
    train = data.info.decode(data.train.flatten().tolist())
    heldout = data.info.decode(data.heldout.flatten().tolist())
    assert train.startswith("<0") and "\n\n<0" in train, "windows follow each other"
    train_markers, heldout_markers = _markers(train), _markers(heldout)
    assert 20 < len(heldout_markers) < 80, "about a tenth of the paragraphs"
    assert not train_markers & heldout_markers, "a paragraph is held out whole or trained on"


def test_byte_and_bpe_tokenizers_round_trip():
    text = builtin_corpus("python_docs")
    cut = len(text) * 9 // 10
    train, heldout = text[:cut], text[cut:]
    byte = ByteTokenizer()
    assert byte.decode(byte.encode(heldout)) == heldout

    bpe = BPETokenizer(train, vocab_size=512)
    ids = bpe.encode(heldout)
    assert bpe.vocab_size == 512 and 0 <= bpe.mask_id < 512
    assert max(ids) < 512 and bpe.mask_id not in ids
    assert bpe.decode(ids) == heldout
    assert len(ids) < len(heldout) / 2, "merges compress English text"
    assert bpe.decode([bpe.mask_id, *bpe.encode("def f():")]) == "def f():"
    assert BPETokenizer(train, vocab_size=512).encode(heldout) == ids

    tiny = BPETokenizer("tiny text " * 10, vocab_size=1000)
    assert tiny.vocab_size <= 1000 and tiny.mask_id < tiny.vocab_size
    odd = "naïve café — 日本語 🐍\n\n\n\nnew paragraph"
    assert tiny.decode(tiny.encode(odd)) == odd, "byte-level: any text, nothing lost"


def test_bpe_is_the_same_in_every_process():
    """Each Ray worker trains its own tokenizer: all must agree on every id."""
    code = (
        "from gentrain.data.text import BPETokenizer, builtin_corpus\n"
        "text = builtin_corpus('python_docs')[:100_000]\n"
        "print(BPETokenizer(text, vocab_size=600).encode(text[-5000:]))\n"
    )
    here = BPETokenizer(builtin_corpus("python_docs")[:100_000], vocab_size=600)
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert there.stdout.strip() == str(here.encode(builtin_corpus("python_docs")[:100_000][-5000:]))


def test_bpe_dataset_from_the_builtin_corpus():
    data = _load("builtin:python_docs", tokenizer="bpe", vocab_size=300, seq_len=64)
    assert data.info.vocab_size == 300 and 0 <= data.info.mask_id < 300
    assert data.train.dtype == torch.int64 and data.train.shape[1:] == (64,)
    assert int(data.train.max()) < 300 and len(data.heldout) > 10
    assert isinstance(data.info.decode(data.heldout[0].tolist()), str)


def test_builtin_python_docs_is_english_text():
    assert source_modality("builtin:python_docs") == "text"
    text = builtin_corpus("python_docs")
    assert len(text) > 100_000
    words = text.lower().split()
    assert words.count("the") > 1000 and "python" in words
    assert sum(c.isascii() for c in text) / len(text) > 0.99
    data = _load("builtin:python_docs", seq_len=128)
    assert data.info.vocab_size == 257 and len(data.train) > 1000
    source = CorpusSource("python_docs")
    (shard,) = source.shards
    topics = source.read(shard)
    assert len(topics) == shard.rows > 50, "a record is a topic: held out or trained on whole"
    assert all(len(topic) > 100 and topic.endswith("\n\n") for topic in topics)


def test_too_little_text_is_a_clear_error(tmp_path):
    (tmp_path / "short.txt").write_text("only a few words here")
    with pytest.raises(GentrainError, match="short.txt: too little data: 0 training windows"):
        _load(f"text:{tmp_path / 'short.txt'}")
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(GentrainError, match="empty.txt: too little data: 0 training windows"):
        _load(f"text:{tmp_path / 'empty.txt'}", seq_len=4)


# --- s3:// on a real S3-compatible server ----------------------------------------------------


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    """A bucket holding an image folder, parquet files and a text file, plus their local twins."""
    local = tmp_path_factory.mktemp("s3-twins")
    client = s3_server.client()
    client.create_bucket(Bucket="gentrain-data")
    _image_folder(local / "images")
    pq.write_table(_image_table(10), local / "images.parquet")
    pq.write_table(_text_table(20), local / "text.parquet")
    (local / "parts").mkdir()
    for k in range(2):
        pq.write_table(_image_table(4), local / "parts" / f"part-{k}.parquet")
    (local / "corpus.txt").write_text(_numbered_text(100), encoding="utf-8")
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "gentrain-data", path.relative_to(local).as_posix())
    return local


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


def _same_split(a, b) -> bool:
    return torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)


def test_s3_sources_read_what_local_ones_do(bucket, s3_env):
    pairs = [
        ("images:s3://gentrain-data/images", f"images:{bucket / 'images'}", {}),
        ("images:s3://gentrain-data/images/", f"images:{bucket / 'images'}", {"channels": 1}),
        ("parquet:s3://gentrain-data/images.parquet", f"parquet:{bucket / 'images.parquet'}", {}),
        ("parquet:s3://gentrain-data/parts", f"parquet:{bucket / 'parts'}", {}),
        ("parquet:s3://gentrain-data/text.parquet", f"parquet:{bucket / 'text.parquet'}", {}),
        ("text:s3://gentrain-data/corpus.txt", f"text:{bucket / 'corpus.txt'}", {"seq_len": 16}),
    ]
    for remote, local, settings in pairs:
        assert _same_split(_load(remote, **settings), _load(local, **settings)), remote


def test_missing_s3_objects_are_clear_errors(bucket, s3_env):
    with pytest.raises(GentrainError, match="s3://gentrain-data/missing.txt: cannot read"):
        _load("text:s3://gentrain-data/missing.txt")
    with pytest.raises(
        GentrainError, match="s3://gentrain-data/nothing-here: cannot read: no such file"
    ):
        _load("images:s3://gentrain-data/nothing-here")
    with pytest.raises(GentrainError, match="s3://no-such-bucket/x.parquet: cannot read"):
        _load("parquet:s3://no-such-bucket/x.parquet")


def test_missing_s3_data_is_refused_before_anything_starts(bucket, s3_env, tmp_path, monkeypatch):
    """The CLI's check, before Ray or MLflow: exit 2, one line naming data.source."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nmodel: {family: gan, flavor: debug}\n")
    for source, expected in [
        (
            "images:s3://gentrain-data/nothing-here",
            "s3://gentrain-data/nothing-here does not exist",
        ),
        ("images:s3://no-such-bucket/pictures", "bucket 'no-such-bucket' does not exist"),
    ]:
        result = CliRunner().invoke(app, ["run", str(job), "--set", f"data.source={source}"])
        assert result.exit_code == 2, (result.stderr, result.exception)
        assert result.stderr.startswith(f"error: data.source: {expected}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()


def test_s3_endpoint_comes_from_the_environment(bucket, s3_env, monkeypatch):
    fs, path = filesystem("s3://gentrain-data/corpus.txt")
    settings = fs.__reduce__()[1][0]  # what pyarrow was given
    assert settings["endpoint_override"] == s3_env.endpoint.removeprefix("http://")
    assert settings["scheme"] == "http" and path == "gentrain-data/corpus.txt"
    expected = (bucket / "corpus.txt").read_bytes()
    assert read_bytes("s3://gentrain-data/corpus.txt") == expected

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(GentrainError, match="cannot read"):
        read_bytes("s3://gentrain-data/corpus.txt")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)  # the service's own one wins
    assert read_bytes("s3://gentrain-data/corpus.txt") == expected

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "minio.example:9000")  # no scheme: https
    settings = filesystem("s3://b/k")[0].__reduce__()[1][0]
    assert (settings["endpoint_override"], settings["scheme"]) == ("minio.example:9000", "https")


# --- the spec's data section ---------------------------------------------------------------


def _job(family: str, **data) -> dict:
    return {"name": "t", "model": {"family": family, "flavor": "debug"}, "data": data}


TEXT = {"source": "builtin:python_docs"}


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (_job("gan", image_size=2), "data.image_size: Input should be greater than or equal to 4"),
        (_job("gan", image_size="big"), "data.image_size: Input should be a valid integer"),
        (_job("gan", channels=2), "data.channels: Input should be 1 or 3 (got 2)"),
        (_job("gan", column=["a"]), "data.column: Input should be a valid string"),
        (_job("gan", augment=["color"]), "data.augment.0: Input should be 'hflip'"),
        (
            _job("gpt", **TEXT, tokenizer="wordpiece"),
            "data.tokenizer: wordpiece does not exist; allowed: byte, bpe, or a Hugging Face",
        ),
        (_job("gpt", **TEXT, vocab_size=100), "data.vocab_size: Input should be greater than"),
        (_job("gpt", **TEXT, seq_len=1), "data.seq_len: Input should be greater than"),
        (_job("gpt", **TEXT, seq_len=10**6), "data.seq_len: Input should be less than"),
        (_job("gpt", **TEXT, shuffle=True), "data.shuffle: unknown key; allowed: source"),
        (_job("gan", source="images"), "data.source: must be one of builtin:..., parquet:..."),
        (_job("gan", source="video:/x"), "data.source: must be one of"),
        (_job("gan", source="builtin:cifar"), "data.source: built-in datasets: builtin:digits"),
        (_job("gan", source="images:/no/such/dir"), "data.source: /no/such/dir does not exist"),
        (_job("gpt", source="text:/no/such.txt"), "data.source: /no/such.txt does not exist"),
        (_job("gan", source="parquet:/no/x.parquet"), "data.source: /no/x.parquet does not exist"),
        (_job("gan", **TEXT), "data.source: builtin:python_docs holds texts; family gan trains"),
        (_job("vae", source="text:s3://bkt/c.txt"), "data.source: text:s3://bkt/c.txt holds texts"),
        (_job("gpt", source="builtin:digits"), "data.source: builtin:digits holds images"),
        (_job("bert", source="images:s3://bkt/x"), "data.source: images:s3://bkt/x holds images"),
        (_job("gpt", **TEXT, augment=["hflip"]), "data.augment: augmentations apply to images"),
    ],
)
def test_bad_data_sections_are_one_line_errors_naming_the_field(job, expected):
    with pytest.raises(SpecError) as caught:
        spec_module.validate(job)
    message = str(caught.value)
    assert expected in message and "\n" not in message


def test_good_data_sections(tmp_path, monkeypatch):
    job = spec_module.validate(_job("gpt", **TEXT, tokenizer="bpe", vocab_size=512, seq_len=32))
    assert (job.data.tokenizer, job.data.vocab_size, job.data.seq_len) == ("bpe", 512, 32)
    images = spec_module.validate(
        _job("gan", source="images:s3://bkt/x", image_size=32, channels=1, augment=["color_jitter"])
    )
    assert images.data.source == "images:s3://bkt/x", "S3 is looked at by run, not by the spec"
    assert spec_module.validate(_job("flow", source="parquet:s3://bkt/p", column="img")).data.column

    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = spec_module.validate(_job("gan", source="images:imgs"))
    assert relative.data.source == f"images:{tmp_path.resolve() / 'imgs'}", (
        "made absolute: Ray workers run in another working directory"
    )
    assert spec_module.validate(relative.to_dict()).data.source == relative.data.source


def test_cli_validate_rejects_a_source_of_the_wrong_modality(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nmodel: {family: gan, flavor: debug}\n")
    result = gentrain(
        "validate", str(job), "--set", "data.source=builtin:python_docs", cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "data.source: builtin:python_docs holds texts; family gan" in result.stderr


# --- augmentations and batches ---------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_keeps_shape_and_range_and_changes_images(channels):
    torch.manual_seed(0)
    images = torch.rand(16, channels, 8, 8) * 2 - 1
    out = augment(images, ("color_jitter",))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= -1 and out.max() <= 1
    changed = (out - images).flatten(1).abs().amax(dim=1) > 1e-3
    assert changed.all(), "every image is jittered"
    assert not torch.equal(augment(images, ("color_jitter",)), out), "random each call"


def test_batches_of_text_windows_stream_from_a_text_file(tmp_path):
    (tmp_path / "corpus.txt").write_text(_numbered_text(200), encoding="utf-8")
    section = DataSection(source=f"text:{tmp_path / 'corpus.txt'}", seq_len=16)
    windows = _load(section.source, seq_len=16).train
    stream = open_data(section).stream
    parts = [stream.batches(batch_size=16, rank=r, world=2) for r in range(2)]
    per_epoch = len(windows) // 16
    epoch = [next(part)[0] for _ in range(per_epoch) for part in parts]
    assert epoch[0].dtype == torch.int64 and epoch[0].shape == (8, 16)
    epoch = torch.cat(epoch)
    assert Counter(_tuples(epoch)) <= Counter(_tuples(windows)), "no window twice in an epoch"
    assert len(windows) - len(epoch) < 16, "every window but the last remainder"
    for part in parts:
        part.close()


# --- more sources, and bad input refused before anything starts (issue 36) --------------------


def test_a_parquet_glob_and_a_folder_of_jsonl_and_text_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    pq.write_table(_image_table(6), tmp_path / "a" / "one.parquet")
    pq.write_table(_image_table(6), tmp_path / "a" / "b" / "two.parquet")
    pq.write_table(_image_table(6), tmp_path / "a" / "b" / "skip.pq")
    assert len(_everything(_load(f"parquet:{tmp_path}/a/**/*.parquet"))) == 12
    assert len(_everything(_load(f"parquet:{tmp_path}/a/*.parquet"))) == 6, "* stays in a folder"

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"text": f"<{i:04d}> a record of its own.", "id": i}) for i in range(300)]
    (corpus / "records.jsonl").write_text("\n".join(lines) + "\n")
    (corpus / "notes.md").write_text(_numbered_text(300)[:-2].replace("<", "<9"))
    data = _load(f"text:{corpus}", seq_len=16)
    seen = _markers(data.info.decode(_everything(data).flatten().tolist()))
    assert any(m.startswith("9") for m in seen) and any(not m.startswith("9") for m in seen)
    assert '"id"' not in data.info.decode(data.train.flatten().tolist()), "only the text field"


def _everything(data: Dataset) -> torch.Tensor:
    return torch.cat([data.train, data.heldout])


def test_bad_data_is_refused_in_one_line_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "few").mkdir()
    for i in range(12):
        (tmp_path / "few" / f"{i}.png").write_bytes(_encode(_pixels()))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    (tmp_path / "torn.parquet").write_bytes(b"PAR1" + b"\0" * 40)
    (tmp_path / "t.txt").write_text(_numbered_text(50))
    pq.write_table(pa.table({"caption": ["a"] * 10}), tmp_path / "cols.parquet")
    cases = [
        (["data.source=images:few"], "gan", "data.source: ", "few: too little data: 11 training"),
        (["data.tokenizer=bad.json"], "gpt", "data.tokenizer: cannot read", "bad.json"),
        (["data.source=text:empty"], "gpt", "data.source: ", "empty: no .txt/.md/.jsonl files"),
        (["data.source=parquet:torn.parquet"], "gan", "torn.parquet: cannot read parquet", ""),
        (["data.source=parquet:cols.parquet"], "gan", "no column 'image' or 'text'", "caption"),
        (["data.source=text:t.txt"], "gan", "holds texts; family gan trains on images", ""),
    ]
    for sets, family, expected, named in cases:
        job = tmp_path / "job.yaml"
        job.write_text(f"name: t\nmodel: {{family: {family}, flavor: debug}}\n")
        args = [x for s in [*sets, "data.batch_size=16"] for x in ("--set", s)]
        result = CliRunner().invoke(app, ["run", str(job), *args])
        assert result.exit_code == 2, (sets, result.stderr, result.exception)
        assert expected in result.stderr and named in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()
