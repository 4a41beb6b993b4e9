"""Jobs on a Ray cluster: `gentrain submit` and `gentrain jobs`."""

from typing import Annotated

import typer
from rich.table import Table

from gentrain.cli.common import (
    AddressOption,
    AllowDataChange,
    SetOption,
    app,
    check_run_id,
    fail,
    fault,
    load_job,
    out,
)
from gentrain.errors import GentrainError, SpecError


@app.command()
def submit(
    spec: str,
    sets: SetOption = [],  # noqa: B006
    address: AddressOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Stream the job's logs; exit with its outcome.")
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="MLflow run id of a stopped job to continue.")
    ] = None,
    allow_data_change: AllowDataChange = False,
) -> None:
    """Submit a spec to a Ray cluster's Jobs API (`gentrain run`, or `gentrain sweep` for a spec
    with a sweep section, on the cluster); the working directory ships with it."""
    from gentrain import cluster

    job = load_job(spec, sets)  # nothing is submitted for an invalid spec
    check_run_id(resume, "--resume")
    command = "sweep" if job.sweep is not None else "run"
    if resume and command == "sweep":
        fail("--resume: continues a run; resume a sweep with `gentrain sweep SPEC --resume`", 2)
    try:
        sent = cluster.submit(
            spec,
            sets,
            address=address,
            command=command,
            resume_run_id=resume,
            allow_data_change=allow_data_change,
        )
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)
    out.print(
        f"shipped {sent.shipped} ({sent.shipped_bytes / 2**20:.1f} MiB) without "
        f"{', '.join(sent.excluded)}",
        markup=False,
    )
    if sent.family_code:
        how = "as a py_module" if sent.family_code_apart else "in the working directory"
        out.print(f"shipped family {job.model.family}: {sent.family_code} ({how})", markup=False)
    elif sent.family_installed:
        out.print(
            f"family {job.model.family} comes from the installed package "
            f"{sent.family_installed}: the cluster's nodes need it installed too",
            markup=False,
        )
    out.print(f"submitted job {sent.job_id} (gentrain {command} {spec})", markup=False)
    if follow:
        _follow(address, sent.job_id)


def _follow(address: str | None, job_id: str) -> None:
    from gentrain import cluster

    client = cluster.jobs_client(address)
    status = cluster.follow_logs(client, job_id, lambda text: out.out(text, end=""))
    out.print(f"job {job_id}: {status}", markup=False)
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


jobs_app = typer.Typer(no_args_is_help=True, help="Jobs submitted to a Ray cluster.")
app.add_typer(jobs_app, name="jobs")


def _jobs_client(address: str | None):
    from gentrain import cluster

    try:
        return cluster.jobs_client(address)
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)


def _existing_job_status(client, job_id: str) -> str:
    from gentrain import cluster

    try:
        return cluster.job_status(client, job_id)
    except SpecError as error:
        fail(str(error), 2)


@jobs_app.command("list")
def jobs_list(address: AddressOption = None) -> None:
    """The cluster's jobs, newest first."""
    client = _jobs_client(address)
    table = Table()
    for column in ("job", "status", "entrypoint"):
        table.add_column(column, overflow="fold")
    for info in sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True):
        table.add_row(
            info.submission_id or info.job_id or "", str(info.status.value), info.entrypoint
        )
    out.print(table, soft_wrap=False)  # cells wrap within the table


@jobs_app.command("status")
def jobs_status(job_id: str, address: AddressOption = None) -> None:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    client = _jobs_client(address)
    out.print(_existing_job_status(client, job_id), markup=False)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str,
    address: AddressOption = None,
    follow: Annotated[bool, typer.Option("--follow", help="Until the job ends.")] = False,
) -> None:
    """The job's driver output."""
    client = _jobs_client(address)
    _existing_job_status(client, job_id)
    if follow:
        _follow(address, job_id)
    out.out(client.get_job_logs(job_id), end="")


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: AddressOption = None) -> None:
    """Stop the job: its MLflow run ends KILLED."""
    client = _jobs_client(address)
    _existing_job_status(client, job_id)
    client.stop_job(job_id)
    out.print(f"job {job_id}: stop requested", markup=False)
