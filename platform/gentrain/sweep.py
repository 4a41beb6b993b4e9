"""Runs a sweep: Ray Tune over the spec's `sweep.space`, one gentrain run per trial (in the
trial's own process when train.workers == 1, a nested Ray Train TorchTrainer otherwise), a parent
MLflow run holding the sweep and its outcome, one child run per trial."""

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from gentrain import cluster, launch, plan, sweep_trial, tracking, warm_start
from gentrain.errors import GentrainError, SpecError, traceback_of
from gentrain.spec import JobSpec
from gentrain.spec_sweep import SweepSection
from gentrain.sweep_search import TIME_ATTR, StepBudget, make_scheduler, search_for
from gentrain.tracking.heartbeat import Heartbeat

TUNE_SETTINGS = {
    # Results without the metric (a checkpoint before the first evaluation) are expected:
    # schedulers and searchers skip them.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # The driver prints one line per trial; Tune's own tables and sync advice stay out.
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
AWS_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECURITY_TOKEN",
    "AWS_SESSION_TOKEN",
}
DRIVER_MEMORY = 256 * 1024**2  # reserved by a distributed trial's driving process


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    run_id: str | None
    status: str  # the child run's: FINISHED, KILLED (stopped early) or FAILED
    values: dict[str, Any]  # the sampled values of the searched keys
    metric: float | None  # the sweep metric's last value
    reason: str | None = None


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    experiment: str
    tracking_uri: str
    metric: str
    best_run_id: str | None
    best_value: float | None
    trials: list[TrialOutcome]
    view: str  # the trials side by side in the MLflow UI: its address after the server's


def run(
    spec: JobSpec,
    *,
    address: str | None = None,
    resume: bool = False,
    on_start: Callable[[str], None] | None = None,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    source_tags: dict[str, str] | None = None,
) -> SweepResult:
    sweep = spec.sweep
    if sweep is None:
        raise SpecError("sweep: this spec has no sweep section; `gentrain run` trains it")
    spec, _ = plan.resolve(spec)  # train.strategy: auto, once for every trial
    earlier, told = _read_warm_start(spec)  # before Ray starts: it may name no sweep
    uri = launch.connect(spec, address)
    sweep = sweep.model_copy(update={"concurrency": _concurrency(spec)})
    if on_note:
        for note in _notes(spec.sweep, concurrency=sweep.concurrency, earlier=earlier, told=told):
            on_note(note)
    # before anything starts: a warm start may leave nothing to run
    searching = None if resume else search_for(sweep, spec.train.max_steps, earlier)
    storage = launch.storage_path(spec)
    parent_id = _parent_run(spec, uri=uri, storage=storage, resume=resume, source_tags=source_tags)
    if on_start:
        on_start(parent_id)
    outcomes: dict[str, TrialOutcome] = {}
    _listeners[parent_id] = (outcomes, on_trial)
    heartbeat = Heartbeat(parent_id, uri=uri, owner=cluster.this_process())
    heartbeat.start()
    try:
        tuner = _tuner(
            spec,
            parent_id=parent_id,
            uri=uri,
            storage=storage,
            resume=resume,
            report=_TrialReport(spec, parent_id, uri),
            sweep=sweep,
            searching=searching,
        )
        tuner.fit()
        comparison = tracking.compare(uri=uri, parent_id=parent_id)
        tracking.log_sweep_outcome(parent_id, comparison, uri=uri)
    except KeyboardInterrupt:
        _close(parent_id, uri, "KILLED", "interrupted; `gentrain sweep SPEC --resume` goes on")
        raise
    except Exception as err:
        reason = launch.failure_reason(err)
        _close(parent_id, uri, "FAILED", reason, error=traceback_of(err))
        raise GentrainError(f"sweep {parent_id} failed: {reason}") from err
    finally:
        heartbeat.stop()
        _listeners.pop(parent_id, None)
    best = next((row for row in comparison.rows if sweep.metric in row), None)
    if best is None:
        reason = "no trial reported " + sweep.metric
        _close(parent_id, uri, "FAILED", reason)
        raise GentrainError(f"sweep {parent_id} failed: {reason}")
    if sweep.budget_steps:  # trials the budget stopped end no other way
        spent = f"stopped when sweep.budget_steps ({sweep.budget_steps}) ran out"
        tracking.end_open_trials(parent_id, uri=uri, reason=spent)
    _close(parent_id, uri, "FINISHED", None)
    return SweepResult(
        parent_run_id=parent_id,
        experiment=spec.experiment,
        tracking_uri=uri,
        metric=sweep.metric,
        best_run_id=best["run_id"],
        best_value=best[sweep.metric],
        trials=list(outcomes.values()),
        view=tracking.sweep_view_path(uri=uri, parent_id=parent_id),
    )


def _notes(sweep: SweepSection, *, concurrency: int, earlier: list, told: int) -> list[str]:
    """What the sweep made of `concurrency: auto` and `warm_start`."""
    notes = []
    if sweep.concurrency == "auto":
        trials = "1 trial" if concurrency == 1 else f"{concurrency} trials"
        notes.append(f"concurrency auto: {trials} at once, as the cluster has room")
    if sweep.warm_start:
        notes.append(
            f"warm start: {len(earlier)} of the {told} trials of {sweep.warm_start} "
            "ended in this sweep's space"
        )
    return notes


def _parent_run(
    spec: JobSpec, *, uri: str, storage: str, resume: bool, source_tags: dict[str, str] | None
) -> str:
    """The sweep's parent run: a new one, or (--resume) the unfinished one of this spec."""
    sweep = spec.sweep
    if resume:
        parent_id = tracking.unfinished_sweep_run(spec, uri=uri)
        if parent_id is None or not tune.Tuner.can_restore(f"{storage}/{parent_id}"):
            raise SpecError(
                f"--resume: no unfinished sweep of this spec in experiment '{spec.experiment}' "
                f"with its Tune state under {storage} (the spec must be unchanged)"
            )
        tracking.start_run(spec, uri=uri, resume_run_id=parent_id)
        return parent_id
    parent_id = tracking.start_sweep_run(spec, uri=uri, source_tags=source_tags)
    tracking.save_sweep_view(
        uri=uri,
        parent_id=parent_id,
        name=spec.name,
        metric=sweep.metric,
        mode=sweep.mode,
        params=list(sweep.space),
    )
    return parent_id


def _close(
    parent_id: str, uri: str, status: str, reason: str | None, error: str | None = None
) -> None:
    tracking.end_open_trials(parent_id, uri=uri, reason=reason or "the sweep ended")
    tracking.end_run(parent_id, uri=uri, status=status, reason=reason, error=error)


def _concurrency(spec: JobSpec) -> int:
    """sweep.concurrency, where auto is as many trials as the cluster's nodes hold at once."""
    sweep, train = spec.sweep, spec.train
    if sweep.concurrency != "auto":
        return sweep.concurrency
    slots = cluster.worker_slots(cpus=train.cpus_per_worker or 1, gpus=int(train.use_gpu))
    trials = (
        math.prod(len(d["grid"]) for d in sweep.space.values())
        if sweep.search == "grid"
        else sweep.trials
    )
    return max(1, min(trials, slots // train.workers))


def _read_warm_start(spec: JobSpec) -> tuple[list[warm_start.EarlierTrial], int]:
    if spec.sweep.warm_start is None:
        return [], 0
    uri = tracking.resolve_tracking_uri(spec)
    return warm_start.earlier_trials(spec.sweep, uri=uri)


def _tuner(
    spec: JobSpec,
    *,
    parent_id: str,
    uri: str,
    storage: str,
    resume: bool,
    report: tune.Callback,
    sweep: SweepSection,
    searching: tuple | None,
) -> tune.Tuner:
    """The sweep's Tuner; `sweep` is the spec's, its concurrency resolved; `searching` is what
    `search_for` made of it (None on resume: Tune restores its searcher)."""
    train = spec.train
    base = spec.to_dict()
    del base["sweep"]
    single = train.workers == 1
    threads = train.cpus_per_worker or max(1, cluster.available_cpus() // sweep.concurrency)
    setup = {
        "base": base,
        "keys": list(sweep.space),
        "parent": parent_id,
        "uri": uri,
        "threads": threads,
    }
    # A single-worker trial trains in the trial's process, which holds its resources; a
    # distributed trial's process only drives the Ray Train workers, which hold their own CPUs
    # (Tune needs some resource: a little memory).
    resources = (
        {"CPU": train.cpus_per_worker or 1, "GPU": int(train.use_gpu)}
        if single
        else {"memory": DRIVER_MEMORY}
    )
    # Tune names each trial's directory after the function: trial_<id>_<index>_<values>
    trainable = tune.with_resources(tune.with_parameters(sweep_trial.trial, setup=setup), resources)
    os.environ.update(TUNE_SETTINGS)
    _keep_credentials_out_of_trial_runtime_envs()
    path = f"{storage}/{parent_id}"
    if resume:
        return tune.Tuner.restore(path, trainable=trainable)
    run_config = tune.RunConfig(
        name=parent_id,
        storage_path=storage,
        callbacks=[report],
        stop=StepBudget(sweep.budget_steps) if sweep.budget_steps else None,
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=train.max_failures if single else 0),
        # PBT exploits other trials' checkpoints: none may be deleted under it
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=None if sweep.scheduler == "pbt" else 2
        ),
    )
    search, space, samples = searching
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=search,
            scheduler=make_scheduler(sweep),
            num_samples=samples,
            # the variant generator limits itself (make_search); searchers are limited here
            max_concurrent_trials=sweep.concurrency if sweep.search == "bayesian" else None,
            time_budget_s=sweep.time_budget,
            reuse_actors=True,  # a trial's process is kept for the next: no new imports
        ),
        run_config=run_config,
    )


def _keep_credentials_out_of_trial_runtime_envs() -> None:
    """Tune copies the driver's AWS credentials into every trial's runtime_env, which Ray's
    runtime-env agent writes to its log. Trials read them from their node's environment, as
    every other Ray worker does."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = class_cache.ENV_VARS_TO_PROPAGATE - AWS_CREDENTIALS


# --- on the driver ----------------------------------------------------------------------------


# parent run id -> (outcomes so far, the caller's on_trial): what the driver's callback tells.
_listeners: dict[str, tuple[dict[str, TrialOutcome], Callable | None]] = {}


class _TrialReport(tune.Callback):
    """Ends the child run of a trial a scheduler stopped (KILLED) or that crashed (FAILED), and
    tells the caller how each trial ended. Holds plain data only: Tune saves it with the sweep
    and a resumed sweep gets it back."""

    def __init__(self, spec: JobSpec, parent_id: str, uri: str):
        self.spec, self.parent_id, self.uri = spec, parent_id, uri

    def on_trial_complete(self, iteration, trials, trial, **info):
        result, sweep = trial.last_result or {}, self.spec.sweep
        spent = sum((t.last_result or {}).get("step", 0) for t in trials)
        if sweep.budget_steps and spent >= sweep.budget_steps:
            by = f"when sweep.budget_steps ({sweep.budget_steps}) ran out"
        elif sweep.scheduler != "none":
            by = f"early by {sweep.scheduler}"
        else:
            by = "when the time budget ran out"
        reason = (
            f"stopped {by} after {result.get(TIME_ATTR, 0)} evaluations "
            f"(step {result.get('step', 0)})"
        )
        self._ended(trial, "KILLED", reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error_file_of(trial)
        self._ended(trial, "FAILED", _last_line(error) or "the trial failed", error)

    def _ended(self, trial, status: str, reason: str, error: str | None = None) -> None:
        run_id = tracking.trial_run_id(self.parent_id, trial.trial_id, uri=self.uri)
        if run_id is not None:
            current = tracking.run_status(run_id, uri=self.uri)
            if current == "RUNNING":  # the trial's process died before it could end its run
                tracking.end_run(run_id, uri=self.uri, status=status, reason=reason, error=error)
            else:
                status, reason = current, (reason if current == status else None)
        value = (trial.last_result or {}).get(self.spec.sweep.metric)
        outcome = TrialOutcome(
            trial_id=trial.trial_id,
            run_id=run_id,
            status=status,
            values={key: trial.config.get(key) for key in self.spec.sweep.space},
            metric=value if isinstance(value, int | float) and math.isfinite(value) else None,
            reason=reason if status != "FINISHED" else None,
        )
        outcomes, on_trial = _listeners.get(self.parent_id, ({}, None))
        outcomes[trial.trial_id] = outcome
        if on_trial:
            on_trial(outcome)


def _error_file_of(trial) -> str | None:
    """What Ray Tune wrote of the trial's error (its traceback), if anything."""
    try:
        return Path(getattr(trial, "error_file", None) or "").read_text()
    except OSError:
        return None


def _last_line(error: str | None) -> str | None:
    lines = [line for line in (error or "").splitlines() if line.strip()]
    return launch.failure_reason(RuntimeError(lines[-1])) if lines else None
