"""The one training loop, run by every Ray Train worker: the family supplies the step, the strategy
the parallelism; this loop owns data, checkpoints, evaluation, metrics and reporting."""

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint

from gentrain import checkpoints, collectives, rng, stall
from gentrain.cluster import WorkerProcess
from gentrain.data import Data, open_data
from gentrain.data.augment import augment
from gentrain.data.fingerprint import what_changed
from gentrain.data.stream import Position
from gentrain.errors import GentrainError
from gentrain.evaluation import Evaluation, load_ahead
from gentrain.families import FamilyStep, FamilyWarning, get_family
from gentrain.memory import is_out_of_memory, out_of_memory_message, peak_memory
from gentrain.noise import DrawPlan
from gentrain.spec import JobSpec
from gentrain.strategies import Strategy, describe, layout, make_strategy
from gentrain.tracking import RunLogger, outbox_dir
from gentrain.tracking import system as system_metrics
from gentrain.tracking.datasets import dataset_inputs

log = logging.getLogger(__name__)

# Evaluations draw from their own RNG: the same noise at every step, training's RNG untouched.


class Session(Protocol):
    """Where a training process runs: its place among the workers, the checkpoint it resumes
    from, and where its reports go (Ray Train for jobs, Ray Tune for single-worker trials)."""

    rank: int
    world: int
    device: torch.device
    node: int | None  # the node's rank when this process logs its node's system metrics
    one_node: bool  # every worker of the job on this one node

    def resume_from(self) -> Checkpoint | None: ...

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None: ...

    def beat(self, step: int, slowest_step: float) -> None:
        """Rank 0 made progress at `step` (a training step, a part of an evaluation)."""

    def working(self) -> AbstractContextManager:
        """Rank 0 is busy with no step to show (exporting the model): progress meanwhile."""

    def finished(self) -> None:
        """Rank 0's training is over: what remains (closing the logs, Ray winding the workers
        up) is no stall."""


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
    loop = _Loop(
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


@dataclass
class Saving:
    """A checkpoint being written: reported once `writing` (None: written already) is done."""

    step: int
    metrics: dict[str, float]
    directory: Path
    writing: Future | None


class _Loop:
    def __init__(
        self,
        spec: JobSpec,
        config: dict[str, Any],
        *,
        session: Session,
        step_fn: FamilyStep,
        strategy: Strategy,
        data: Data,
        logger: RunLogger | None,
        board,
    ):
        self.spec, self.session = spec, session
        self.rank, self.world = session.rank, session.world
        self.step_fn, self.strategy, self.data = step_fn, strategy, data
        self.run_id = config["run_id"]
        self.checkpoints = config.get("checkpoints", "")  # where the run's checkpoints go
        self.saving: Saving | None = None
        self.logger, self.board = logger, board  # rank 0's; None elsewhere
        self.slowest_step = 0.0  # seconds, this session's slowest training step
        self.step = 0  # the step last trained
        self.evaluation = Evaluation(
            spec,
            step_fn=step_fn,
            data=data,
            logger=logger,
            device=session.device,
            beat=lambda: session.beat(self.step, self.slowest_step),
        )
        self.positions: dict[int, Position] = {}  # of the partitions this worker reads
        self.partitions = 0  # how many the data is cut into

    def run(self, *, start_step: int, positions: list[Position] | None) -> None:
        strategy = self.strategy
        batches = self.data.stream.batches(
            batch_size=self.spec.data.batch_size,
            rank=strategy.data_rank,
            world=strategy.data_world,
            start=positions,
        )
        self.positions, self.partitions = batches.positions, batches.count
        try:
            if start_step == 0:
                self._preview_untrained()
            self._run(batches, start_step=start_step)
        finally:
            batches.close()

    def _run(self, batches, *, start_step: int) -> None:
        device = self.session.device
        spec, train = self.spec, self.spec.train
        strategy = self.strategy
        sums: dict[str, torch.Tensor] = {}
        skipped = 0  # steps whose loss was not finite (train.on_nan: skip_step), this session
        # training time only: evaluation and checkpoints excluded
        window_seconds, window_steps, window_counted = 0.0, 0, 0  # counted: not skipped
        metrics: dict[str, float] = {}
        for step in range(start_step + 1, train.max_steps + 1):
            step_start = time.perf_counter()
            batch, self.positions = next(batches)
            batch = batch.to(device)
            if spec.data.augment:
                batch = augment(batch, spec.data.augment)
            total, step_terms = None, {}
            for phase in self.step_fn.phases:

                def noise_at(offset: int, step: int = step, phase: str = phase) -> DrawPlan:
                    first_row = batches.first_row + offset
                    global_rows = spec.data.batch_size
                    return DrawPlan(train.seed, step, phase, first_row, global_rows)

                result = strategy.train_phase(phase, batch, noise_at)
                if result is not None:
                    loss, terms = result
                    total = loss if total is None else total + loss
                    for name, value in terms.items():
                        step_terms[name] = step_terms.get(name, 0) + value
                if after_update := getattr(self.step_fn, "after_update", None):
                    with strategy.readable(phase) as models:
                        after_update(models, phase=phase)
            if total is not None and not torch.isfinite(total):
                self._on_nan(float(total), step)
                skipped += 1  # its step was skipped: its loss and terms count nowhere
            elif total is not None:
                for name, value in {**step_terms, "loss": total}.items():
                    sums[name] = sums.get(name, 0) + value
                window_counted += 1
            window_steps += 1
            window_seconds += time.perf_counter() - step_start
            self._stepped(step, time.perf_counter() - step_start)

            last = step == train.max_steps
            if step % train.log_every == 0 or last:
                metrics = self._mean_over_workers(sums, max(1, window_counted))
                metrics["samples_per_sec"] = spec.data.batch_size * window_steps / window_seconds
                if skipped:
                    metrics["skipped_steps"] = skipped
                sums, window_seconds, window_steps, window_counted = {}, 0.0, 0, 0
                self._log(metrics, step=step)
            if self.saving and self.saving.step < step:  # saved while this step trained
                self._commit()
            evaluated = step % train.eval_every == 0 or last
            if evaluated:
                metrics = {**metrics, **self._evaluate(step)}
            # Every evaluation is reported (a sweep's schedulers decide on them), with the
            # checkpoint when one is due.
            progress = {**metrics, "step": step, "evaluations": self._evaluations(step)}
            if step % train.checkpoint_every == 0 or last:
                self._checkpoint(step, progress)
            elif evaluated:
                self.session.report(progress)
        with self.strategy.full_models() as models:
            if self.rank == 0:
                with self.session.working():
                    self._export(models)
        self._commit()
        self.session.finished()

    def _stepped(self, step: int, seconds: float) -> None:
        """Tell the watchdog; under train.stall_timeout auto, a step slower than any before
        lengthens how long a collective may wait (stall.collective_limit)."""
        self.step = step
        if seconds > self.slowest_step:
            before = stall.collective_limit(self.spec.train.stall_timeout, self.slowest_step)
            self.slowest_step = seconds
            after = stall.collective_limit(self.spec.train.stall_timeout, seconds)
            if after is not None and after > before:
                collectives.set_collective_timeout(after)
        self.session.beat(step, self.slowest_step)

    def _on_nan(self, loss: float, step: int) -> None:
        if self.spec.train.on_nan == "stop":
            raise GentrainError(
                f"the loss became {loss} at step {step} (train.on_nan: stop); lower optim.lr, "
                "set optim.grad_clip, or train.on_nan: skip_step to skip such steps"
            )

    def _evaluations(self, step: int) -> int:
        """How many evaluations the job has made by `step`."""
        train = self.spec.train
        return step // train.eval_every + (step == train.max_steps and step % train.eval_every > 0)

    def _mean_over_workers(self, sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        """Each value averaged over the steps and over the ranks that computed it (under a
        pipeline, the last stage of each replica)."""
        mine = {name: float(value) / steps for name, value in sums.items()}
        gathered = [mine]
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, mine)
        names = sorted({name for values in gathered for name in values})
        return {
            name: sum(v[name] for v in gathered if name in v) / sum(name in v for v in gathered)
            for name in names
        }

    def _log(self, metrics: dict[str, float], *, step: int) -> None:
        if self.rank != 0:
            return
        self.logger.log_metrics(metrics, step=step)
        if self.board:
            self.board.push.remote(self.run_id, step, metrics)

    def _evaluate(self, step: int) -> dict[str, float]:
        """The family's held-out metrics, FID / IS of fresh samples for image families, and a
        preview (sample grid or texts), on rank 0."""
        with self.strategy.full_models() as models:
            if self.rank != 0:
                collectives.wait_for_rank0(f"gentrain/evaluated/{step}")
                return {}
            started = time.perf_counter()
            scores = self.evaluation.run(models, step)
            self.logger.log_metrics({"eval_seconds": time.perf_counter() - started}, step=step)
            if self.board and scores:
                self.board.push.remote(self.run_id, step, scores)
            collectives.tell_others(f"gentrain/evaluated/{step}")
            return scores

    def _preview_untrained(self) -> None:
        """The untrained model's preview at step 0, where the UI's step slider starts."""
        with self.strategy.full_models() as models:
            if self.rank == 0:
                self.evaluation.run(models, 0, scored=False)
                collectives.tell_others("gentrain/evaluated/0")
            else:
                collectives.wait_for_rank0("gentrain/evaluated/0")

    def _checkpoint(self, step: int, metrics: dict[str, float]) -> None:
        """Every rank writes its part (the strategy's state, its RNG streams; rank 0 the step
        and the data's positions) into a directory of its own; Ray merges them into one
        checkpoint under storage.path once every rank has reported its part. With
        train.checkpoint_async the strategy writes while the next step trains: the checkpoint
        is reported (committed) after that step, once its files are whole."""
        positions = self._all_positions()
        directory = Path(tempfile.mkdtemp(prefix="gentrain-checkpoint-"))
        try:
            writing = self.strategy.save(directory, rank=self.rank)
            torch.save(rng.rng_state(), directory / f"rng_rank{self.rank}.pt")
            if self.rank == 0:
                state = {
                    "step": step,
                    "mlflow_run_id": self.run_id,
                    "world": self.world,
                    "layout": layout(self.spec.train),
                    "data": {"positions": positions, "fingerprint": self.data.fingerprint},
                }
                (directory / checkpoints.STATE).write_text(json.dumps(state))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.saving = Saving(step, metrics, directory, writing)
        if writing is None:
            self._commit()

    def _commit(self) -> None:
        """Report the checkpoint being saved, once its files are whole."""
        saving, self.saving = self.saving, None
        if saving is None:
            return
        try:
            if saving.writing is not None:
                saving.writing.result()
            checkpoints.seal(saving.directory, rank=self.rank)
            self.session.report(saving.metrics, checkpoint=saving.directory)
        finally:
            shutil.rmtree(saving.directory, ignore_errors=True)
        if self.logger:
            self.logger.log_checkpoint(step=saving.step, location=self.checkpoints)

    def _all_positions(self) -> list[dict[str, int]]:
        """Every partition's position: each worker knows those of the partitions it reads."""
        known = [self.positions]
        if self.world > 1:
            known = [None] * self.world
            torch.distributed.all_gather_object(known, self.positions)
        merged = {p: position for part in known for p, position in part.items()}
        return [merged[p].to_dict() for p in range(self.partitions)]

    def _export(self, models: dict[str, torch.nn.Module]) -> None:
        module, example = self.step_fn.export(models)
        if export_files := getattr(self.step_fn, "export_files", None):
            with tempfile.TemporaryDirectory() as tmp:
                export_files(models, Path(tmp))
                self.logger.log_directory(Path(tmp), "pretrained")
        self.logger.log_model(
            module,
            example_input=example,
            register_as=self.spec.tracking.register_as,
            step=self.spec.train.max_steps,
        )


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
