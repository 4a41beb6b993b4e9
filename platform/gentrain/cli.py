"""The gentrain command line: parses, calls the Python API, prints.

Bad input exits 2 with one line on stderr; a failed run exits 1."""

import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

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


def _fail(message: str, code: int) -> None:
    err.print(f"error: {redact(message)}", markup=False, highlight=False)
    raise typer.Exit(code)


def _fault(error: Exception) -> None:
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
    _fail(text + hint, 1)


def _tracebacks_shown() -> bool:
    from gentrain import cluster

    return os.environ.get("GENTRAIN_DEBUG", "0") not in ("", "0") or cluster.in_submitted_job()


def _internal(error: Exception) -> str:
    said = f": {first_line(error)}" if str(error).strip() else ""
    return f"internal error: {type(error).__name__}{said}"


def _check_run_id(run_id: str | None, option: str) -> None:
    from gentrain.tracking import check_run_id

    if run_id is not None:
        try:
            check_run_id(run_id, option)
        except SpecError as error:
            _fail(str(error), 2)


def _check_data(job, *, on_s3: bool = True) -> None:
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
        _fail(str(error), 2)
    except GentrainError as error:  # S3 did not answer, or refused these credentials
        _fault(error)


def _resolved(job):
    """A spec under train.strategy: auto, in the layout the plan picks (said in one line);
    other specs as they are. Nothing fits: one line, exit 2."""
    if job.train.strategy != "auto":
        return job, None
    from gentrain import plan

    try:
        resolved, planned = plan.resolve(job)
    except SpecError as error:
        _fail(str(error), 2)
    out.print(f"train.strategy auto: {planned.reason()}", markup=False, highlight=False)
    return resolved, planned


def _load(spec_path: str, sets: list[str]):
    from gentrain import spec as spec_module

    try:
        return spec_module.load(spec_path, sets)
    except SpecError as error:
        _fail(str(error), 2)


@app.command("ls")
def list_components() -> None:
    """Families with their flavors, strategies, data sources, evaluation features, and sweep
    search algorithms and schedulers."""
    from typing import get_args

    from gentrain.families import all_families
    from gentrain.spec import BUILTIN_CORPORA, BUILTIN_IMAGES, FEATURE_EXTRACTORS, SweepSection
    from gentrain.strategies import STRATEGIES

    table = Table(title="model families", title_justify="left")
    for column in ("family", "modality", "flavors", "eval metrics"):
        table.add_column(column)
    try:
        families = all_families(installed=True)
    except SpecError as error:  # an installed package's family that does not load
        _fail(str(error), 2)
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
        _fail(f"FAMILY {family}: {str(error).split(': ', 1)[1]}", 2)
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
        _fail(f"{family}: {len(failed)} checks failed: {', '.join(failed)}", 1)
    out.print(f"ok: {family} passes {passed} checks in {total:.1f} s", markup=False)


@app.command()
def validate(spec: str, sets: SetOption = []) -> None:  # noqa: B006  (typer reads the default)
    """Validate a job spec and the local data it names; starts nothing."""
    job = _load(spec, sets)
    _check_data(job, on_s3=False)
    auto = job.train.strategy == "auto"
    job, _ = _resolved(job)
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

    job = _load(spec, sets)
    memory = None
    if device_memory is not None:
        try:
            memory = parse_size(device_memory)
        except ValueError as error:
            _fail(f"--device-memory: {error} (got {device_memory!r})", 2)
    counts = None
    if workers is not None:
        try:
            counts = sorted({int(part) for part in workers.split(",")})
        except ValueError:
            counts = [0]
        if min(counts) < 1:
            _fail(f"--workers: worker counts of 1 or more, such as 1,2,4 (got {workers!r})", 2)
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
    job = _load(spec, sets)
    _check_run_id(resume, "--resume")
    _check_data(job)
    job, planned = _resolved(job)
    from gentrain import launch
    from gentrain.tracking import source

    progress = _TrainingProgress(job.train.max_steps)
    try:
        with progress:
            result = launch.run(
                job,
                address=address,
                resume_run_id=resume,
                allow_data_change=allow_data_change,
                on_start=progress.started,
                on_progress=progress.update,
                on_warning=_warn,
                source_tags=source.of_spec(spec),
                planned=planned,
            )
    except SpecError as error:
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)
    _print_summary(result, shown=("loss", *job.eval_metrics, "step"))
    if result.kept_in:
        _warn(
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
    job = _load(spec, sets)
    _check_data(job)
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
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)
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


def _warn(text: str) -> None:
    err.print(f"warning: {redact(text)}", markup=False, highlight=False)


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
    job = _load(spec, sets)
    if job.sweep is None:
        _fail(f"{spec}: sweep: this spec has no sweep section; `gentrain run` trains it", 2)
    _check_data(job)
    job, _ = _resolved(job)  # once, for every trial
    from gentrain import sweep as sweep_module
    from gentrain.tracking import source

    def started(parent_id: str) -> None:
        out.print(f"MLflow parent run {parent_id}: starting the sweep...", markup=False)

    def trial_ended(trial) -> None:
        values = ", ".join(f"{k}={_short(v)}" for k, v in trial.values.items())
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
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)
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
    out.print(f"look at it: {_ui_address(result.tracking_uri, result.view)}", markup=False)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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
        _fail(f"DIRECTORY: {directory} is not a run's outbox (no {outbox.RUN})", 2)
    kept = [directory] if directory else sorted(tracking.outbox_root().glob("*/"))
    if not kept:
        out.print("nothing to upload", markup=False)
    for path in kept:
        try:
            run_id = outbox.upload(path)
        except SpecError as error:  # refused these credentials
            _fail(f"{path}: {error}; nothing is lost", 2)
        except Exception as error:  # the store's own errors: still away, refused...
            problem = first_line(error)[:160]
            _fail(
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

    _check_run_id(parent, "--parent")
    try:
        uri = tracking.resolve_tracking_uri(tracking_uri=tracking_uri)
        tracking.check_reachable(uri, experiment=experiment)
        comparison = tracking.compare(uri=uri, experiment=experiment, parent_id=parent)
    except SpecError as error:
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)
    if not comparison.rows:
        _fail(f"EXPERIMENT: no runs in '{experiment}'" + (f" under {parent}" if parent else ""), 2)
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

    _check_run_id(parent, "--parent")
    if out_path is not None and not out_path.parent.is_dir():
        _fail(f"--out: no directory {out_path.parent} to write {out_path.name} in", 2)
    try:
        uri = tracking.resolve_tracking_uri(tracking_uri=tracking_uri)
        tracking.check_reachable(uri, experiment=experiment)
        best = best_trial(uri=uri, experiment=experiment, parent_id=parent)
    except SpecError as error:
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)
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
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)
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
        cells += [_short(row[name]) if name in row else "" for name in comparison.metrics]
        table.add_row(*cells)
    if out.is_terminal:
        out.print(table, soft_wrap=False)  # cells wrap within the table
    else:
        Console(width=100_000, emoji=False).print(table, soft_wrap=False)


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

    job = _load(spec, sets)  # nothing is submitted for an invalid spec
    _check_run_id(resume, "--resume")
    command = "sweep" if job.sweep is not None else "run"
    if resume and command == "sweep":
        _fail("--resume: continues a run; resume a sweep with `gentrain sweep SPEC --resume`", 2)
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
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)
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
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)


def _existing_job_status(client, job_id: str) -> str:
    from gentrain import cluster

    try:
        return cluster.job_status(client, job_id)
    except SpecError as error:
        _fail(str(error), 2)


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


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it.")] = "127.0.0.1",
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve beyond loopback with no sign-in.")
    ] = False,
) -> None:
    """Open the MLflow UI on the configured store (127.0.0.1 unless --host). With
    MLFLOW_AUTH_CONFIG_PATH (MLflow's basic-auth config) it asks for a user and password."""
    from gentrain import tracking

    try:
        uri = tracking.resolve_tracking_uri()
        if uri.startswith(("http://", "https://")):
            out.print(f"the tracking server serves its own UI: {redact(uri)}", markup=False)
            return
        sign_in = tracking.ui_sign_in(host, insecure=insecure)
        tracking.check_reachable(uri)  # a new local store is made here, never by two at once
    except SpecError as error:
        _fail(str(error), 2)
    except GentrainError as error:
        _fault(error)
    argv, env = tracking.ui_command(uri, host=host, port=port, sign_in=sign_in)
    if sign_in:
        shown = "sign-in required: MLflow's basic-auth app, MLFLOW_AUTH_CONFIG_PATH"
    elif tracking.is_loopback(host):
        shown = "no sign-in: your local store, reachable from this machine only"
    else:
        shown = "no sign-in: --insecure"
        err.print(
            f"warning: the MLflow UI listens on {host} without sign-in: anyone who reaches it "
            "can read and delete your runs",
            markup=False,
        )
    out.print(f"MLflow UI on http://{host}:{port} ({shown}; Ctrl-C stops it)", markup=False)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)


class _TrainingProgress:
    """step / max_steps, loss, samples/s and ETA, drawn by the driver from rank 0's reports: a live
    bar on a terminal, a plain line every few seconds when the output is a file or a pipe."""

    PLAIN_INTERVAL = 10.0  # seconds between plain lines

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.live = out.is_terminal
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=out,
            disable=not self.live,
        )
        self.task = self.bar.add_task("starting", total=max_steps, stats="")
        self.latest: dict[str, float] = {}
        self.first: tuple[int, float] | None = None  # (step, time) of the first report
        self.last_plain = 0.0

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def started(self, run_id: str) -> None:
        self.bar.update(self.task, description=f"run {run_id[:8]}")
        out.print(f"MLflow run {run_id}: starting Ray workers...", markup=False)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if self.first is None:  # a resumed run starts part way: rate and ETA count from here
            self.first = (step, now)
            self.bar.reset(self.task, total=self.max_steps, completed=step)
        self.latest.update(metrics)
        shown = [f"{k} {self.latest[k]:.4g}" for k in ("loss", "fid", "is") if k in self.latest]
        if "samples_per_sec" in self.latest:
            shown.append(f"{self.latest['samples_per_sec']:.0f} samples/s")
        self.bar.update(self.task, completed=step, stats="  ".join(shown))
        if not self.live and (
            now - self.last_plain >= self.PLAIN_INTERVAL or step == self.max_steps
        ):
            self.last_plain = now
            out.print(
                f"step {step}/{self.max_steps}  {'  '.join(shown)}  eta {self._eta(step, now)}",
                markup=False,
                highlight=False,
            )

    def _eta(self, step: int, now: float) -> str:
        first_step, first_time = self.first
        if step <= first_step:
            return "-"
        seconds = (now - first_time) / (step - first_step) * (self.max_steps - step)
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _print_summary(result, *, shown: tuple[str, ...]) -> None:
    """What the run ended with: its `shown` metrics (the loss, the job's evaluation metrics)."""
    out.print()
    out.print(
        f"[bold green]done[/]: MLflow run {result.run_id} in experiment '{result.experiment}'"
    )
    final = {k: result.metrics[k] for k in shown if k in result.metrics}
    if final:
        out.print("final: " + "  ".join(f"{k} {v:.4g}" for k, v in final.items()), markup=False)
    out.print(f"tracking store: {redact(result.tracking_uri)}", markup=False)
    address = _ui_address(result.tracking_uri, f"#/runs/{result.run_id}")
    out.print(f"look at it: {address}", markup=False)


def _ui_address(tracking_uri: str, path: str) -> str:
    """Where the MLflow UI shows `path`: on the tracking server, else on `gentrain ui`."""
    if tracking_uri.startswith(("http://", "https://")):  # a server: its UI is there
        return f"{redact(tracking_uri).rstrip('/')}/{path}"
    return f"gentrain ui   (then open http://127.0.0.1:5000/{path})"


def main() -> None:
    try:
        app()
    except SystemExit as end:
        _exit(end.code)
    except Exception as error:  # a fault gentrain did not foresee: still one line
        try:
            _fault(error)
        except typer.Exit as end:
            _exit(end.exit_code)


def _exit(code: int | str | None) -> None:
    """Once a command has used Ray (run, sweep), stop it and end the process without Python's
    own teardown: Ray's shutdown at exit sleeps 0.5 s for logs the driver does not show, and
    unloading torch and MLflow takes over 1 s more, all after the run's result is printed.
    Everything the command wrote is closed by then: runs ended, files written, output flushed."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        raise SystemExit(code)
    import logging

    from gentrain import cluster

    cluster.shutdown()
    logging.shutdown()
    if isinstance(code, str):  # SystemExit's own convention: the message, then status 1
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
