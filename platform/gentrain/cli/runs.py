"""`gentrain runs`: upload, compare, best, reconcile."""

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from gentrain.cli.common import (
    AddressOption,
    app,
    check_run_id,
    err,
    fail,
    fault,
    out,
    short,
)
from gentrain.errors import GentrainError, SpecError, first_line

runs_app = typer.Typer(no_args_is_help=True, help="Look at tracked runs.")
app.add_typer(runs_app, name="runs")


@runs_app.command("upload")
def upload_runs(
    directory: Annotated[
        Path | None,
        typer.Argument(help="A run's outbox; default: every one under ./.gentrain/outbox."),
    ] = None,
) -> None:
    """Send what runs kept in their outbox while the tracking store was away (metrics,
    samples, model, their end) to the store they belong to."""
    from gentrain import tracking
    from gentrain.tracking import outbox

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a store still away: say so
    if directory is not None and not (directory / outbox.RUN).is_file():
        fail(f"DIRECTORY: {directory} is not a run's outbox (no {outbox.RUN})", 2)
    kept = [directory] if directory else sorted(tracking.outbox_root().glob("*/"))
    if not kept:
        out.print("nothing to upload", markup=False)
    for path in kept:
        try:
            run_id = outbox.upload(path)
        except SpecError as error:  # refused these credentials
            fail(f"{path}: {error}; nothing is lost", 2)
        except Exception as error:  # the store's own errors: still away, refused...
            problem = first_line(error)[:160]
            fail(
                f"{path}: the store did not take it; nothing is lost, try again later ({problem})",
                1,
            )
        out.print(f"uploaded run {run_id} from {path}", markup=False)


@runs_app.command("compare")
def compare_runs(
    experiment: str,
    parent: Annotated[
        str | None, typer.Option("--parent", help="Only this sweep's trials (its parent run id).")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="Default: MLFLOW_TRACKING_URI, else ./mlflow.db."),
    ] = None,
    form: Annotated[
        Literal["table", "csv", "json"],
        typer.Option(
            "--format", help="table (a row a run; unwrapped when not a terminal), csv or json."
        ),
    ] = "table",
) -> None:
    """An experiment's runs (or one sweep's trials): the params that differ and the final
    metrics, best first."""
    from gentrain import tracking

    check_run_id(parent, "--parent")
    try:
        uri = tracking.resolve_tracking_uri(tracking_uri=tracking_uri)
        tracking.check_reachable(uri, experiment=experiment)
        comparison = tracking.compare(uri=uri, experiment=experiment, parent_id=parent)
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)
    if not comparison.rows:
        fail(f"EXPERIMENT: no runs in '{experiment}'" + (f" under {parent}" if parent else ""), 2)
    if form == "csv":
        sys.stdout.write(comparison.csv())
    elif form == "json":
        sys.stdout.write(json.dumps({"experiment": experiment, **asdict(comparison)}, indent=1))
        sys.stdout.write("\n")
    else:
        _print_comparison(comparison, title=f"{experiment}: best {comparison.metric} first")


@runs_app.command("best")
def best_run(
    experiment: str,
    parent: Annotated[
        str | None,
        typer.Option("--parent", help="This sweep's best trial (its parent run id)."),
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Write the spec here (default: print it).")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="Default: MLFLOW_TRACKING_URI, else ./mlflow.db."),
    ] = None,
) -> None:
    """The best finished trial of a sweep (default: of the experiment's sweeps) as a job spec,
    without its sweep section: `gentrain run` trains it, tagged with the sweep it came from."""
    from gentrain import tracking
    from gentrain.tracking.best import best_trial

    check_run_id(parent, "--parent")
    if out_path is not None and not out_path.parent.is_dir():
        fail(f"--out: no directory {out_path.parent} to write {out_path.name} in", 2)
    try:
        uri = tracking.resolve_tracking_uri(tracking_uri=tracking_uri)
        tracking.check_reachable(uri, experiment=experiment)
        best = best_trial(uri=uri, experiment=experiment, parent_id=parent)
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)
    text = best.job_yaml()
    values = ", ".join(f"{key}={value}" for key, value in best.values.items())
    said = (
        f"best trial: run {best.run_id} of sweep {best.parent_id}: "
        f"{best.metric} {best.value:.4g} ({values})"
    )
    if out_path is None:
        err.print(said, markup=False, highlight=False)
        sys.stdout.write(text)
        return
    out_path.write_text(text)
    out.print(said, markup=False, highlight=False)
    out.print(
        f"wrote {out_path}; train it: gentrain run {out_path} --set train.max_steps=N",
        markup=False,
        highlight=False,
    )


@runs_app.command("reconcile")
def reconcile_runs(
    experiment: Annotated[
        str | None, typer.Argument(help="Default: every experiment in the store.")
    ] = None,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Heartbeat age: 90s, 10m, 2h, 1d.")
    ] = "10m",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list the runs that would be ended.")
    ] = False,
    address: AddressOption = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="Default: MLFLOW_TRACKING_URI, else ./mlflow.db."),
    ] = None,
) -> None:
    """End as FAILED every RUNNING run whose heartbeat is older than --older-than and whose
    owner is gone (its process on this machine, its Ray job on the cluster at --address or
    the one it was submitted to; an owner that cannot be reached counts as gone). `gentrain
    run SPEC --resume RUN_ID` still continues such a run."""
    from gentrain import cluster, tracking
    from gentrain.tracking import reconcile

    try:
        limit = reconcile.parse_duration(older_than)
        uri = tracking.resolve_tracking_uri(tracking_uri=tracking_uri)
        tracking.check_reachable(uri, experiment=experiment, write=not dry_run)
        found = reconcile.abandoned(
            uri=uri,
            experiment=experiment,
            older_than=limit,
            owner_alive=lambda owner: cluster.owner_alive(owner, address),
        )
        for run in found:
            if not dry_run:
                reconcile.end(run, uri=uri)
            verb = "would end" if dry_run else "ended"
            out.print(
                f"{verb} run {run.run_id} ({run.experiment}/{run.name}) as FAILED: "
                f"heartbeat lost at step {run.step}, {_silence(run.silent_for)} ago; "
                f"owner {run.owner}",
                markup=False,
            )
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)
    if not found:
        out.print(
            f"nothing to end: no RUNNING run has a heartbeat older than {older_than} and an "
            "owner that is gone",
            markup=False,
        )


def _silence(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _print_comparison(comparison, *, title: str) -> None:
    """A row a run; in a terminal cells fold to its width, elsewhere (a file, a pipe) a row is
    one line however wide."""
    table = Table(title=f"{title} ({comparison.mode})")
    columns = ["run", "status", *comparison.params, *comparison.metrics]
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=not out.is_terminal)
    for row in comparison.rows:
        cells = [row["run_id"][:8], row["status"]]
        cells += [str(row.get(name, "")) for name in comparison.params]
        cells += [short(row[name]) if name in row else "" for name in comparison.metrics]
        table.add_row(*cells)
    if out.is_terminal:
        out.print(table, soft_wrap=False)  # cells wrap within the table
    else:
        Console(width=100_000, emoji=False).print(table, soft_wrap=False)
