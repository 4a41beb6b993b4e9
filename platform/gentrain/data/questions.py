"""The questions a text family answers at each evaluation, for its text-quality metrics.

`eval.dataset` names a file of them: JSON lines, CSV or Parquet, local or s3://, with the column
`question` and, as the metrics need them, `context` and `ground_truth`. Without it, pairs are cut
from held-out windows (metrics/text.py): the window's first half is the question (and its
context), the tokens that follow it the ground truth.

Imports no torch: the CLI reads the file before anything starts.
"""

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from gentrain.errors import GentrainError, SpecError, first_line
from gentrain.storage import read_bytes

COLUMNS = ("question", "context", "ground_truth")
# the columns each text-quality metric reads besides the model's answer (mauve compares the
# answers with the ground truths)
NEEDS = {
    "similarity": ("question", "ground_truth"),
    "relevance": ("question",),
    "groundedness": ("question", "context"),
    "coherence": ("question",),
    "fluency": ("question",),
    "mauve": ("question", "ground_truth"),
}


@dataclass(frozen=True)
class Question:
    question: str
    context: str | None = None
    ground_truth: str | None = None


def read(location: str, *, limit: int | None = None) -> list[Question]:
    """The file's first `limit` questions (all by default); rows without a question are skipped."""
    return _questions(_table(location), limit=limit)


def columns(location: str) -> tuple[str, ...]:
    """The columns the file has, of `question`, `context` and `ground_truth`; SpecError when it
    has no question or cannot be read."""
    table = _table(location)
    present = tuple(c for c in COLUMNS if c in table.column_names)
    if "question" not in present:
        raise SpecError(
            f"eval.dataset: {location} has no column 'question' (it has "
            f"{', '.join(table.column_names) or 'none'}); columns: {', '.join(COLUMNS)}"
        )
    if not _questions(table, limit=1):
        raise SpecError(f"eval.dataset: {location} holds no question")
    return present


def check(location: str | None, metrics: tuple[str, ...]) -> None:
    """Refuse, before anything starts, an eval.dataset that cannot be read or lacks a column that
    one of `metrics` reads."""
    if location is None or not metrics:
        return
    present = columns(location)
    for metric in metrics:
        for column in NEEDS[metric]:
            if column not in present:
                raise SpecError(
                    f"eval.metrics: {metric} needs the column '{column}' of eval.dataset "
                    f"{location}, which has {', '.join(present)}"
                )


def _questions(table: pa.Table, *, limit: int | None) -> list[Question]:
    table = table.select([c for c in COLUMNS if c in table.column_names])
    rows = (table.slice(0, limit) if limit is not None else table).to_pylist()
    return [
        Question(**{key: _text(value) for key, value in row.items()})
        for row in rows
        if row.get("question") not in (None, "")
    ]


def _table(location: str) -> pa.Table:
    try:
        buffer = io.BytesIO(read_bytes(location))
        lowered = location.lower()
        if lowered.endswith(".csv"):
            return pyarrow.csv.read_csv(buffer)
        if lowered.endswith(".jsonl"):
            return pyarrow.json.read_json(buffer)
        return pq.read_table(buffer)
    except GentrainError as err:
        raise SpecError(f"eval.dataset: {err}") from None
    except (OSError, pa.ArrowException) as err:
        raise SpecError(f"eval.dataset: {location} cannot be read: {first_line(err)}") from None


def _text(value) -> str | None:
    """A cell as text; empty (CSV has no null) or null: None."""
    return None if value is None or value == "" else str(value)
