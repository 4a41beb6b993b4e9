"""The one training path, run by every Ray Train worker: the family supplies the step, the
strategy the parallelism; this module sets a worker up (data, tracking, models, strategy, the
checkpoint it resumes from) and runs the loop (training_loop.py), which owns the steps,
checkpoints, evaluation, metrics and reporting. Its sessions: Ray Train's, and a plain process's."""

import json
import logging
import os
import tempfile
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint

from gentrain import checkpoints, collectives, rng, stall
from gentrain.cluster import WorkerProcess
from gentrain.data import Data, open_data
from gentrain.data.fingerprint import what_changed
from gentrain.data.stream import Position
from gentrain.errors import GentrainError
from gentrain.evaluation import load_ahead
from gentrain.families import FamilyStep, FamilyWarning, get_family
from gentrain.memory import is_out_of_memory, out_of_memory_message, peak_memory
from gentrain.spec import JobSpec
from gentrain.strategies import Strategy, describe, make_strategy
from gentrain.tracking import RunLogger, outbox_dir
from gentrain.tracking import system as system_metrics
from gentrain.tracking.datasets import dataset_inputs
from gentrain.training_loop import Session, TrainingLoop

log = logging.getLogger(__name__)


class PlainSession:
    """A training process outside Ray (a benchmark's baseline, a test's reference run): no
    checkpoint to resume, its reports dropped; the run's metrics still go to MLflow."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world, self.device = rank, world, torch.device("cpu")
        self.node, self.one_node = None, True

    def resume_from(self) -> Checkpoint | None:
        return None

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        pass

    def beat(self, step: int, slowest_step: float) -> None:
        pass

    def working(self) -> AbstractContextManager:
        return nullcontext()

    def finished(self) -> None:
        pass


class RayTrainSession:
    def __init__(self, config: dict[str, Any]):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        # this node's rank when this process is the node's first worker, else None
        self.node = context.get_node_rank() if context.get_local_rank() == 0 else None
        self.one_node = context.get_local_world_size() == self.world
        self.run_id = config["run_id"]
        self.board = ray.get_actor(config["progress"]) if config.get("progress") else None
        self.pulse = stall.Pulse(os.getpid())
        if self.board:  # the watchdog's: where to find this process, and rank 0's progress
            node_id = ray.get_runtime_context().get_node_id()
            self.board.register.remote(self.run_id, WorkerProcess(self.rank, node_id, os.getpid()))
            if self.rank == 0 and config.get("beats", True):
                self.pulse.start(lambda beat: self.board.beat.remote(self.run_id, beat))

    def resume_from(self) -> Checkpoint | None:
        """Ray Train's latest checkpoint of this run, or a newer one in the run's directory: a
        worker that dies soon after reporting a checkpoint can die before Ray Train's
        controller collects the report, and Ray then hands back an older checkpoint, or none."""
        storage = ray.train.get_context().get_storage()
        return checkpoints.newest_of_run(
            ray.train.get_checkpoint(), storage.storage_filesystem, storage.experiment_fs_path
        )

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        saved = ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None
        ray.train.report(metrics, checkpoint=saved)

    def beat(self, step: int, slowest_step: float) -> None:
        self.pulse.beat(step, slowest_step)

    def working(self) -> AbstractContextManager:
        return self.pulse.working()

    def finished(self) -> None:
        self.pulse.finished()


def train_fn(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker."""
    train(config, RayTrainSession(config))


def train(config: dict[str, Any], session: Session) -> None:
    """Train one job in this process. `config` holds only plain data: the spec as a dict, the
    MLflow run, the progress board's actor name (or None) and the threads this process may use."""
    spec = JobSpec.model_validate(config["spec"])
    rank, world = session.rank, session.world
    torch.set_num_threads(config["threads"])

    family = get_family(spec.model.family)
    step_fn = family.make_step()
    data = open_data(spec.data, seed=spec.train.seed)
    if data.modality != family.modality:  # parquet sources tell only once read
        raise GentrainError(
            f"data.source: {spec.data.source} holds {data.modality}s; family {family.name} "
            f"trains on {family.modality}s"
        )
    if rank == 0:
        load_ahead(spec)
    logger, board = _tracking(config, rank) if rank == 0 else (None, None)
    monitor = _system_metrics(spec, config, session)
    try:
        if logger:
            logger.log_datasets(dataset_inputs(data, spec.data.source))
        if logger and hasattr(data.tokenizer, "to_json"):
            _log_tokenizer(data.tokenizer, logger)
        rng.seed_everything(spec.train.seed)  # same initial weights on every rank
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            models = step_fn.build(
                family.config(flavor=spec.model.flavor, overrides=spec.model.overrides), data.info
            )
        _pass_on(caught, logger)
        _train_models(spec, config, session, step_fn, models, data, logger, board)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        log.error("gentrain: out of memory", exc_info=err)  # the details, in the worker's log
        where = f"on worker rank {rank} of {world}"
        params = _parameter_count(spec, family, step_fn, data)
        peak = peak_memory(session.device)
        message = out_of_memory_message(spec, where=where, params=params, peak=peak)
        raise GentrainError(message) from None
    finally:
        if monitor:
            system_metrics.stop(monitor)
        if logger:
            logger.close(timeout=spec.tracking.wait_at_end)


def _system_metrics(spec: JobSpec, config: dict[str, Any], session: Session):
    """The monitor of this node's system metrics, on the node's first worker (None elsewhere,
    or when tracking.system_metrics is off)."""
    if not spec.tracking.system_metrics or session.node is None:
        return None
    return system_metrics.start(
        uri=config["tracking_uri"],
        run_id=config["run_id"],
        node_rank=session.node,
        nodes_apart=not session.one_node,
        every_s=spec.tracking.system_metrics_every,
    )


def _log_tokenizer(tokenizer, logger: RunLogger) -> None:
    """The run's tokenizer (trained or pretrained), as `tokenizer/tokenizer.json`."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(tokenizer.to_json())
        logger.log_directory(Path(tmp), "tokenizer")


def _pass_on(caught: list[warnings.WarningMessage], logger: RunLogger | None) -> None:
    """A family's own warnings go to the run's terminal (rank 0's); the rest as Python shows
    warnings."""
    for warning in caught:
        if issubclass(warning.category, FamilyWarning):
            if logger:
                logger.warn(str(warning.message))
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )


def _parameter_count(spec: JobSpec, family, step_fn: FamilyStep, data: Data) -> int | None:
    """The model's size, counted on the meta device (no memory needed)."""
    try:
        with torch.device("meta"):
            models = step_fn.build(
                family.config(flavor=spec.model.flavor, overrides=spec.model.overrides), data.info
            )
    except Exception:  # a family whose building reads values: its size stays untold
        return None
    return sum(p.numel() for model in models.values() for p in model.parameters())


def _tracking(config: dict[str, Any], rank: int) -> tuple[RunLogger, Any]:
    """Rank 0's run logger, and the driver's progress board (or None); the logger's warnings
    (a tracking store that is away) go to both the worker's log and the driver."""
    run_id = config["run_id"]
    board = ray.get_actor(config["progress"]) if config.get("progress") else None

    def warn(text: str) -> None:
        log.warning("gentrain: %s", text)
        if board:
            board.warn.remote(run_id, text)

    outbox = Path(config.get("outbox") or outbox_dir(run_id))
    logger = RunLogger(uri=config["tracking_uri"], run_id=run_id, outbox=outbox, warn=warn)
    return logger, board


def _train_models(
    spec: JobSpec,
    config: dict[str, Any],
    session: Session,
    step_fn: FamilyStep,
    models: dict[str, torch.nn.Module],
    data: Data,
    logger: RunLogger | None,
    board,
) -> None:
    rank, world, device = session.rank, session.world, session.device
    if spec.model.init_from:  # on every rank: pipeline stages train their own copies
        from gentrain.pretrained import load_initial_weights

        load_initial_weights(
            spec.model.init_from,
            step_fn=step_fn,
            models=models,
            tracking_uri=config["tracking_uri"],
        )
    if collective_s := stall.collective_limit(spec.train.stall_timeout):
        collectives.set_collective_timeout(collective_s)
    strategy = make_strategy(spec, device=device, world=world, rank=rank)
    strategy.prepare(models, step_fn)
    rng.seed_everything(spec.train.seed * 1000 + rank)  # each rank draws its own noise

    start_step, positions = _restore(
        strategy,
        session.resume_from(),
        rank=rank,
        logger=logger,
        data=data,
        allow_data_change=config.get("allow_data_change", False),
    )
    loop = TrainingLoop(
        spec,
        config,
        session=session,
        step_fn=step_fn,
        strategy=strategy,
        data=data,
        logger=logger,
        board=board,
    )
    loop.run(start_step=start_step, positions=positions)


def _restore(
    strategy: Strategy,
    checkpoint: Checkpoint | None,
    *,
    rank: int,
    logger: RunLogger | None,
    data: Data,
    allow_data_change: bool,
) -> tuple[int, list[Position] | None]:
    """Load the checkpoint Ray hands this process (after a restart, a resumed run, or a PBT
    exploit), or the newest whole one before it; returns the step it was taken at and where
    each partition of the data stood then, or (0, None) to start afresh."""
    if checkpoint is None:
        return 0, None
    checkpoint, skipped = checkpoints.newest_whole(checkpoint)
    if logger and skipped:
        logger.set_tag("gentrain.checkpoints_skipped", "; ".join(skipped)[:5000])
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as tmp:
        directory = Path(tmp)
        state = json.loads((directory / checkpoints.STATE).read_text())
        saved = state.get("data") or {"fingerprint": data.fingerprint}  # older checkpoints
        changed = what_changed(saved["fingerprint"], data.fingerprint)
        if changed and not allow_data_change:
            raise GentrainError(
                f"data.source: the data changed since the checkpoint of step {state['step']} "
                f"({changed}); resume with --allow-data-change to train on it anyway"
            )
        strategy.load(directory)
        streams = directory / f"rng_rank{rank}.pt"
        if streams.exists():  # a rank the checkpoint's run did not have keeps its seeded streams
            rng.set_rng_state(torch.load(streams, weights_only=True))
    if logger:
        # a restart or a resumed run loads its own checkpoint; a PBT exploit another trial's
        if state["mlflow_run_id"] == logger.run_id:
            logger.set_tag("gentrain.resumed_from_step", str(state["step"]))
            if "layout" in state:  # the strategy and workers that wrote the checkpoint
                logger.set_tag("gentrain.resumed_from_strategy", describe(state["layout"]))
                logger.set_tag("gentrain.resumed_from_workers", str(state["layout"]["workers"]))
        else:
            logger.set_tag(
                "gentrain.checkpoint_from", f"{state['mlflow_run_id']} step {state['step']}"
            )
    if changed and logger:
        logger.set_tag("gentrain.data_changed", changed[:5000])
    positions = saved.get("positions")  # older checkpoints: the data's order from its start
    return state["step"], [Position(**p) for p in positions] if positions else None
