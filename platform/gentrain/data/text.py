"""Text corpora, tokenizers and fixed-length token windows.

A corpus is split once, deterministically: its last HELDOUT_FRACTION of characters is held out
(a contiguous tail, so no held-out window overlaps a training one).
"""

from dataclasses import dataclass

import torch

HELDOUT_FRACTION = 0.1
MASK = "<mask>"  # the one special token: masked language models replace inputs with it


@dataclass(frozen=True)
class TextSplit:
    train: str
    heldout: str


def builtin_corpus(name: str) -> str:
    """`python_docs`: the Python reference and tutorial topics that CPython itself ships
    (pydoc_data, ~0.5 MB of English prose with code examples): present on every machine."""
    assert name == "python_docs", name
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def split_text(text: str) -> TextSplit:
    cut = int(len(text) * (1 - HELDOUT_FRACTION))
    return TextSplit(train=text[:cut], heldout=text[cut:])


class ByteTokenizer:
    """UTF-8 bytes (ids 0..255) plus the mask token (256): nothing to train, any text."""

    vocab_size = 257
    mask_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

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

    def encode(self, text: str) -> list[int]:
        return [i for chunk in _paragraphs(text) for i in self._tokenizer.encode(chunk).ids]

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

    def encode(self, text: str) -> list[int]:
        encode = self._tokenizer.encode
        return [
            i for chunk in _paragraphs(text) for i in encode(chunk, add_special_tokens=False).ids
        ]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)


def make_tokenizer(name: str, train_text: str, *, vocab_size: int):
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        return BPETokenizer(train_text, vocab_size=vocab_size)
    return PretrainedTokenizer(name)


def windows(ids: list[int], *, length: int, stride: int) -> torch.Tensor:
    """(N, length) int64 windows of the token stream, `stride` apart."""
    tokens = torch.tensor(ids, dtype=torch.int64)
    if len(tokens) < length:
        return tokens.new_empty((0, length))
    return tokens.unfold(0, length, stride).contiguous()


def _paragraphs(text: str) -> list[str]:
    """Chunks that keep their separators, so that encoding them one by one loses nothing (and the
    tokenizer never sees one huge string)."""
    pieces = text.split("\n\n")
    return [piece + "\n\n" for piece in pieces[:-1]] + [pieces[-1]]
