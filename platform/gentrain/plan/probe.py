"""What a job's model is, measured on this machine: the exact parameter count of each network and
of each pipeline block, and the activation memory of one micro-batch's forward and backward pass
per phase (what autograd saves for the backward pass, told apart per example and per block)."""

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

import psutil
import torch
from torch import nn

from gentrain.data import open_data
from gentrain.families import PipelineUnsupported, get_family
from gentrain.spec import JobSpec

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ROOM = 4  # the probe builds a model only where 4 times its fp32 weights are free


@dataclass
class Activations:
    """Bytes autograd keeps for the backward pass: `fixed` + `per_example` x examples."""

    fixed: float = 0.0
    per_example: float = 0.0

    def at(self, examples: float) -> float:
        return self.fixed + self.per_example * examples


@dataclass
class Block:
    """One pipeline block of the first phase: where a pipeline can cut."""

    params: int
    activations: Activations  # saved inside the block, all phases' worst
    output: Activations  # what it hands the next block (sent between stages when cut after)


@dataclass
class Probe:
    family: str
    networks: dict[str, int]  # parameters of each network
    phases: int  # networks updated one after the other each step (a GAN's two)
    activations: Activations  # the worst phase's, the whole model
    blocks: list[Block] = field(default_factory=list)  # empty: no pipeline for this family
    baseline: int = 0  # bytes a worker holds before its model is built
    deepspeed: int = 0  # bytes importing DeepSpeed adds to a process (measured on CPU jobs)
    measured: bool = True  # False: too large to run here; its activations are not known
    seconds: float = 0.0

    @property
    def params(self) -> int:
        return sum(self.networks.values())


def probe(spec: JobSpec) -> Probe:
    """Count the spec's model on the meta device; where it fits this machine's memory with room
    to spare, build it for real on the CPU and run one forward and backward pass of each phase at
    1 and at 2 examples, under the spec's precision."""
    started = time.perf_counter()
    family = get_family(spec.model.family)
    step_fn = family.make_step()
    data = open_data(spec.data, seed=spec.train.seed)
    config = family.config(flavor=spec.model.flavor, overrides=spec.model.overrides)
    with torch.device("meta"):
        models = step_fn.build(config, data.info)
    # what a worker holds before its model: its libraries (the family's too) imported, no weights
    baseline = psutil.Process().memory_info().rss
    networks = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    found = Probe(
        family=family.name,
        networks=networks,
        phases=len(step_fn.phases),
        activations=Activations(),
        blocks=_blocks(step_fn, models, None, set(), None),
        baseline=baseline,
        measured=False,
        deepspeed=deepspeed_footprint() if not spec.train.use_gpu else 0,
    )
    # weights, gradients and the probe's own copies: a model this large is counted, not run
    if ROOM * sum(networks.values()) * 4 < free_memory():
        torch.manual_seed(spec.train.seed)
        models = step_fn.build(config, data.info)
        batches = data.stream.batches(batch_size=2, rank=0, world=1)
        try:
            batch = next(batches)[0]
        finally:
            batches.close()
        weights = {p.untyped_storage().data_ptr() for m in models.values() for p in m.parameters()}
        amp = AMP_DTYPES.get(spec.train.precision)
        whole = [
            max(_phase(step_fn, models, batch[:n], phase, weights, amp) for phase in step_fn.phases)
            for n in (1, 2)
        ]
        found.activations = _line(whole)
        found.blocks = _blocks(step_fn, models, batch, weights, amp)
        found.measured = True
    found.seconds = time.perf_counter() - started
    return found


_deepspeed_bytes: list[int] = []  # measured once a process: the import happens once


def deepspeed_footprint() -> int:
    """What importing DeepSpeed adds to this process's resident memory (0 where it was imported
    before this process could measure it)."""
    if not _deepspeed_bytes:
        before = psutil.Process().memory_info().rss
        fresh = "deepspeed" not in sys.modules
        # its logger's notes (no GPU found) would land in the plan's own output; its handler
        # keeps the stream it found, so the stream stays open
        quiet = open(os.devnull, "w")  # noqa: SIM115
        with contextlib.redirect_stdout(quiet):
            import deepspeed  # noqa: F401

        after = psutil.Process().memory_info().rss
        _deepspeed_bytes.append(max(0, after - before) if fresh else 0)
    return _deepspeed_bytes[0]


def free_memory() -> int:
    """Bytes this process may still take: the machine's available memory, or less under a
    limit on the process's data (`ulimit -d`)."""
    import resource

    available = psutil.virtual_memory().available
    limit, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if limit != resource.RLIM_INFINITY:
        available = min(available, limit - psutil.Process().memory_info().rss)
    return available


def _line(at_one_and_two: list[float]) -> Activations:
    one, two = at_one_and_two
    per_example = max(0.0, two - one)
    return Activations(fixed=max(0.0, one - per_example), per_example=per_example)


class _Saved:
    """Counts the bytes autograd saves for the backward pass, each storage once, weights not."""

    def __init__(self, weights: set[int]):
        self.weights, self.seen, self.bytes = weights, set(), 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.weights and key not in self.seen and tensor.device.type != "meta":
            self.seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def _autocast(amp):
    return torch.autocast("cpu", dtype=amp) if amp else torch.autocast("cpu", enabled=False)


def _phase(step_fn, models, batch, phase: str, weights: set[int], amp) -> float:
    """Bytes saved for the backward pass of `phase` on this batch."""
    with _Saved(weights) as saved, _autocast(amp):
        loss, _ = step_fn.loss(models, batch, phase=phase)
    loss.backward()
    _zero(models)
    return saved.bytes


def _blocks(step_fn, models, batch, weights: set[int], amp) -> list[Block]:
    """Each pipeline block's parameters, saved activations and output, per example (the worst
    phase's; without a batch, parameters only); none where the family cannot be cut into a
    pipeline."""
    if not callable(getattr(step_fn, "pipeline", None)):
        return []
    try:
        forms = {phase: step_fn.pipeline(models, phase=phase) for phase in step_fn.phases}
    except PipelineUnsupported:
        return []
    first = forms[step_fn.phases[0]].blocks
    saved = [[[0.0, 0.0] for _ in first] for _ in forms]  # phase, block, examples 1 and 2
    outputs = [[[0.0, 0.0] for _ in first] for _ in forms]
    for p, form in enumerate(forms.values() if batch is not None else []):
        for n in (1, 2):
            with _autocast(amp):
                args, target = form.inputs(batch[:n])
                for b, block in enumerate(form.blocks):
                    with _Saved(weights) as counted:
                        out = block(*args)
                    args = out if isinstance(out, tuple) else (out,)
                    saved[p][b][n - 1] = counted.bytes
                    outputs[p][b][n - 1] = sum(t.nbytes for t in args if torch.is_tensor(t))
                loss, _ = form.loss(args if len(args) > 1 else args[0], target)
            loss.backward()
            _zero(models)
    return [
        Block(
            params=sum(p.numel() for p in block.parameters()),
            activations=_line(max((s[b] for s in saved), key=lambda pair: pair[1])),
            output=_line(max((o[b] for o in outputs), key=lambda pair: pair[1])),
        )
        for b, block in enumerate(first)
    ]


def _zero(models: dict[str, nn.Module]) -> None:
    for model in models.values():
        model.zero_grad(set_to_none=True)
