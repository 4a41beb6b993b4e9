"""Out of memory on a worker, told as what to change in the spec rather than as a traceback."""

from gentrain.spec import JobSpec

# What torch (CPU and CUDA allocators) and Ray's memory monitor say when memory runs out.
_SIGNS = ("out of memory", "can't allocate memory", "cannot allocate memory", "outofmemoryerror")


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = f"{type(err).__name__} {err}".lower()
    return any(sign in text for sign in _SIGNS)


# Weights, gradients and Adam's two moments, fp32: what training keeps for each parameter
STATE_BYTES_PER_PARAM = 16


def peak_memory(device) -> int | None:
    """The most memory this worker has held: CUDA's allocator on a GPU, else the process's
    peak resident set."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def out_of_memory_message(
    spec: JobSpec, *, where: str, params: int | None = None, peak: int | None = None
) -> str:
    """One line: where memory ran out, how the worker's memory was split between model state and
    the rest (data, activations), and what to change: strategy settings that hold less model
    state per worker when the model's share is the larger, else a smaller batch."""
    train = spec.train
    size = f" ({params / 1e6:.1f}M parameters)" if params else ""
    head = (
        f"out of memory {where} training {spec.model.family} {spec.model.flavor}{size} under "
        f"train.strategy: {_current(spec)}"
    )
    state = params * STATE_BYTES_PER_PARAM if params else None
    if state is not None and peak:
        head += (
            f"; at its peak the worker held {_gib(peak)}: model state (weights, gradients, "
            f"optimizer) needs {_gib(state)}, the rest (data, activations) "
            f"{_gib(max(0, peak - state))}"
        )
        if state < peak / 2:  # the rest is the larger: less of it per step
            return (
                f"{head}; to fit, lower data.batch_size (now {spec.data.batch_size}, or use "
                "train.deepspeed.gradient_accumulation_steps to keep the global batch)"
                + (f" or data.seq_len (now {spec.data.seq_len})" if _text(spec) else "")
                + "; or give the workers more memory"
            )
    return (
        f"{head}; to fit, try {'; or '.join(_options(spec))}; "
        f"or a smaller data.batch_size (now {spec.data.batch_size})"
        + ("" if train.use_gpu else "; or give the workers more memory")
    )


def _text(spec: JobSpec) -> bool:
    from gentrain.families import get_family

    return get_family(spec.model.family).modality == "text"


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def _current(spec: JobSpec) -> str:
    train = spec.train
    if train.strategy == "deepspeed":
        ds = train.deepspeed
        offload = [
            f"offload_{what}: {device}"
            for what, device in (("optimizer", ds.offload_optimizer), ("param", ds.offload_param))
            if device != "none"
        ]
        return ", ".join([f"deepspeed (zero_stage {ds.zero_stage}", *offload]) + ")"
    if train.strategy == "pipeline":
        return f"pipeline ({train.pipeline.stages} stages)"
    return train.strategy


def _options(spec: JobSpec) -> list[str]:
    train = spec.train
    options = []
    if train.strategy != "deepspeed" or train.deepspeed.zero_stage < 3:
        options.append(
            "train.strategy: deepspeed with train.deepspeed.zero_stage: 3 (weights, gradients "
            f"and optimizer state split over the {train.workers} workers)"
        )
    ds = train.deepspeed
    if train.strategy != "deepspeed" or ds.offload_optimizer == "none":
        options.append("train.deepspeed.offload_optimizer: cpu (optimizer state in host memory)")
    if train.strategy != "deepspeed" or ds.offload_param == "none":
        options.append("train.deepspeed.offload_param: cpu or nvme, with zero_stage 3")
    stages = train.pipeline.stages if train.strategy == "pipeline" else 1
    options.append(
        f"train.strategy: pipeline with train.pipeline.stages: {max(2, stages * 2)} "
        "(each worker holds only its stage)"
    )
    return options
