"""Text corpora, tokenizers and fixed-length token windows.

Text is a stream of records (paragraphs, JSONL lines, Parquet rows); a record is held out or
trained on whole (gentrain.data.examples), and the windows of a shard are cut from the
tokens of its records one after another, without overlap.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

MASK = "<mask>"  # the one special token: masked language models replace inputs with it
BPE_SAMPLE_CHARS = 20_000_000  # a BPE tokenizer learns its merges from this much training text


def builtin_corpus(name: str) -> str:
    return "".join(corpus_rows(name))


def corpus_rows(name: str) -> list[str]:
    """`python_docs`: the Python reference and tutorial topics that CPython itself ships
    (pydoc_data, ~0.5 MB of English prose with code examples): present on every machine. One
    record per topic, each ending in a blank line."""
    assert name == "python_docs", name
    from pydoc_data.topics import topics

    return [topics[key] + "\n\n" for key in sorted(topics)]


class ByteTokenizer:
    """UTF-8 bytes (ids 0..255) plus the mask token (256): nothing to train, any text."""

    vocab_size = 257
    mask_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_rows(self, rows: list[str]) -> np.ndarray:
        return np.frombuffer("".join(rows).encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: list[int]) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE (Hugging Face `tokenizers`) trained on the training split: deterministic for
    a given text and vocabulary size."""

    def __init__(self, train_text: str, *, vocab_size: int):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[MASK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(_paragraphs(train_text), trainer=trainer)
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.mask_id = tokenizer.token_to_id(MASK)

    def save(self, path: Path) -> None:
        self._tokenizer.save(str(path))

    def to_json(self) -> str:
        return self._tokenizer.to_str()

    def encode(self, text: str) -> list[int]:
        return [i for chunk in _paragraphs(text) for i in self._tokenizer.encode(chunk).ids]

    def encode_rows(self, rows: list[str]) -> np.ndarray:
        return _encode_batch(self._tokenizer, rows)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode([i for i in ids if i != self.mask_id])


class PretrainedTokenizer:
    """A Hugging Face tokenizer (tokenizer.json, as a model directory holds it, local or s3://):
    the text is encoded without the model's special tokens ([CLS], <s>, ...) between windows;
    its mask token, if it has one, is what masked language models mask with."""

    def __init__(self, location: str):
        from tokenizers import Tokenizer

        from gentrain.errors import GentrainError
        from gentrain.places import TOKENIZER_FILE
        from gentrain.storage import read_bytes

        path = location if location.endswith(".json") else f"{location}/{TOKENIZER_FILE}"
        try:
            self._tokenizer = Tokenizer.from_str(read_bytes(path).decode("utf-8"))
        except Exception as err:
            raise GentrainError(f"data.tokenizer: cannot read {path}: {err}") from None
        self._tokenizer.no_padding()  # windows are cut from the whole stream of tokens
        self._tokenizer.no_truncation()
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        masks = (self._tokenizer.token_to_id(token) for token in ("[MASK]", MASK, "<MASK>"))
        self.mask_id = next((i for i in masks if i is not None), None)

    def to_json(self) -> str:
        return self._tokenizer.to_str()

    def encode(self, text: str) -> list[int]:
        encode = self._tokenizer.encode
        return [
            i for chunk in _paragraphs(text) for i in encode(chunk, add_special_tokens=False).ids
        ]

    def encode_rows(self, rows: list[str]) -> np.ndarray:
        return _encode_batch(self._tokenizer, rows)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)


def make_tokenizer(name: str, sample_text, *, vocab_size: int, key: str = ""):
    """The tokenizer `data.tokenizer` names. `bpe` is trained on `sample_text()` (called only
    then) once per machine: it is kept under $GENTRAIN_CACHE_DIR/tokenizers by `key` (the data's
    fingerprint) and vocabulary size, so that resumes, sweep trials and other workers load it."""
    if name == "byte":
        return ByteTokenizer()
    if name != "bpe":
        return PretrainedTokenizer(name)
    cache = Path(os.environ.get("GENTRAIN_CACHE_DIR", Path.home() / ".cache" / "gentrain"))
    digest = hashlib.sha256(f"{key}/{vocab_size}".encode()).hexdigest()[:24]
    path = cache / "tokenizers" / f"bpe-{digest}.json"
    if key and path.is_file():
        return PretrainedTokenizer(str(path))
    tokenizer = BPETokenizer(sample_text(), vocab_size=vocab_size)
    if key:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        tokenizer.save(partial)
        partial.replace(path)  # whole or absent: processes may write it at once
    return tokenizer


def windows(ids, *, length: int, dtype=np.int32) -> np.ndarray:
    """(N, length) windows of the token stream, one after another (the tail shorter than a
    window is dropped)."""
    tokens = np.asarray(ids, dtype=dtype)
    count = len(tokens) // length
    return tokens[: count * length].reshape(count, length)


def _encode_batch(tokenizer, rows: list[str]) -> np.ndarray:
    """The ids of `rows` one after another, encoded in parallel (the tokenizers library's
    threads), each row's paragraphs apart as encode() does."""
    chunks = [chunk for row in rows for chunk in _paragraphs(row) if chunk]
    encoded = tokenizer.encode_batch(chunks, add_special_tokens=False)
    ids = [np.asarray(e.ids, dtype=np.int32) for e in encoded]
    return np.concatenate(ids) if ids else np.empty(0, dtype=np.int32)


def _paragraphs(text: str) -> list[str]:
    """Chunks that keep their separators, so that encoding them one by one loses nothing (and the
    tokenizer never sees one huge string)."""
    pieces = text.split("\n\n")
    return [piece + "\n\n" for piece in pieces[:-1]] + [pieces[-1]]
