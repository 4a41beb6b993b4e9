"""What one worker holds, and sends, under each layout a job could train in: the ZeRO paper's
model-state formulas (Rajbhandari et al. 2020, table 1) at the precision the strategy keeps its
weights in, the probe's measured activations at the micro-batch each worker runs, and the bytes
each collective moves per step (ring algorithms: an all-reduce sends 2(N-1)/N of its buffer, a
reduce-scatter or an all-gather (N-1)/N)."""

from dataclasses import asdict, dataclass
from typing import Any

from gentrain.errors import SpecError
from gentrain.plan.probe import Probe
from gentrain.spec import JobSpec, trial_spec

FP32 = 4
# fp32 moments the optimizer keeps per parameter (Adam: m and v)
MOMENTS = {"adam": 8, "adamw": 8, "adagrad": 4, "sgd": 4}


@dataclass(frozen=True)
class Layout:
    strategy: str  # ddp, fsdp, deepspeed, pipeline
    workers: int
    zero_stage: int | None = None
    offload: str = "none"  # deepspeed: optimizer, optimizer+param; fsdp: cpu
    stages: int | None = None
    microbatches: int | None = None

    @property
    def name(self) -> str:
        if self.strategy == "deepspeed":
            name = f"zero{self.zero_stage}"
        elif self.strategy == "pipeline":
            name = f"pipeline {self.stages}x{self.microbatches}"
        else:
            name = self.strategy
        return name if self.offload == "none" else f"{name} offload {self.offload}"

    def settings(self, spec: JobSpec) -> dict[str, Any]:
        """The spec's dotted values that train this layout (the other strategies' sections
        back to their defaults; a deepspeed spec keeps the rest of its own section)."""
        values: dict[str, Any] = {
            "train.strategy": self.strategy,
            "train.workers": self.workers,
            "train.deepspeed": {},
            "train.pipeline": {},
            "train.fsdp": {},
        }
        if self.strategy == "deepspeed":
            own = spec.train.deepspeed.model_dump() if spec.train.strategy == "deepspeed" else {}
            optimizer = "cpu" if "optimizer" in self.offload else "none"
            param = "cpu" if "param" in self.offload else "none"
            values["train.deepspeed"] = {
                **own,
                "zero_stage": self.zero_stage,
                "offload_optimizer": optimizer,
                "offload_param": param,
            }
        elif self.strategy == "pipeline":
            own = spec.train.pipeline.model_dump() if spec.train.strategy == "pipeline" else {}
            values["train.pipeline"] = {
                **own,
                "stages": self.stages,
                "microbatches": self.microbatches,
            }
        elif self.strategy == "fsdp" and self.offload == "cpu":
            values["train.fsdp"] = {"offload": "cpu"}
        return values


@dataclass
class Row:
    """One layout's bytes per worker (the fullest worker's) and per step."""

    strategy: str
    zero_stage: int | None
    offload: str
    stages: int | None
    microbatches: int | None
    workers: int
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    transient_bytes: int  # weights gathered for a block, DDP's gradient buckets
    overhead_bytes: int  # CPU: the worker process, DeepSpeed's library, host copies of weights
    total_bytes: int
    fits: bool
    allreduce_bytes: int
    reduce_scatter_bytes: int
    allgather_bytes: int
    p2p_bytes: int  # activations and their gradients sent between pipeline stages
    comm_bytes_per_step: int
    name: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def layout(self) -> Layout:
        return Layout(
            self.strategy,
            self.workers,
            zero_stage=self.zero_stage,
            offload=self.offload,
            stages=self.stages,
            microbatches=self.microbatches,
        )


def layouts(spec: JobSpec, probe: Probe, workers: list[int]) -> list[Layout]:
    """Every layout the spec could train in at each worker count, simplest first: ddp, fsdp,
    ZeRO 1-3 (with offload where the job trains on GPUs), pipelines of 2 stages up."""
    gpu = spec.train.use_gpu
    found = []
    for n in workers:
        found += [Layout("ddp", n), Layout("fsdp", n)]
        if gpu:
            found.append(Layout("fsdp", n, offload="cpu"))
        for stage in (1, 2, 3):
            found.append(Layout("deepspeed", n, zero_stage=stage))
            if gpu:
                found.append(Layout("deepspeed", n, zero_stage=stage, offload="optimizer"))
        if gpu:
            found.append(Layout("deepspeed", n, zero_stage=3, offload="optimizer+param"))
        microbatches = spec.train.pipeline.microbatches
        for stages in range(2, min(n, len(probe.blocks)) + 1):
            if n % stages == 0:
                found.append(Layout("pipeline", n, stages=stages, microbatches=microbatches))
    return [layout for layout in found if _applies(spec, layout)]


def _applies(spec: JobSpec, layout: Layout) -> bool:
    try:
        trial_spec(spec.to_dict(), layout.settings(spec))
    except SpecError:
        return False
    return True


def estimate(
    spec: JobSpec, probe: Probe, layout: Layout, *, device_memory: int, on_cpu: bool
) -> Row:
    job = trial_spec(spec.to_dict(), layout.settings(spec))
    train, n = job.train, layout.workers
    psi, moments = probe.params, MOMENTS[job.optim.name]
    if job.optim.name == "sgd" and not job.optim.momentum:
        moments = 0
    params = grads = optimizer = transient = 0
    allreduce = reduce_scatter = allgather = p2p = 0.0
    examples = job.data.batch_size / (train.data_parallel * train.accumulation_steps)
    activations = _activations(job, probe, examples)
    largest_block = max((b.params for b in probe.blocks), default=psi)
    if layout.strategy == "ddp":
        params, grads, optimizer = FP32 * psi, FP32 * psi, moments * psi
        transient = FP32 * psi if n > 1 else 0  # the reducer's buckets: a copy of the gradients
        allreduce = _ring(2, n) * FP32 * psi
    elif layout.strategy == "fsdp":
        gathered = 2 if train.precision == "bf16" else FP32  # bf16: FSDP's mixed precision
        held = 0 if layout.offload == "cpu" else 1
        params, grads = held * FP32 * psi / n, held * FP32 * psi / n
        optimizer = held * moments * psi / n
        if n > 1:  # a block gathered whole, the next prefetched, and its whole gradients
            transient = min(psi, 2 * largest_block) * gathered + largest_block * FP32
        allgather = 2 * _ring(1, n) * gathered * psi  # forward and backward
        reduce_scatter = _ring(1, n) * FP32 * psi
    elif layout.strategy == "deepspeed":
        held = _zero(job, probe, layout, moments, largest_block)
        params, grads, optimizer, transient, reduce_scatter, allgather = held
    else:  # pipeline: each stage holds its blocks whole; replicas all-reduce them
        stage_params, stage_acts, sent = _pipeline(job, probe, layout)
        # every stage keeps the whole model's weights (evaluation, export); it trains its own
        params, grads, optimizer = FP32 * psi, FP32 * stage_params, moments * stage_params
        activations = stage_acts
        replicas = n // layout.stages
        allreduce = _ring(2, replicas) * FP32 * stage_params
        p2p = sent
    overhead = 0
    if on_cpu:  # host memory is the workers' memory
        library = probe.deepspeed if layout.strategy == "deepspeed" else 0
        overhead = probe.baseline + library + _host_copies(job, layout) * psi
    total = params + grads + optimizer + activations + transient + overhead
    comm = allreduce + reduce_scatter + allgather + p2p
    return Row(
        strategy=layout.strategy,
        zero_stage=layout.zero_stage,
        offload=layout.offload,
        stages=layout.stages,
        microbatches=layout.microbatches,
        workers=n,
        params_bytes=round(params),
        grads_bytes=round(grads),
        optimizer_bytes=round(optimizer),
        activations_bytes=round(activations),
        transient_bytes=round(transient),
        overhead_bytes=round(overhead),
        total_bytes=round(total),
        fits=total <= device_memory,
        allreduce_bytes=round(allreduce),
        reduce_scatter_bytes=round(reduce_scatter),
        allgather_bytes=round(allgather),
        p2p_bytes=round(p2p),
        comm_bytes_per_step=round(comm),
        name=layout.name,
    )


def _zero(
    job: JobSpec, probe: Probe, layout: Layout, moments: int, largest_block: int
) -> tuple[float, float, float, float, float, float]:
    """DeepSpeed ZeRO's params, grads, optimizer and transient bytes per worker, and the bytes
    it reduce-scatters and all-gathers a step."""
    train, n, psi = job.train, layout.workers, probe.params
    transient = 0.0
    width = _deepspeed_width(job)
    stage = layout.zero_stage
    # ZeRO-1/2 keep an fp32 master of their partition; ZeRO-3's fp32 weights are their own
    master = 0 if stage == 3 and width == FP32 else FP32
    params = width * psi / (n if stage == 3 else 1)
    if stage == 3 and n > 1:
        # a network another's phase runs through (a GAN's discriminator in the generator's
        # phase) stays gathered whole through that phase: only its own engine's backward
        # releases it (measured: bench/plan_accuracy.py)
        params += width * (psi - max(probe.networks.values()))
    # DeepSpeed's ZeRO-1 keeps only its partition of the gradients once they are reduced,
    # as ZeRO-2 does (their whole size only through the backward pass); each network's
    # engine frees them after its step: one network's at a time
    grads = width * max(probe.networks.values()) / n
    optimizer = (master + moments) * psi / n
    if "optimizer" in layout.offload:
        optimizer = 0
    if "param" in layout.offload:
        params = 0
    if stage == 1 and n > 1:
        transient = width * psi * (n - 1) / n
    if stage == 3 and n > 1:
        transient = min(psi, 2 * largest_block) * width
    micro = train.accumulation_steps if stage >= 2 else 1
    reduce_scatter = _ring(1, n) * width * psi * micro
    allgather = _ring(1, n) * width * psi * (2 * micro if stage == 3 else 1)
    return params, grads, optimizer, transient, reduce_scatter, allgather


def _host_copies(job: JobSpec, layout: Layout) -> int:
    """Bytes per parameter of the fullest worker's copies of the weights in host memory: rank 0
    keeps plain ones for evaluation and export where its own are sharded or wrapped, and a
    pipeline's every stage keeps the weights as built."""
    train = job.train
    if layout.strategy == "pipeline":
        return 2 * FP32
    per_block = train.activation_checkpointing or train.compile
    return FP32 if layout.strategy in ("fsdp", "deepspeed") or per_block else 0


def _ring(factor: int, n: int) -> float:
    """The share of a buffer each of n ranks sends: 2(n-1)/n for an all-reduce (factor 2)."""
    return factor * (n - 1) / n


def _deepspeed_width(job: JobSpec) -> int:
    """Bytes of DeepSpeed's weights and gradients: its own bf16/fp16 modes keep them in 16 bits
    (train.precision autocasts fp32 weights instead)."""
    config = job.train.deepspeed.config
    halves = any((config.get(key) or {}).get("enabled") for key in ("bf16", "fp16"))
    return 2 if halves else FP32


def _activations(job: JobSpec, probe: Probe, examples: float) -> float:
    """What the backward pass keeps of one micro-batch: with activation checkpointing only each
    block's output, and one block's own at a time while it is recomputed."""
    whole = probe.activations.at(examples)
    if not job.train.activation_checkpointing or not probe.blocks:
        return whole
    outputs = sum(b.output.at(examples) for b in probe.blocks)
    return min(whole, outputs + max(b.activations.at(examples) for b in probe.blocks))


def _pipeline(job: JobSpec, probe: Probe, layout: Layout) -> tuple[float, float, float]:
    """The fullest stage's parameters and activations, and the bytes one stage sends a step."""
    # here, not at the top: the pipeline strategy imports torch's pipelining and with it dynamo
    # (a second), and every process that imports gentrain.launch would pay for it
    from gentrain.strategies.pipeline import balanced_cuts

    stages, micro = layout.stages, layout.microbatches
    replicas = layout.workers // stages
    examples = job.data.batch_size / (replicas * micro)  # one micro-batch
    sizes = [b.params for b in probe.blocks]
    bounds = [*balanced_cuts(sizes, stages), len(sizes)]
    parts = [probe.blocks[bounds[s] : bounds[s + 1]] for s in range(stages)]
    held = min(micro, stages) if job.train.pipeline.schedule == "1f1b" else micro
    params = max(sum(b.params for b in part) for part in parts)
    acts = max(
        held * sum(b.activations.at(examples) + b.output.at(examples) for b in part)
        for part in parts
    )
    # each phase runs the pipeline once: per micro-batch, a middle stage sends its output
    # forward and its input's gradient back
    boundaries = [part[-1].output.at(examples) for part in parts[:-1]]
    sent = probe.phases * micro * 2 * max(boundaries)
    return params, acts, sent
