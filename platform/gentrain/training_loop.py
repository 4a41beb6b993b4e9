"""The training loop of one process, step by step: batches from the data's stream, the family's
phases through the strategy, metrics averaged over the workers, evaluations, checkpoints (written
alongside the next step when asynchronous) and the model's export at the end. Its `Session` says
where the process runs and where its reports go (trainer.py has Ray Train's)."""

import json
import shutil
import tempfile
import time
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from gentrain import checkpoints, collectives, rng, stall
from gentrain.data import Data
from gentrain.data.augment import augment
from gentrain.data.stream import Position
from gentrain.errors import GentrainError
from gentrain.evaluation import Evaluation
from gentrain.families import FamilyStep
from gentrain.noise import DrawPlan
from gentrain.spec import JobSpec
from gentrain.strategies import Strategy, layout
from gentrain.tracking import RunLogger

if TYPE_CHECKING:  # Ray is imported by trainer.py, which runs this loop in Ray's workers
    from ray.train import Checkpoint


class Session(Protocol):
    """Where a training process runs: its place among the workers, the checkpoint it resumes
    from, and where its reports go (Ray Train for jobs, Ray Tune for single-worker trials)."""

    rank: int
    world: int
    device: torch.device
    node: int | None  # the node's rank when this process logs its node's system metrics
    one_node: bool  # every worker of the job on this one node

    def resume_from(self) -> "Checkpoint | None": ...

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None: ...

    def beat(self, step: int, slowest_step: float) -> None:
        """Rank 0 made progress at `step` (a training step, a part of an evaluation)."""

    def working(self) -> AbstractContextManager:
        """Rank 0 is busy with no step to show (exporting the model): progress meanwhile."""

    def finished(self) -> None:
        """Rank 0's training is over: what remains (closing the logs, Ray winding the workers
        up) is no stall."""


@dataclass
class Saving:
    """A checkpoint being written: reported once `writing` (None: written already) is done."""

    step: int
    metrics: dict[str, float]
    directory: Path
    writing: Future | None


class TrainingLoop:
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
