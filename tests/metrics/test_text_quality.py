"""The offline text scorer measures something: on fixed passages of the built-in corpus, the true
continuation scores above its words shuffled, an unrelated passage and random bytes."""

import random

import numpy as np
import pytest
import torch

from gentrain.data.text import ByteTokenizer, corpus_rows
from gentrain.families.gpt.config import GPTConfig
from gentrain.families.gpt.model import GPT
from gentrain.metrics.text import mauve
from gentrain.metrics.text_quality import (
    CUT_POINTS,
    CharNgrams,
    Encoder,
    Item,
    raw_scores,
    score,
    sentences,
)

METRICS = tuple(CUT_POINTS)


@pytest.fixture(scope="module")
def passages():
    """(question, truth sentences) of 30 topics, and the other topics' text as training text."""
    rng = random.Random(0)
    rows = corpus_rows("python_docs")
    rng.shuffle(rows)
    chosen = [r for r in rows[:80] if len(sentences(r)) >= 8][:30]
    training = "".join(r for r in rows if r not in chosen)
    return [(" ".join(sentences(r)[:3]), sentences(r)[3:6]) for r in chosen], training


@pytest.fixture(scope="module")
def encoder():
    return Encoder()


@pytest.fixture(scope="module")
def answers(passages):
    """Each kind of answer to each question, as the items the scorer reads."""
    pairs, _ = passages
    rng = random.Random(1)
    untrained = _untrained_answers([question for question, _ in pairs])
    kinds: dict[str, list[Item]] = {}
    for i, (question, truth) in enumerate(pairs):
        other_question, other = pairs[(i + 1) % len(pairs)]
        words = " ".join(truth).split()
        rng.shuffle(words)
        mixed = [truth[0], other[1], pairs[(i + 2) % len(pairs)][1][2]]
        noise = "".join(chr(rng.randrange(33, 127)) for _ in range(len(" ".join(truth))))
        answers = {
            "truth": " ".join(truth),
            "sentences shuffled": " ".join(rng.sample(truth, len(truth))),
            "untrained model": untrained[i],
            "shuffled words": " ".join(words),
            "unrelated": " ".join(other),
            "random bytes": noise,
            "passages mixed": " ".join(mixed),
        }
        for kind, answer in answers.items():
            with_truth = f"{question} {' '.join(truth)}"
            kinds.setdefault(kind, []).append(
                Item(question, answer, context=with_truth, ground_truth=" ".join(truth))
            )
        kinds.setdefault("context without it", []).append(
            Item(question, " ".join(truth), context=f"{question} {' '.join(other)}")
        )
    return kinds


@pytest.fixture(scope="module")
def measured(passages, answers, encoder):
    """Each kind of answer's raw scores, item by item."""
    reference = CharNgrams(passages[1])
    return {
        kind: raw_scores(items, METRICS if kind != "context without it" else ("groundedness",),
                         encoder=encoder, reference=reference)
        for kind, items in answers.items()
    }  # fmt: skip


def _untrained_answers(questions: list[str]) -> list[str]:
    """What an untrained byte-level GPT writes after each question."""
    tokenizer = ByteTokenizer()
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(layers=2, dim=32, heads=2), vocab_size=256, context=127, start_id=10)
    prompts = torch.tensor([tokenizer.encode(question)[-64:] for question in questions])
    with torch.no_grad():
        written = gpt.generate(prompts, 200)[:, 64:]
    return [tokenizer.decode(ids) for ids in written.tolist()]


def _mean(measured, kind: str, metric: str) -> float:
    return float(np.mean(measured[kind][metric]))


def test_similarity_and_relevance_rank_the_truth_first(measured):
    for metric in ("similarity", "relevance"):
        means = [_mean(measured, kind, metric) for kind in
                 ("truth", "shuffled words", "unrelated", "random bytes")]  # fmt: skip
        assert means == sorted(means, reverse=True), (metric, means)
    truth, unrelated = measured["truth"]["similarity"], measured["unrelated"]["similarity"]
    assert all(t > u for t, u in zip(truth, unrelated, strict=True))


def test_groundedness_needs_the_answer_in_the_context(measured):
    grounded = measured["truth"]["groundedness"]
    ungrounded = measured["context without it"]["groundedness"]
    assert all(g > u for g, u in zip(grounded, ungrounded, strict=True))
    assert _mean(measured, "truth", "groundedness") > _mean(measured, "unrelated", "groundedness")


def test_coherence_falls_for_shuffled_sentences_a_jumble_of_passages_and_noise(measured):
    truth = _mean(measured, "truth", "coherence")
    for kind in ("sentences shuffled", "passages mixed", "random bytes"):
        assert truth > _mean(measured, kind, "coherence"), kind


def test_an_untrained_model_scores_below_the_truth_on_every_metric(measured):
    for metric in METRICS:
        truth, untrained = (
            _mean(measured, "truth", metric),
            _mean(measured, "untrained model", metric),
        )
        assert (truth < untrained) if metric == "fluency" else (truth > untrained), metric


def test_mauve_of_heldout_against_heldout_is_above_against_noise_or_an_untrained_model(
    passages, answers, encoder
):
    pairs, _ = passages
    heldout = encoder([" ".join(truth) for _, truth in pairs])
    other = encoder([question for question, _ in pairs])  # held-out text too, other passages
    noise = encoder([item.answer for item in answers["random bytes"]])
    untrained = encoder([item.answer for item in answers["untrained model"]])
    alike = mauve(heldout, other)
    assert alike > 0.5
    assert alike > mauve(heldout, noise) + 0.3
    assert alike > mauve(heldout, untrained) + 0.3


def test_fluency_falls_for_shuffled_words_and_random_bytes(measured):
    truth, shuffled = measured["truth"]["fluency"], measured["shuffled words"]["fluency"]
    assert all(t < s for t, s in zip(truth, shuffled, strict=True)), "bits per character"
    assert max(shuffled) < min(measured["random bytes"]["fluency"])


def test_scores_are_1_to_5_and_the_truth_scores_above_noise(measured):
    for metric in METRICS:
        truth = [score(metric, raw) for raw in measured["truth"][metric]]
        noise = [score(metric, raw) for raw in measured["random bytes"][metric]]
        assert set(truth + noise) <= {1, 2, 3, 4, 5}
        assert np.mean(truth) > np.mean(noise) + 1, (metric, truth, noise)


def test_a_process_loads_its_encoder_once_and_can_load_it_ahead(monkeypatch):
    """Sweep trials reuse their processes, and rank 0 starts loading the encoder as training
    starts: the first evaluation finds it loaded."""
    import threading

    from gentrain.metrics import text_quality

    monkeypatch.setattr(text_quality, "_encoders", {})
    loads = []
    load = text_quality.Encoder.__init__

    def counted(self, device: str = "cpu") -> None:
        loads.append(threading.current_thread().name)
        load(self, device)

    monkeypatch.setattr(text_quality.Encoder, "__init__", counted)
    text_quality.load_encoder_ahead()
    for thread in threading.enumerate():
        if thread.name == "gentrain-encoder":
            thread.join()
    assert loads == ["gentrain-encoder"]  # loaded in the background
    first = text_quality.shared_encoder()
    text_quality.load_encoder_ahead()  # loaded already: nothing more
    assert text_quality.shared_encoder() is first
    assert loads == ["gentrain-encoder"]
    assert first(["a sentence."]).shape == (1, 384)
