"""The five text-quality metrics scored by a judge model through MLflow's GenAI judges
(`eval.judge: openai:/gpt-4o-mini`, or any `<provider>:/<model>` MLflow knows).

Each judge's prompt states the metric's definition as the seed articles word it and asks for an
integer 1-5. Credentials and endpoints come from the environment the provider reads (for OpenAI
and OpenAI-compatible servers: OPENAI_API_KEY, OPENAI_API_BASE); gentrain never logs them.
"""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from gentrain.errors import SpecError, first_line

# what each judge reads: {{ inputs }} holds the question (and the context), {{ outputs }} the
# answer, {{ expectations }} the ground truth
INSTRUCTIONS = {
    "groundedness": (
        "Groundedness: are the claims of the generated answer in {{ outputs }} supported by the "
        "context given in {{ inputs }}? 1: none of them is; 5: every claim is."
    ),
    "relevance": (
        "Relevance: how well does the answer in {{ outputs }} relate to the question (and the "
        "context, where one is given) in {{ inputs }}? 1: not at all; 5: fully."
    ),
    "coherence": (
        "Coherence: does the answer in {{ outputs }} to the question in {{ inputs }} flow "
        "smoothly, read naturally and resemble human language? 1: not at all; 5: fully."
    ),
    "fluency": (
        "Fluency: how good are the grammar, syntax and vocabulary of the answer in {{ outputs }} "
        "to the question in {{ inputs }}? 1: very poor; 5: flawless."
    ),
    "similarity": (
        "Similarity: how similar is the answer in {{ outputs }} to the ground-truth answer in "
        "{{ expectations }}, for the question in {{ inputs }}? 1: unrelated; 5: the same "
        "meaning."
    ),
}
SCALE = "Rate it with one integer from 1 to 5."
CALLS_AT_ONCE = 8  # judge requests in flight


def check_uri(uri: str | None) -> None:
    """Refuse a judge URI that MLflow cannot parse (before anything starts)."""
    if uri is None:
        return
    from mlflow.exceptions import MlflowException

    try:
        _judge("similarity", uri)
    except MlflowException as err:
        raise SpecError(f"eval.judge: {first_line(err)}") from None


class Judges:
    """One MLflow judge per metric."""

    def __init__(self, uri: str, metrics: Sequence[str]):
        self.judges = {metric: _judge(metric, uri) for metric in metrics if metric in INSTRUCTIONS}
        self.first_error: str | None = None  # what first went wrong in the latest score()

    def score(self, items) -> dict[str, list[int | None]]:
        """Each metric's 1-5 score of each item (None where the judge gave none)."""
        self.first_error = None
        work = [(metric, i) for metric in self.judges for i in range(len(items))]
        with ThreadPoolExecutor(CALLS_AT_ONCE) as pool:
            found = list(pool.map(lambda job: self._one(job[0], items[job[1]]), work))
        scores: dict[str, list[int | None]] = {metric: [] for metric in self.judges}
        for (metric, _), value in zip(work, found, strict=True):
            scores[metric].append(value)
        return scores

    def _one(self, metric: str, item) -> int | None:
        inputs = {"question": item.question}
        if item.context is not None:
            inputs["context"] = item.context
        try:
            feedback = self.judges[metric](
                inputs=inputs,
                outputs={"answer": item.answer},
                expectations={"ground_truth": item.ground_truth or ""},
            )
        except Exception as err:  # an answer the judge cannot rate must not end the training run
            return self._failed(metric, first_line(err))
        value = feedback.value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            error = feedback.error.error_message if feedback.error else f"gave {value!r}"
            return self._failed(metric, first_line(Exception(error)))
        return value

    def _failed(self, metric: str, why: str) -> None:
        self.first_error = self.first_error or f"{metric}: {why}"
        return None


def _judge(metric: str, uri: str):
    from mlflow.genai.judges import make_judge

    return make_judge(
        name=metric,
        instructions=f"{INSTRUCTIONS[metric]} {SCALE}",
        model=uri,
        feedback_value_type=int,
        inference_params={"temperature": 0},
    )
