"""What every command shares: the Typer app, the consoles, the options, and how bad input (exit 2,
one line) and runtime faults (exit 1, one line) are said."""

import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from gentrain.errors import GentrainError, SpecError, first_line, traceback_of
from gentrain.redact import redact

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train generative models on Ray, tracked in MLflow.",
)
# Lines are never wrapped at the console's width: piped to a file or a job's log (80 columns to
# rich), a wrapped line splits a trial's values or a run id in two.
# emoji off: a family's package.module:NAME must not turn into a pictogram (":X:")
out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)

SetOption = Annotated[
    list[str], typer.Option("--set", help="Override a spec key: --set optim.lr=3e-4 (repeatable).")
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded)."),
]
AllowDataChange = Annotated[
    bool,
    typer.Option("--allow-data-change", help="Resume although the data changed since."),
]


@app.callback()
def options(
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Print a failure's full traceback (or GENTRAIN_DEBUG=1)."),
    ] = False,
) -> None:
    if debug:
        os.environ["GENTRAIN_DEBUG"] = "1"


def fail(message: str, code: int) -> None:
    err.print(f"error: {redact(message)}", markup=False, highlight=False)
    raise typer.Exit(code)


def fault(error: Exception) -> None:
    """A runtime fault: one line, exit 1. When it comes from an error beneath gentrain's own
    words, that error's traceback goes where a person looks next: the terminal with --debug or
    GENTRAIN_DEBUG=1, and always a submitted job's log (the failed run's error.txt has it too)."""
    hint = ""
    if error.__cause__ is not None or not isinstance(error, GentrainError):
        if _tracebacks_shown():
            sys.stderr.write(redact(traceback_of(error)))
        else:
            hint = " (gentrain --debug shows the traceback)"
    text = str(error) if isinstance(error, GentrainError) else _internal(error)
    fail(text + hint, 1)


def _tracebacks_shown() -> bool:
    from gentrain import cluster

    return os.environ.get("GENTRAIN_DEBUG", "0") not in ("", "0") or cluster.in_submitted_job()


def _internal(error: Exception) -> str:
    said = f": {first_line(error)}" if str(error).strip() else ""
    return f"internal error: {type(error).__name__}{said}"


def check_run_id(run_id: str | None, option: str) -> None:
    from gentrain.tracking import check_run_id

    if run_id is not None:
        try:
            check_run_id(run_id, option)
        except SpecError as error:
            fail(str(error), 2)


def check_data(job, *, on_s3: bool = True) -> None:
    """Before Ray is imported (seconds): bad data, or a bad MLFLOW_TRACKING_URI, is refused as
    quickly as a bad spec. `on_s3`: whether S3 data is looked for too (this machine's
    credentials may not be the ones that read it)."""
    from gentrain.tracking import resolve_tracking_uri

    kind, _, location = job.data.source.partition(":")
    try:
        resolve_tracking_uri(job)
        pretrained = job.data.tokenizer not in ("byte", "bpe")
        if (kind != "builtin" or pretrained) and (on_s3 or not location.startswith("s3://")):
            from gentrain.data import check_source  # imports torch: after the quick checks
            from gentrain.families import get_family

            check_source(job.data, family=get_family(job.model.family))
        questions = job.eval.dataset
        if questions and (on_s3 or not questions.startswith("s3://")):
            from gentrain.data import questions as question_files

            question_files.check(questions, job.text_metrics)
        if job.eval.judge and job.text_metrics:
            from gentrain.metrics.judge import check_uri

            check_uri(job.eval.judge)
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:  # S3 did not answer, or refused these credentials
        fault(error)


def resolve_auto(job):
    """A spec under train.strategy: auto, in the layout the plan picks (said in one line);
    other specs as they are. Nothing fits: one line, exit 2."""
    if job.train.strategy != "auto":
        return job, None
    from gentrain import plan

    try:
        resolved, planned = plan.resolve(job)
    except SpecError as error:
        fail(str(error), 2)
    out.print(f"train.strategy auto: {planned.reason()}", markup=False, highlight=False)
    return resolved, planned


def load_job(spec_path: str, sets: list[str]):
    from gentrain import spec as spec_module

    try:
        return spec_module.load(spec_path, sets)
    except SpecError as error:
        fail(str(error), 2)


def warn(text: str) -> None:
    err.print(f"warning: {redact(text)}", markup=False, highlight=False)


def short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def ui_address(tracking_uri: str, path: str) -> str:
    """Where the MLflow UI shows `path`: on the tracking server, else on `gentrain ui`."""
    if tracking_uri.startswith(("http://", "https://")):  # a server: its UI is there
        return f"{redact(tracking_uri).rstrip('/')}/{path}"
    return f"gentrain ui   (then open http://127.0.0.1:5000/{path})"
