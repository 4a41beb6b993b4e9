"""Pipeline parallel (torch.distributed.pipelining), replicated for data parallelism.

Rank r is stage r % stages of replica r // stages. Each phase's blocks (the family's
PipelineForm) are cut into `stages` contiguous parts of about equal parameter counts; a
GPipe or 1F1B schedule runs each replica's micro-batches through its stages. Every rank builds
the whole model but trains only its own part: after a phase, gradients are summed between the
stages that share a parameter (tied embeddings) and averaged between replicas, clipped by the
norm over the whole network, and each rank's optimizer steps its own part.
"""

import copy
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from gentrain import noise
from gentrain.errors import GentrainError
from gentrain.families import FamilyStep, run_blocks
from gentrain.optim import build_optimizer, build_schedule
from gentrain.spec import JobSpec
from gentrain.strategies import NoiseAt, PhaseResult, on_device

_SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose gradient is made whole: a stage sends its inputs' gradients back as they
    are, and a slice (the gradient of a skip joined by torch.cat) cannot be sent."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, *args: torch.Tensor):
        args = tuple(_ContiguousGrad.apply(a) if a.requires_grad else a for a in args)
        out = run_blocks(self.blocks, args)
        if isinstance(out, tuple):  # sent to the next stage as they are: views must be whole
            return tuple(t.contiguous() for t in out)
        return out.contiguous()


def balanced_cuts(sizes: list[int], parts: int) -> list[int]:
    """Where `parts` contiguous groups of blocks with these parameter counts start, so that the
    largest group is as small as it can be (each group holds at least one block)."""
    n = len(sizes)
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    # best[k][i]: the smallest largest-group over the first i blocks cut into k groups
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    start = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], start[k][i] = cost, j
    cuts, i = [], n
    for k in range(parts, 0, -1):
        i = start[k][i]
        cuts.append(i)
    return cuts[::-1]


class PipelineStrategy:
    def __init__(self, spec: JobSpec, *, device: torch.device, world: int, rank: int):
        pipeline = spec.train.pipeline
        self.spec, self.device, self.world, self.rank = spec, device, world, rank
        self.stages, self.microbatches = pipeline.stages, pipeline.microbatches
        self.stage, self.replica = rank % self.stages, rank // self.stages
        self.replicas = world // self.stages
        self.data_rank, self.data_world = self.replica, self.replicas
        self.amp_dtype = torch.bfloat16 if spec.train.precision == "bf16" else None
        # Every rank creates every group, in the same order (a collective).
        self.pipe_group = self._group_of(
            [[r * self.stages + s for s in range(self.stages)] for r in range(self.replicas)]
        )
        self.replica_group = self._group_of(
            [[r * self.stages + s for r in range(self.replicas)] for s in range(self.stages)]
        )
        self.models: dict[str, nn.Module] = {}
        self.schedules: dict[str, object] = {}  # phase -> pipeline schedule
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.lr_schedules: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        self.own: dict[str, list[nn.Parameter]] = {}  # network -> this stage's parameters
        self.tied: list[tuple[nn.Parameter, object]] = []  # (parameter, group of its stages)
        self.counted_elsewhere: set[int] = set()
        self.initial: dict[str, dict[str, torch.Tensor]] = {}
        self.copies: dict[str, nn.Module] = {}

    def _group_of(self, members: list[list[int]]):
        """Creates a group for each list of ranks; returns the one holding this rank."""
        mine = None
        for ranks in members:
            group = dist.new_group(ranks) if self.world > 1 else None
            if self.rank in ranks:
                mine = group
        return mine

    def prepare(self, models: dict[str, nn.Module], step_fn: FamilyStep) -> None:
        self.step_fn = step_fn
        if not callable(getattr(step_fn, "pipeline", None)):  # a sweep's trial may choose it
            raise GentrainError(
                f"train.strategy: pipeline needs {self.spec.model.family}'s step to define "
                "pipeline(); ddp, fsdp and deepspeed work without it"
            )
        for model in models.values():
            model.to(self.device)
        self.models = models
        forms = {phase: step_fn.pipeline(models, phase=phase) for phase in step_fn.phases}
        first = forms[step_fn.phases[0]].blocks
        if len(first) < self.stages:
            raise GentrainError(
                f"train.pipeline.stages: {self.spec.model.family} splits into at most "
                f"{len(first)} stages here (got {self.stages})"
            )
        cuts = balanced_cuts([sum(p.numel() for p in b.parameters()) for b in first], self.stages)
        bounds = [*cuts, len(first)]
        parts = {
            phase: [form.blocks[bounds[s] : bounds[s + 1]] for s in range(self.stages)]
            for phase, form in forms.items()
        }
        self.forms = forms
        mine = {
            id(p) for blocks in parts.values() for b in blocks[self.stage] for p in b.parameters()
        }
        for name, model in models.items():
            self.own[name] = [p for p in model.parameters() if id(p) in mine]
            if self.own[name]:
                self.optimizers[name] = build_optimizer(self.own[name], self.spec.optim)
                self.lr_schedules[name] = build_schedule(
                    self.optimizers[name], self.spec.optim, max_steps=self.spec.train.max_steps
                )
        self._find_tied(parts)
        for phase, blocks in parts.items():
            stage = PipelineStage(
                _Stage(blocks[self.stage]),
                self.stage,
                self.stages,
                self.device,
                group=self.pipe_group,
            )
            loss = self._loss_fn(forms[phase].loss)
            self.schedules[phase] = _SCHEDULES[self.spec.train.pipeline.schedule](
                stage, n_microbatches=self.microbatches, loss_fn=loss, scale_grads=True
            )
        # What each rank changes is its own part: the rest stays as built, the same everywhere.
        self.initial = {name: _cpu_state(model) for name, model in models.items()}
        if self.rank == 0:
            self.copies = {name: copy.deepcopy(model).cpu() for name, model in models.items()}

    def _find_tied(self, parts: dict[str, list[list[nn.Module]]]) -> None:
        """Parameters that several stages hold (a GPT's tied embeddings): one group per set of
        stages, in each replica, to sum their gradients over."""
        holders: dict[int, set[int]] = {}
        params: dict[int, nn.Parameter] = {}
        for blocks in parts.values():
            for s, stage_blocks in enumerate(blocks):
                for block in stage_blocks:
                    for p in block.parameters():
                        holders.setdefault(id(p), set()).add(s)
                        params[id(p)] = p
        shared = sorted({tuple(sorted(s)) for s in holders.values() if len(s) > 1})
        groups = {
            stages: self._group_of(
                [[r * self.stages + s for s in stages] for r in range(self.replicas)]
            )
            for stages in shared
        }
        for key, stages in holders.items():
            stages = tuple(sorted(stages))
            if len(stages) > 1 and self.stage in stages:
                self.tied.append((params[key], groups[stages]))
                if self.stage != stages[0]:
                    self.counted_elsewhere.add(key)  # in the norm: by its first stage only

    def _loss_fn(self, family_loss):
        def loss_fn(output, target):
            loss, terms = family_loss(output, target)
            self._terms.append({k: v.detach().float() for k, v in terms.items()})
            return loss

        return loss_fn

    def train_phase(self, phase: str, batch: torch.Tensor, noise_at: NoiseAt) -> PhaseResult | None:
        for model in self.models.values():
            model.zero_grad(set_to_none=True)
        with noise.planned(noise_at(0)):  # the stages of a replica draw the same noise
            args, target = self.forms[phase].inputs(batch)
        first, last = self.stage == 0, self.stage == self.stages - 1
        losses: list[torch.Tensor] = []
        self._terms: list[dict[str, torch.Tensor]] = []
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype
            else nullcontext()
        )
        with autocast:
            self.schedules[phase].step(
                *(args if first else ()),
                target=target if last else None,
                losses=losses if last else None,
            )
        self._step(phase)
        if not last:
            return None
        count = len(losses)
        terms = {k: sum(t[k] for t in self._terms) / count for k in self._terms[0]}
        return torch.stack([loss.detach().float() for loss in losses]).mean(), terms

    def _step(self, name: str) -> None:
        """Sums tied gradients, averages over replicas, clips by the whole network's norm and
        steps this stage's part of network `name`."""
        own = self.own.get(name, [])
        owned = {id(p) for p in own}
        for param, group in self.tied:
            if id(param) in owned:  # every holder takes part, with or without a gradient
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                dist.all_reduce(param.grad, group=group)
        if self.replicas > 1:
            for param in own:
                if param.grad is not None:
                    dist.all_reduce(param.grad, group=self.replica_group)
                    param.grad /= self.replicas
        clip = self.spec.optim.grad_clip
        if clip is not None:
            self._clip(own, clip)
        if name in self.optimizers:
            self.optimizers[name].step()
            self.lr_schedules[name].step()

    def _clip(self, own: list[nn.Parameter], max_norm: float) -> None:
        """clip_grad_norm_ over the whole network: squared norms summed over the stages (a tied
        parameter counted once, by its first stage)."""
        grads = [p.grad for p in own if p.grad is not None and id(p) not in self.counted_elsewhere]
        squares = torch.zeros((), device=self.device)
        for grad in grads:
            squares += grad.float().pow(2).sum()
        if self.stages > 1:
            dist.all_reduce(squares, group=self.pipe_group)
        coefficient = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        for param in own:
            if param.grad is not None:
                param.grad.mul_(coefficient)

    @contextmanager
    def readable(self, name: str):
        yield {name: self.models[name]}  # each rank's own part is current in its whole model

    @contextmanager
    def full_models(self):
        """Rank 0's plain copies with each stage's part: every rank of the first replica sends
        the tensors it changed; the rest are as built."""
        changed = {}
        if self.replica == 0:
            for name, model in self.models.items():
                initial = self.initial[name]
                changed[name] = {
                    k: v for k, v in _cpu_state(model).items() if not torch.equal(v, initial[k])
                }
        gathered = [None] * self.world if self.world > 1 else [changed]
        if self.world > 1:
            dist.all_gather_object(gathered, changed)
        if self.rank != 0:
            yield {}
            return
        for name, copy_ in self.copies.items():
            state = dict(self.initial[name])
            for part in reversed(gathered[: self.stages]):  # the first stage wins a tie
                state.update(part.get(name, {}))
            copy_.load_state_dict(state)
        with on_device(self.copies, self.device) as models:
            yield models

    def save(self, directory: Path, *, rank: int) -> None:
        if self.replica != 0:  # replicas are identical
            return
        state = {
            "models": {name: model.state_dict() for name, model in self.models.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedules": {n: s.state_dict() for n, s in self.lr_schedules.items()},
        }
        torch.save(state, directory / f"pipeline_stage{self.stage}.pt")

    def load(self, directory: Path) -> None:
        path = directory / f"pipeline_stage{self.stage}.pt"
        state = torch.load(path, map_location=self.device, weights_only=True)
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            self.lr_schedules[name].load_state_dict(state["schedules"][name])


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
