"""Commands that check, plan and train a job: ls, check, validate, plan, run, prepare, sweep."""

import json
import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from gentrain.cli.common import (
    AddressOption,
    AllowDataChange,
    SetOption,
    app,
    check_data,
    check_run_id,
    fail,
    fault,
    load_job,
    out,
    resolve_auto,
    short,
    ui_address,
    warn,
)
from gentrain.cli.progress import TrainingProgress, print_summary
from gentrain.errors import GentrainError, SpecError
from gentrain.redact import redact


@app.command("ls")
def list_components() -> None:
    """Families with their flavors, strategies, data sources, evaluation features, and sweep
    search algorithms and schedulers."""
    from typing import get_args

    from gentrain.families import all_families
    from gentrain.spec_sections import BUILTIN_CORPORA, BUILTIN_IMAGES, FEATURE_EXTRACTORS
    from gentrain.spec_sweep import SweepSection
    from gentrain.strategies import STRATEGIES

    table = Table(title="model families", title_justify="left")
    for column in ("family", "modality", "flavors", "eval metrics"):
        table.add_column(column)
    try:
        families = all_families(installed=True)
    except SpecError as error:  # an installed package's family that does not load
        fail(str(error), 2)
    for name, family in families.items():
        metrics = ", ".join(family.eval_metrics)
        table.add_row(name, family.modality, ", ".join(family.flavors), metrics)
    out.print(table, soft_wrap=False)  # cells wrap within the table
    offers: dict[tuple[str, ...], list[str]] = {}
    for name, family in families.items():
        if family.text_metrics:
            offers.setdefault(family.text_metrics, []).append(name)
    for metrics, names in offers.items():  # asked for by name in eval.metrics
        out.print(f"text quality:    {', '.join(names)}: {', '.join(metrics)}")
    out.print("your own:        model.family: package.module:NAME (a FamilySpec; see README)")
    out.print(f"strategies:      {', '.join(STRATEGIES)}")
    builtin = ", ".join(f"builtin:{name}" for name in (*BUILTIN_IMAGES, *BUILTIN_CORPORA))
    sources = "images:DIR, parquet:PATH, text:PATH, prepared:DIR (local or s3://)"
    out.print(f"data sources:    {builtin}, {sources}")
    out.print(f"eval features:   {', '.join(FEATURE_EXTRACTORS)}")
    sweep = SweepSection.model_fields
    out.print(f"searches:        {', '.join(get_args(sweep['search'].annotation))}")
    out.print(f"schedulers:      {', '.join(get_args(sweep['scheduler'].annotation))}")


@app.command()
def check(
    family: str,
    flavor: Annotated[
        str | None, typer.Option("--flavor", help="Default: debug, else the first flavor.")
    ] = None,
) -> None:
    """Run the conformance checks on a family (built-in, installed, or package.module:NAME from
    the working directory) on the CPU, and say which strategies it supports."""
    from gentrain.families import get_family
    from gentrain.families.user import search_in

    search_in(Path.cwd())
    try:
        spec = get_family(family)
        flavor = flavor or spec.smallest_flavor
        spec.config(flavor=flavor, overrides={})
    except SpecError as error:
        fail(f"FAMILY {family}: {str(error).split(': ', 1)[1]}", 2)
    from gentrain import conformance

    outcomes = conformance.run_checks(spec, flavor=flavor)
    table = Table(title=f"{family} ({flavor}): conformance", title_justify="left")
    for column in ("check", "result", "detail", "seconds"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(outcome.check, outcome.result, outcome.detail, f"{outcome.seconds:.2f}")
    out.print(table, soft_wrap=False)
    table = Table(title="strategies", title_justify="left")
    for column in ("strategy", "supported", "why"):
        table.add_column(column)
    for strategy, supported, why in conformance.strategy_support(spec, outcomes):
        table.add_row(strategy, "yes" if supported else "no", why)
    out.print(table, soft_wrap=False)
    failed = [outcome.check for outcome in outcomes if outcome.result == "FAIL"]
    passed = sum(outcome.result == "pass" for outcome in outcomes)
    total = sum(outcome.seconds for outcome in outcomes)
    if failed:
        fail(f"{family}: {len(failed)} checks failed: {', '.join(failed)}", 1)
    out.print(f"ok: {family} passes {passed} checks in {total:.1f} s", markup=False)


@app.command()
def validate(spec: str, sets: SetOption = []) -> None:  # noqa: B006  (typer reads the default)
    """Validate a job spec and the local data it names; starts nothing."""
    job = load_job(spec, sets)
    check_data(job, on_s3=False)
    auto = job.train.strategy == "auto"
    job, _ = resolve_auto(job)
    sweep = job.sweep
    searched = ""
    if sweep is not None:
        count = sweep.trials
        if sweep.search == "grid":
            count = math.prod(len(dist["grid"]) for dist in sweep.space.values())
        trials = f"{count} trials"
        searched = f"; a {sweep.search} sweep of {trials} over {', '.join(sweep.space)}"
    out.print(
        f"ok: {spec} is a valid {job.model.family} job ({'auto: ' * auto}{job.train.strategy}, "
        f"{job.train.workers} workers, {job.train.max_steps} steps){searched}",
        markup=False,
    )


@app.command()
def plan(
    spec: str,
    sets: SetOption = [],  # noqa: B006
    device_memory: Annotated[
        str | None,
        typer.Option(
            "--device-memory",
            help="Memory per worker, e.g. 24GiB (default: the first GPU's, else the RAM here).",
        ),
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option("--workers", help="Worker counts to plan, e.g. 1,2,4 (default: the spec's)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """What the job needs per worker under each strategy, whether it fits, and the one to use.
    Builds the model and measures one micro-batch on this machine; starts nothing."""
    from gentrain.plan import make_plan, parse_size
    from gentrain.plan.show import show

    job = load_job(spec, sets)
    memory = None
    if device_memory is not None:
        try:
            memory = parse_size(device_memory)
        except ValueError as error:
            fail(f"--device-memory: {error} (got {device_memory!r})", 2)
    counts = None
    if workers is not None:
        try:
            counts = sorted({int(part) for part in workers.split(",")})
        except ValueError:
            counts = [0]
        if min(counts) < 1:
            fail(f"--workers: worker counts of 1 or more, such as 1,2,4 (got {workers!r})", 2)
    planned = make_plan(job, memory=memory, workers=counts)
    if as_json:
        out.print_json(json.dumps(planned.json_rows()))
    else:
        show(planned, out)


@app.command()
def run(
    spec: str,
    sets: SetOption = [],  # noqa: B006
    address: AddressOption = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="MLflow run id to continue.")
    ] = None,
    allow_data_change: AllowDataChange = False,
) -> None:
    """Train one job on Ray (embedded local Ray unless --address / RAY_ADDRESS)."""
    job = load_job(spec, sets)
    check_run_id(resume, "--resume")
    check_data(job)
    job, planned = resolve_auto(job)
    from gentrain import launch
    from gentrain.tracking import source

    progress = TrainingProgress(job.train.max_steps)
    try:
        with progress:
            result = launch.run(
                job,
                address=address,
                resume_run_id=resume,
                allow_data_change=allow_data_change,
                on_start=progress.started,
                on_progress=progress.update,
                on_warning=warn,
                source_tags=source.of_spec(spec),
                planned=planned,
            )
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)
    print_summary(result, shown=("loss", *job.eval_metrics, "step"))
    if result.kept_in:
        warn(
            f"the tracking store {redact(result.tracking_uri)} did not come back: what it lacks "
            f"of this run (metrics, samples, model, its end) is kept in {result.kept_in}; send "
            f"it with: gentrain runs upload {result.kept_in}"
        )


@app.command()
def prepare(
    spec: str,
    sets: SetOption = [],  # noqa: B006
    address: AddressOption = None,
    out_path: Annotated[
        str | None,
        typer.Option(
            "--out", help="Where the shards go (local or s3://); default .gentrain/prepared/NAME."
        ),
    ] = None,
) -> None:
    """Decode and resize images or tokenize text once, on Ray Data over every CPU of the cluster,
    into shards and a manifest that `data.source: prepared:PATH` trains from."""
    job = load_job(spec, sets)
    check_data(job)
    from gentrain import cluster
    from gentrain.data.prepare import default_out
    from gentrain.data.prepare import prepare as prepare_data

    where = out_path or default_out(job.name)
    started = time.monotonic()
    bar = Progress(
        TextColumn("[bold]prepare"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
        TextColumn("{task.fields[rate]}"), console=out, disable=not out.is_terminal,
    )  # fmt: skip
    task = bar.add_task("prepare", total=None, rate="")
    examples = 0

    def on_shard(count: int, total: int) -> None:
        nonlocal examples
        examples += count
        rate = examples / max(time.monotonic() - started, 1e-9)
        bar.update(task, total=total, advance=1, rate=f"{examples} examples, {rate:.0f}/s")

    try:
        cluster.connect(address)
        with bar:
            done = prepare_data(job.data, where, on_shard=on_shard)
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)
    seconds = time.monotonic() - started
    total = done.examples["train"] + done.examples["heldout"]
    how = "already prepared" if done.already else f"prepared in {seconds:.1f} s"
    if not done.already:
        how += f" ({total / seconds:.0f} examples/s, {done.reused} shards kept from before)"
    out.print(
        f"{how}: {done.examples['train']} training and {done.examples['heldout']} held-out "
        f"examples in {done.shards} shards ({done.bytes / 2**20:.1f} MiB) at {done.location}\n"
        f"train from it: --set data.source=prepared:{done.location}",
        markup=False,
        highlight=False,
    )


@app.command()
def sweep(
    spec: str,
    sets: SetOption = [],  # noqa: B006
    address: AddressOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Finish this spec's sweep after its driver died.")
    ] = False,
) -> None:
    """Hyperparameter sweep over the spec's `sweep.space` with Ray Tune: one MLflow parent run,
    one child run per trial."""
    job = load_job(spec, sets)
    if job.sweep is None:
        fail(f"{spec}: sweep: this spec has no sweep section; `gentrain run` trains it", 2)
    check_data(job)
    job, _ = resolve_auto(job)  # once, for every trial
    from gentrain import sweep as sweep_module
    from gentrain.tracking import source

    def started(parent_id: str) -> None:
        out.print(f"MLflow parent run {parent_id}: starting the sweep...", markup=False)

    def trial_ended(trial) -> None:
        values = ", ".join(f"{k}={short(v)}" for k, v in trial.values.items())
        metric = "-" if trial.metric is None else f"{trial.metric:.4g}"
        why = f"  ({trial.reason})" if trial.reason else ""
        out.print(
            f"trial {trial.trial_id} {trial.status.lower()}: {job.sweep.metric} {metric}  "
            f"{values}{why}",
            markup=False,
            highlight=False,
        )

    try:
        result = sweep_module.run(
            job,
            address=address,
            resume=resume,
            on_start=started,
            on_trial=trial_ended,
            on_note=lambda text: out.print(text, markup=False, highlight=False),
            source_tags=source.of_spec(spec),
        )
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)
    out.print()
    out.print(
        f"[bold green]done[/]: sweep {result.parent_run_id} in experiment '{result.experiment}'"
    )
    out.print(
        f"best: {result.metric} {result.best_value:.4g} (run {result.best_run_id})", markup=False
    )
    out.print(
        f"compare: gentrain runs compare {result.experiment} --parent {result.parent_run_id}",
        markup=False,
    )
    out.print(f"look at it: {ui_address(result.tracking_uri, result.view)}", markup=False)
