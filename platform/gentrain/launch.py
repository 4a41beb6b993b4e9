"""Runs one job: opens its MLflow run, builds a Ray Train TorchTrainer for the spec, relays
progress to the caller and closes the run with its outcome."""

import json
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer

from gentrain import checkpoints, cluster, plan, stall, tracking
from gentrain.cluster import WorkerProcess
from gentrain.data import check_source, questions
from gentrain.errors import GentrainError, SpecError, first_line, traceback_of
from gentrain.families import get_family
from gentrain.families.user import code_to_ship
from gentrain.memory import is_out_of_memory, out_of_memory_message
from gentrain.spec import JobSpec
from gentrain.stall import Beat
from gentrain.storage import check_bucket
from gentrain.strategies import resume_problem
from gentrain.tracking.heartbeat import Heartbeat
from gentrain.trainer import train_fn

ProgressCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class RunResult:
    run_id: str
    experiment: str
    tracking_uri: str
    metrics: dict[str, float]
    kept_in: Path | None = None  # the outbox holding what the tracking store never got


WarningCallback = Callable[[str], None]


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Rank 0 of a run pushes (step, metrics) under the run's id; the driver drains them to draw
    its progress display. Every worker registers its process, and rank 0 beats as it makes
    progress: the driver's stall watchdog reads both. One board serves all the runs of a driver
    (a sweep's trials, a test session): each actor costs a process start."""

    def __init__(self):
        self.events: dict[str, list[tuple[int, dict[str, float]]]] = defaultdict(list)
        self.warnings: dict[str, list[str]] = defaultdict(list)
        self.workers: dict[str, dict[int, WorkerProcess]] = defaultdict(dict)
        self.beats: dict[str, Beat] = {}

    def register(self, run_id: str, worker: WorkerProcess) -> None:
        """A worker process of the run's current attempt (a restart registers new ones)."""
        self.workers[run_id][worker.rank] = worker

    def beat(self, run_id: str, beat: Beat) -> None:
        self.beats[run_id] = beat

    def watch(self, run_id: str) -> tuple[list[WorkerProcess], Beat | None]:
        return list(self.workers[run_id].values()), self.beats.get(run_id)

    def forget(self, run_id: str) -> None:
        for table in (self.events, self.warnings, self.workers, self.beats):
            table.pop(run_id, None)

    def push(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        self.events[run_id].append((step, metrics))

    def warn(self, run_id: str, text: str) -> None:
        self.warnings[run_id].append(text)

    def drain(self, run_id: str) -> tuple[list[tuple[int, dict[str, float]]], list[str]]:
        return self.events.pop(run_id, []), self.warnings.pop(run_id, [])


_boards: dict[tuple[str, str], ray.actor.ActorHandle] = {}  # held: a dropped handle kills it


def _progress_board() -> tuple[str, ray.actor.ActorHandle]:
    """This driver's board on the Ray it is connected to (a new Ray gets a new one)."""
    context = ray.get_runtime_context()
    key = (context.get_node_id(), context.get_job_id())
    name = f"gentrain-progress-{key[1]}"
    if key not in _boards:
        _boards[key] = ProgressBoard.options(name=name, get_if_exists=True).remote()
    return name, _boards[key]


def run(
    spec: JobSpec,
    *,
    address: str | None = None,
    resume_run_id: str | None = None,
    on_progress: ProgressCallback | None = None,
    on_warning: WarningCallback | None = None,
    on_start: Callable[[str], None] | None = None,
    allow_data_change: bool = False,
    source_tags: dict[str, str] | None = None,
    planned: plan.Plan | None = None,
) -> RunResult:
    """Train `spec` as one MLflow run; `source_tags`: where its code came from
    (tracking.source; default: the working directory's checkout); `planned`: the plan that
    resolved its train.strategy: auto (resolved here when not given)."""
    if spec.train.strategy == "auto":
        spec, planned = plan.resolve(spec)
    uri = connect(spec, address, resume_run_id=resume_run_id, allow_data_change=allow_data_change)
    run_id = tracking.start_run(spec, uri=uri, resume_run_id=resume_run_id, source_tags=source_tags)
    if planned is not None:
        _log_plan(run_id, planned, uri=uri)
    if on_start:
        on_start(run_id)
    heartbeat = Heartbeat(run_id, uri=uri, owner=cluster.this_process())
    heartbeat.start()
    try:
        metrics = fit(
            spec,
            run_id=run_id,
            uri=uri,
            on_progress=on_progress,
            on_warning=on_warning,
            allow_data_change=allow_data_change,
            heartbeat=heartbeat,
        )
    except KeyboardInterrupt:
        reason = "interrupted (Ctrl-C or a stop request); --resume RUN_ID continues it"
        end_run(run_id, uri=uri, status="KILLED", reason=reason)
        raise
    except Exception as err:
        reason = failure_reason(err)
        if is_out_of_memory(err) and not reason.startswith("out of memory"):  # Ray's monitor
            reason = out_of_memory_message(spec, where="on a worker (Ray stopped it)")
        if reason.startswith("out of memory"):
            reason += plan.advice_here(spec)
        end_run(run_id, uri=uri, status="FAILED", reason=reason, error=traceback_of(err))
        raise GentrainError(f"run {run_id} failed: {reason}") from err
    finally:
        heartbeat.stop()
    kept_in = end_run(run_id, uri=uri, status="FINISHED")
    return RunResult(run_id, spec.experiment, uri, metrics=metrics, kept_in=kept_in)


def _log_plan(run_id: str, planned: plan.Plan, *, uri: str) -> None:
    """Why the run trains in the layout it does: the tag gentrain.strategy_auto, and the plan
    as `gentrain plan` shows it (plan/plan.txt) and as its rows (plan/plan.json)."""
    from gentrain.plan.show import render

    tracking.set_tag(run_id, "gentrain.strategy_auto", planned.reason(), uri=uri)
    tracking.log_text(run_id, render(planned), "plan/plan.txt", uri=uri)
    rows = json.dumps(planned.json_rows(), indent=1)
    tracking.log_text(run_id, rows, "plan/plan.json", uri=uri)


def end_run(
    run_id: str, *, uri: str, status: str, reason: str | None = None, error: str | None = None
) -> Path | None:
    """Close the run in the tracking store (`error`: the traceback of a failed one), after what
    rank 0 logged. When the store was away at the end of training (rank 0 left its outbox on
    this machine for later), the end joins the outbox instead, and its directory is returned."""
    from gentrain.tracking import outbox

    kept_in = tracking.outbox_dir(run_id)
    if not (kept_in / outbox.KEPT).exists():
        try:
            if kept_in.exists():  # rank 0 stopped before its outbox was sent (a failed worker)
                outbox.upload(kept_in)
            tracking.end_run(run_id, uri=uri, status=status, reason=reason, error=error)
            return None
        except Exception:  # the store's own errors: it is away now
            if not kept_in.exists():
                raise
    outbox.keep_end(kept_in, status=status, reason=reason, error=error)
    return kept_in


def connect(
    spec: JobSpec,
    address: str | None,
    *,
    resume_run_id: str | None = None,
    allow_data_change: bool = False,
) -> str:
    """Check what a job needs before anything starts (its data, the Inception weights, the
    storage bucket, the tracking store, the run it resumes and whether its data changed since),
    then join or start Ray; returns the tracking URI."""
    check_source(spec.data, family=get_family(spec.model.family))
    questions.check(spec.eval.dataset, spec.text_metrics)
    if spec.eval.judge and spec.text_metrics:
        from gentrain.metrics.judge import check_uri

        check_uri(spec.eval.judge)
    if spec.image_features and cluster.is_embedded(address):
        from gentrain.metrics import ensure_available

        ensure_available(spec.image_features)  # before anything starts, not at the first eval
    check_bucket(spec.storage.path, "storage.path")
    uri = tracking.resolve_tracking_uri(spec)
    tracking.check_reachable(uri, experiment=spec.experiment, write=True)
    if resume_run_id is not None:
        tracking.check_run_exists(resume_run_id, uri=uri, write=True)
        state = checkpoints.newest_state(storage_path(spec), resume_run_id)
        if not allow_data_change:
            _check_data_unchanged(spec, resume_run_id, state)
        finished = tracking.run_status(resume_run_id, uri=uri) == "FINISHED"
        _check_resumable(spec, resume_run_id, state, finished=finished)
    user_code = code_to_ship(spec.model.family)
    cluster.connect(
        address,
        py_modules=[user_code] if user_code else [],
        cpus_wanted=spec.train.workers * (spec.train.cpus_per_worker or 1),
    )
    cluster.check_multi_node(spec.storage, uri)
    return uri


def fit(
    spec: JobSpec,
    *,
    run_id: str,
    uri: str,
    on_progress: ProgressCallback | None = None,
    on_warning: WarningCallback | None = None,
    callbacks: Sequence[UserCallback] = (),
    allow_data_change: bool = False,
    heartbeat: Heartbeat | None = None,
) -> dict[str, float]:
    """Train the job of MLflow run `run_id` on Ray Train workers (the run's latest checkpoint
    under storage.path, if any, is where it starts); returns the last reported metrics."""
    train = spec.train
    threads = train.cpus_per_worker or max(1, cluster.available_cpus() // train.workers)
    board_name, board = _progress_board()
    collective_s = stall.collective_limit(train.stall_timeout)
    trainer = _Trainer(
        train_fn,
        train_loop_config={
            "spec": spec.to_dict(),
            "run_id": run_id,
            "tracking_uri": uri,
            "outbox": str(tracking.outbox_dir(run_id).resolve()),
            "checkpoints": f"{storage_path(spec)}/{run_id}",
            "progress": board_name,
            "threads": threads,
            "allow_data_change": allow_data_change,
            "beats": _watched(spec, heartbeat),
        },
        torch_config=TorchConfig(timeout_s=int(collective_s or TorchConfig().timeout_s)),
        scaling_config=ScalingConfig(
            num_workers=train.workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker or 1},
        ),
        run_config=RunConfig(
            name=run_id,  # the same name resumes from this run's latest checkpoint
            storage_path=storage_path(spec),
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[*callbacks, _Failures(board_name, run_id)],
        ),
    )
    relay = _Relay(board, run_id, on_progress, on_warning)
    watchdog = _watchdog(spec, board, run_id=run_id, uri=uri, relay=relay, heartbeat=heartbeat)
    relay.start()
    if _watched(spec, heartbeat):
        watchdog.start()
    try:
        result = trainer.fit()
    except Exception as err:
        if stalled := watchdog.cause():  # why, rather than the workers the watchdog killed
            where = stall_artifacts(stalled)
            raise GentrainError(f"{stalled.message}; stacks in MLflow {where}") from err
        raise
    finally:
        watchdog.stop()
        relay.stop()
        board.forget.remote(run_id)
    return {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}


def _watched(spec: JobSpec, heartbeat: Heartbeat | None) -> bool:
    """Whether rank 0 tells the driver of its progress: for the stall watchdog, or for the step
    in the run's heartbeat."""
    beating = heartbeat is not None and heartbeat.every > 0
    return beating or stall.step_limit(spec.train.stall_timeout) is not None


def _watchdog(spec: JobSpec, board, *, run_id: str, uri: str, relay, heartbeat) -> stall.Watchdog:
    """The run's stall watchdog (it also follows the step for the run's heartbeat)."""

    unrecorded: list[stall.Stall] = []  # the store was busy (a stopped worker may hold its lock)

    def record(found: stall.Stall) -> None:
        where = stall_artifacts(found)
        try:
            for stack in found.stacks:
                tracking.log_text(run_id, stack.text, f"{where}rank_{stack.rank}.txt", uri=uri)
            tracking.set_tag(run_id, "gentrain.stall", found.message[:5000], uri=uri)
        except Exception as err:
            if unrecorded:  # tried again, with the stalled workers gone: the terminal has the gist
                relay.warn(
                    f"the stall's stacks did not reach the tracking store: {first_line(err)}"
                )
                unrecorded.clear()
            else:
                unrecorded.append(found)

    def retry() -> None:
        if unrecorded:
            record(unrecorded[0])

    def on_stall(found: stall.Stall) -> None:
        where = stall_artifacts(found)
        relay.warn(f"{found.message}; stacks in MLflow {where}; its workers will be restarted")
        unrecorded.clear()
        record(found)

    def on_step(step: int) -> None:
        retry()  # new workers made progress: the old ones are gone
        if heartbeat is not None:
            heartbeat.step = step

    def kill(workers: list) -> None:
        relay.warn("killing the stalled workers; Ray Train restarts them from the last checkpoint")
        cluster.kill_workers(workers)
        retry()

    return stall.Watchdog(
        spec.train.stall_timeout,
        world=spec.train.workers,
        poll=lambda: ray.get(board.watch.remote(run_id), timeout=10),
        inspect=cluster.inspect_workers,
        kill=kill,
        on_stall=on_stall,
        on_step=on_step,
    )


def stall_artifacts(found: stall.Stall) -> str:
    return f"stall/step_{found.step}/"


class _Failures(UserCallback):
    """Tells the driver's terminal why a worker failed, as Ray Train restarts them."""

    def __init__(self, board_name: str, run_id: str):
        self.board_name, self.run_id = board_name, run_id

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        board = ray.get_actor(self.board_name)
        for rank, err in sorted(worker_exceptions.items()):
            reason = failure_reason(err)
            if "worker process has died" in reason:  # Ray's words run on about the OOM killer
                reason = "its process died (killed, or crashed: Ray's worker logs tell)"
            board.warn.remote(self.run_id, f"worker rank {rank} failed: {reason}")


class _Trainer(TorchTrainer):
    """Ray Train's TorchTrainer without two of its default callbacks, each of which starts an
    actor (a process of its own, importing Ray Train: ~1 s of a run's start on 2 cores):
    - Ray Datasets': it runs for every run, datasets or none, and gentrain's workers read their
      own shards (gentrain.data);
    - the placement group cleaner, when the run is trained from a driver (a job, a test): it
      frees the workers' placement group should the run's controller die abruptly, which the
      driver's end does as well. A sweep's trial trains from an actor that Ray Tune stops at
      will, while the sweep goes on: its runs keep the cleaner.
    The method is Ray's own, not public: test_matrix fails if a Ray upgrade brings either back."""

    def _create_default_callbacks(self):
        dropped = {"DatasetsCallback"}
        if ray.get_runtime_context().get_actor_id() is None:
            dropped.add("PlacementGroupCleanerCallback")
        return [c for c in super()._create_default_callbacks() if type(c).__name__ not in dropped]


def _check_resumable(spec: JobSpec, run_id: str, state: dict | None, *, finished: bool) -> None:
    """Refuse (exit 2, nothing started) to resume a run's newest checkpoint under a layout that
    cannot load it, or a finished run to a max_steps it has reached already (an unfinished one
    whose training ended is finished: exported and ended)."""
    if state is None:
        return
    if finished and spec.train.max_steps <= state["step"]:
        raise SpecError(
            f"train.max_steps: run {run_id} finished at step {state['step']}; "
            f"set a larger max_steps to continue it (got {spec.train.max_steps})"
        )
    problem = resume_problem(state.get("layout"), spec.train)
    if problem:
        raise SpecError(f"train.strategy: run {run_id}'s checkpoint {problem}")


def _check_data_unchanged(spec: JobSpec, run_id: str, state: dict | None) -> None:
    """Refuse (exit 2, nothing started) to resume a run whose data differs from what its
    newest checkpoint trained on."""
    from gentrain.data import open_data
    from gentrain.data.fingerprint import what_changed

    if state is None or "data" not in state:
        return
    changed = what_changed(state["data"]["fingerprint"], open_data(spec.data).fingerprint)
    if changed:
        raise SpecError(
            f"data.source: the data changed since run {run_id}'s checkpoint of step "
            f"{state['step']} ({changed}); add --allow-data-change to train on it anyway"
        )


def storage_path(spec: JobSpec) -> str:
    path = spec.storage.path
    return path if "://" in path else str(Path(path).resolve())


class _Relay(threading.Thread):
    """Polls the progress board and hands each event to the caller's callback."""

    def __init__(
        self,
        board,
        run_id: str,
        callback: ProgressCallback | None,
        on_warning: WarningCallback | None,
        interval: float = 0.5,
    ):
        super().__init__(daemon=True)
        self.board, self.run_id = board, run_id
        self.callback, self.on_warning, self.interval = callback, on_warning, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        try:
            events, warnings = ray.get(self.board.drain.remote(self.run_id), timeout=10)
        except Exception:  # progress is best effort: training goes on without a display
            return
        for step, metrics in events:
            if self.callback:
                self.callback(step, metrics)
        for text in warnings:
            self.warn(text)

    def warn(self, text: str) -> None:
        """A worker's warning, or one of the driver's own (the watchdog's)."""
        if self.on_warning:
            self.on_warning(text)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=15)


def failure_reason(err: BaseException) -> str:
    """One line: the innermost worker error when Ray wraps one (our own errors without their
    class name: they are written to be read as they are)."""
    text = str(err).strip().splitlines()
    lines = [line for line in text if line.strip() and "errors.pydantic.dev" not in line]
    if not lines:
        return type(err).__name__
    return re.sub(r"^gentrain\.errors\.\w+: ", "", lines[-1])[:1000]
