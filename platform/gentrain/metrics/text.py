"""A text family's answers to the evaluation's questions, scored (metrics/text_quality.py) and
laid out as the table a person reads, worst answers first."""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from gentrain.data.questions import Question
from gentrain.families import MASK_SHOWN
from gentrain.metrics.text_quality import (
    CharNgrams,
    Item,
    raw_scores,
    score,
    shared_encoder,
)

if TYPE_CHECKING:
    from gentrain.metrics.judge import Judges

ANSWERS = "answers.json"  # the MLflow table of each evaluation's answers and their scores
BATCH = 32  # prompts generated at once


def needs_encoder(metrics: Sequence[str], *, judged: bool) -> bool:
    """Whether the text metrics use the sentence encoder: the embedded scorer does, and MAUVE
    (a judge scores the rest)."""
    return bool(metrics) and (not judged or "mauve" in metrics)


class TextQuality:
    """The metrics `metrics` (of gentrain.families.TEXT_QUALITY) of a model's answers.

    The questions are `questions` (eval.dataset), else pairs cut from the first `count` held-out
    windows: the window's first half is the question and its context, the `max_new_tokens` that
    follow are the ground truth. With `fill_mask` (a masked LM's mask token) the question is the
    window with a span of up to `max_new_tokens` in its middle masked (shown as ▯), the span is
    the ground truth. The other held-out windows are fluency's reference text.
    """

    def __init__(
        self,
        *,
        metrics: Sequence[str],
        heldout: torch.Tensor,
        encode: Callable[[str], list[int]],
        decode: Callable[[list[int]], str],
        count: int,
        max_new_tokens: int,
        questions: Sequence[Question] | None = None,
        fill_mask: int | None = None,
        judges: "Judges | None" = None,
    ):
        self.metrics, self.decode, self.judges = tuple(metrics), decode, judges
        if questions:
            self.questions = list(questions[:count])
            # the question's end, so that it and the answer fit the model's context (a window
            # less one token)
            keep = max(1, heldout.shape[1] - 1 - max_new_tokens)
            self.prompts = [(encode(q.question) or encode("\n"))[-keep:] for q in self.questions]
            reference = heldout
        else:
            pairs = heldout[:count].tolist()
            cut = _fill_cut if fill_mask is not None else _continue_cut
            self.prompts, self.questions = [], []
            for window in pairs:
                prompt, question, truth = cut(window, max_new_tokens, fill_mask, decode)
                self.prompts.append(prompt)
                self.questions.append(
                    Question(question=question, context=question, ground_truth=truth)
                )
            reference = heldout[count:] if len(heldout) > count else heldout
        self.encoder = shared_encoder() if needs_encoder(metrics, judged=bool(judges)) else None
        self.reference = CharNgrams("".join(decode(window.tolist()) for window in reference))

    def compute(
        self, answer: Callable[[torch.Tensor], torch.Tensor], *, device: torch.device, step: int
    ) -> tuple[dict[str, float], dict[str, list]]:
        """The metrics (each metric's mean 1-5 score, and `<metric>_raw` its mean raw value;
        `mauve` in [0, 1]) of the answers `answer` writes for the prompts (B, P) -> (B, new),
        and the table of the answers, worst first."""
        answers = self._answers(answer, device)
        items = [
            Item(q.question, a, context=q.context, ground_truth=q.ground_truth)
            for q, a in zip(self.questions, answers, strict=True)
        ]
        per_item = [m for m in self.metrics if m != "mauve"]
        found: dict[str, float] = {}
        if self.judges is not None:  # the judge's 1-5 scores; None where it gave none
            raw, scores = {}, self.judges.score(items)
            for metric in per_item:
                given = [value for value in scores[metric] if value is not None]
                if given:
                    found[metric] = float(np.mean(given))
                found["judge_failures"] = found.get("judge_failures", 0) + len(items) - len(given)
        else:
            raw = raw_scores(items, per_item, encoder=self.encoder, reference=self.reference)
            scores = {m: [score(m, value) for value in raw[m]] for m in per_item}
            for metric in per_item:
                found[metric] = float(np.mean(scores[metric]))
                found[f"{metric}_raw"] = float(np.mean(raw[metric]))
        if "mauve" in self.metrics:
            truths = [q.ground_truth or "" for q in self.questions]
            found["mauve"] = mauve(self.encoder(truths), self.encoder(answers))
        return found, _table(items, raw, scores, step=step)

    def _answers(self, answer, device: torch.device) -> list[str]:
        """The decoded answers, in the questions' order: prompts of one length are generated
        together (no padding, which the models have no mask for)."""
        answers: list[str] = [""] * len(self.prompts)
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(self.prompts):
            by_length.setdefault(len(prompt), []).append(i)
        for indices in by_length.values():
            for start in range(0, len(indices), BATCH):
                chunk = indices[start : start + BATCH]
                prompts = torch.tensor([self.prompts[i] for i in chunk], device=device)
                for i, ids in zip(chunk, answer(prompts).tolist(), strict=True):
                    answers[i] = self.decode(ids)
        return answers


def _continue_cut(window: list[int], new: int, _mask, decode) -> tuple[list[int], str, str]:
    """(prompt ids, question, ground truth): the first half, and the `new` tokens after it."""
    half = len(window) // 2
    return window[:half], decode(window[:half]), decode(window[half : half + new])


def _fill_cut(window: list[int], new: int, mask: int, decode) -> tuple[list[int], str, str]:
    """(prompt ids, question, ground truth): the window with up to `new` tokens in its middle
    masked (at most half of it), and those tokens."""
    size = min(new, len(window) // 2)
    start = (len(window) - size) // 2
    end = start + size
    prompt = window[:start] + [mask] * size + window[end:]
    question = f"{decode(window[:start])}{MASK_SHOWN}{decode(window[end:])}"
    return prompt, question, decode(window[start:end])


def mauve(reference: np.ndarray, generated: np.ndarray, *, seed: int = 25) -> float:
    """MAUVE (mauve-text) between two sets of embeddings (N, D): 1 when they are spread alike."""
    import mauve as mauve_text

    result = mauve_text.compute_mauve(
        p_features=reference, q_features=generated, seed=seed, verbose=False
    )
    if np.array_equal(result.p_hist, result.q_hist):
        # The divergence curve is then the one point (1, 1): MAUVE 1. mauve-text 0.4 sorts the
        # curve's tied points in no fixed order and may give 0.75 instead.
        return 1.0
    return float(result.mauve)


def _table(items: list[Item], raw, scores, *, step: int) -> dict[str, list]:
    """Columns of the answers table: step, the question's parts, the answer, each score and its
    raw value; rows by their mean score, lowest first."""

    def mean_score(i: int) -> float:
        given = [s[i] for s in scores.values() if s[i] is not None]
        return float(np.mean(given)) if given else 0.0

    order = sorted(range(len(items)), key=mean_score)
    table: dict[str, list] = {
        "step": [step] * len(items),
        "question": [items[i].question for i in order],
        "context": [items[i].context for i in order],
        "ground_truth": [items[i].ground_truth for i in order],
        "answer": [items[i].answer for i in order],
    }
    for metric in scores:
        table[metric] = [scores[metric][i] for i in order]
        if metric in raw:
            table[f"{metric}_raw"] = [round(raw[metric][i], 4) for i in order]
    return table
