"""Parallelism strategies behind one protocol; the trainer never knows which one runs."""

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from gentrain import noise
from gentrain.families import FamilyStep
from gentrain.noise import DrawPlan
from gentrain.spec import JobSpec
from gentrain.spec_sections import TrainSection

STRATEGIES = ("ddp", "fsdp", "deepspeed", "pipeline")

# A phase's loss (mean over this rank's examples) and the family's named terms.
PhaseResult = tuple[torch.Tensor, dict[str, torch.Tensor]]
# The draw plan of the examples from `offset` on in this rank's part of the global batch.
NoiseAt = Callable[[int], DrawPlan]


def layout(train: TrainSection) -> dict[str, int | str]:
    """How a job's training is laid out, as a checkpoint records it: its strategy, workers, and
    ZeRO stage or pipeline stages."""
    saved: dict[str, int | str] = {"strategy": train.strategy, "workers": train.workers}
    if train.strategy == "deepspeed":
        saved["zero_stage"] = train.deepspeed.zero_stage
    if train.strategy == "pipeline":
        saved["stages"] = train.pipeline.stages
    return saved


def describe(saved: dict[str, int | str]) -> str:
    """A layout in words: "deepspeed ZeRO-2 on 2 workers"."""
    name = str(saved["strategy"])
    if "zero_stage" in saved:
        name += f" ZeRO-{saved['zero_stage']}"
    if "stages" in saved:
        name += f" ({saved['stages']} stages)"
    workers = saved["workers"]
    return f"{name} on {workers} worker{'s' if workers != 1 else ''}"


def resume_problem(saved: dict | None, train: TrainSection) -> str | None:
    """Why a checkpoint written under layout `saved` cannot be loaded under `train`, or None.
    ddp, fsdp and deepspeed (any ZeRO stage) load each other's at any number of workers; a
    pipeline's checkpoint holds each stage's part, which only the same cut can load."""
    if not saved:  # written before checkpoints recorded their layout
        return None
    was, now = saved["strategy"] == "pipeline", train.strategy == "pipeline"
    if not was and not now:
        return None
    if was and now and saved["stages"] == train.pipeline.stages:
        return None
    return (
        f"was written by {describe(saved)}: a pipeline's checkpoint resumes only under pipeline "
        "with the same stages, and pipeline only its own; ddp, fsdp and deepspeed resume each "
        "other's at any train.workers"
    )


class Strategy(Protocol):
    data_rank: int  # which part of each global batch this rank trains on
    data_world: int  # into how many parts the global batch is cut

    def prepare(self, models: dict[str, nn.Module], step_fn: FamilyStep) -> None:
        """Place, wrap (or cut into stages) and give optimizers to the networks."""
        ...

    def train_phase(self, phase: str, batch: torch.Tensor, noise_at: NoiseAt) -> PhaseResult | None:
        """Forward and backward this rank's `batch` through `phase`'s loss and step its network.
        None on a rank that never sees the loss (a pipeline stage before the last)."""
        ...

    def readable(self, name: str) -> AbstractContextManager[Mapping[str, nn.Module]]:
        """Network `name` as a plain module whose whole weights can be read, on every rank (a
        collective where weights are sharded): for the family's after_update."""
        ...

    def full_models(self) -> AbstractContextManager[dict[str, nn.Module]]:
        """Plain modules with the whole weights, for sampling, evaluation and export, while the
        context lasts. Every rank enters it (gathering sharded weights is collective); rank 0
        gets all the networks."""
        ...

    def save(self, directory: Path, *, rank: int) -> Future | None:
        """Write this rank's part of a checkpoint into `directory` (every rank calls it); a
        Future where the files are still being written (train.checkpoint_async)."""
        ...

    def load(self, directory: Path) -> None: ...


class MicroBatched:
    """train_phase for data-parallel strategies: the family's loss on each micro-batch in the
    strategy's `phase` context, then the strategy's `update` (which steps at the last one)."""

    accumulation_steps = 1
    step_fn: FamilyStep

    def phase(self, name: str) -> AbstractContextManager[Mapping[str, nn.Module]]: ...

    def update(self, name: str, loss: torch.Tensor) -> None: ...

    def train_phase(self, phase: str, batch: torch.Tensor, noise_at: NoiseAt) -> PhaseResult:
        micro = self.accumulation_steps
        total = torch.zeros((), device=batch.device)
        sums: dict[str, torch.Tensor] = {}
        offset = 0
        for part in batch.chunk(micro):  # equal parts: the spec checks the division
            with noise.planned(noise_at(offset)), self.phase(phase) as models:
                loss, terms = self.step_fn.loss(models, part, phase=phase)
            self.update(phase, loss)
            offset += len(part)
            total += loss.detach().float() / micro
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.float() / micro
        return total, sums


@contextmanager
def on_device(copies: dict[str, nn.Module], device: torch.device) -> Iterator[dict[str, nn.Module]]:
    """Plain copies of the networks, kept on the CPU between uses, on `device` while in use."""
    models = {name: plain.to(device) for name, plain in copies.items()}
    try:
        yield models
    finally:
        for model in models.values():
            model.cpu()


def make_strategy(spec: JobSpec, *, device: torch.device, world: int, rank: int) -> Strategy:
    name = spec.train.strategy
    if name == "deepspeed":
        from gentrain.strategies.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy(spec, device=device, world=world, rank=rank)
    if name == "pipeline":
        from gentrain.strategies.pipeline import PipelineStrategy

        return PipelineStrategy(spec, device=device, world=world, rank=rank)
    if name == "fsdp":
        from gentrain.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(spec, device=device, world=world, rank=rank)
    from gentrain.strategies.ddp import DDPStrategy

    return DDPStrategy(spec, device=device, world=world, rank=rank)
