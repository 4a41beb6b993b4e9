"""`gentrain plan`: what a job needs per worker under each layout it could train in (ddp, fsdp,
ZeRO 1-3 with offload, pipelines), whether that fits the workers' memory, what each sends per
step, and the layout to pick: of those that fit, the one that sends least, then on the fewest
workers, then the simplest."""

from dataclasses import dataclass

from gentrain.plan.estimate import Layout, Row, estimate, layouts
from gentrain.plan.probe import Probe, probe
from gentrain.sizes import parse_size, size
from gentrain.spec import JobSpec


@dataclass
class Plan:
    spec: JobSpec
    probe: Probe
    memory: int  # bytes each worker may hold
    memory_source: str  # where that figure comes from
    rows: list[Row]
    chosen: Row | None

    def reason(self) -> str:
        if self.chosen is None:
            smallest = min(self.rows, key=lambda row: row.total_bytes)
            return (
                f"no layout fits in {size(self.memory)} per worker ({self.memory_source}): the "
                f"smallest, {smallest.name} on {_workers(smallest.workers)}, needs "
                f"{size(smallest.total_bytes)}"
            )
        fitting = [row for row in self.rows if row.fits]
        row = self.chosen
        return (
            f"{row.name} on {_workers(row.workers)}: it holds {size(row.total_bytes)} of "
            f"{size(self.memory)} per worker and sends {size(row.comm_bytes_per_step)} a step, "
            f"the least of the {len(fitting)} layouts that fit"
        )

    def json_rows(self) -> list[dict]:
        return [{**row.to_dict(), "recommended": row is self.chosen} for row in self.rows]


def make_plan(
    spec: JobSpec,
    *,
    memory: int | None = None,
    workers: list[int] | None = None,
    source: str = "--device-memory",
) -> Plan:
    """Probe the spec's model on this machine and estimate every layout at each worker count
    (default: the spec's train.workers) against `memory` bytes per worker (default: the first
    GPU's memory where there is one, else this machine's RAM); `source` says where `memory`
    comes from."""
    if memory is None:
        memory, source = default_memory()
    measured = probe(spec)
    on_cpu = not spec.train.use_gpu
    rows = [
        estimate(spec, measured, layout, device_memory=memory, on_cpu=on_cpu)
        for layout in layouts(spec, measured, workers or [spec.train.workers])
    ]
    return Plan(spec, measured, memory, source, rows, recommend(rows))


def resolve(spec: JobSpec) -> tuple[JobSpec, Plan | None]:
    """A spec under train.strategy: auto becomes the layout the plan recommends for its workers
    (train.device_memory each, or the default); other specs stay as they are. Fitting nowhere
    is a SpecError naming the smallest need."""
    from gentrain.errors import SpecError
    from gentrain.spec import trial_spec

    if spec.train.strategy != "auto":
        return spec, None
    memory = spec.train.device_memory
    planned = make_plan(spec, memory=memory, source="train.device_memory")
    if planned.chosen is None:
        raise SpecError(f"train.strategy: auto: {planned.reason()}")
    layout = planned.chosen.layout()
    return trial_spec(spec.to_dict(), layout.settings(spec)), planned


def recommend(rows: list[Row]) -> Row | None:
    """Of the rows that fit: the least sent per step, then the fewest workers, then the first
    (the simplest: rows come ddp, fsdp, ZeRO 1-3, offload, pipeline)."""
    fitting = [(row.comm_bytes_per_step, row.workers, i) for i, row in enumerate(rows) if row.fits]
    return rows[min(fitting)[2]] if fitting else None


def advice(spec: JobSpec, *, memory: int) -> str:
    """The plan's word for a job that ran out of `memory` bytes a worker: the layout to train
    in, at the spec's worker count or up to 8 times as many."""
    counts = [spec.train.workers * k for k in (1, 2, 4, 8)]
    planned = make_plan(spec, memory=memory, workers=counts, source="")
    row = planned.chosen
    if row is None:
        smallest = min(planned.rows, key=lambda row: row.total_bytes)
        return (
            f"gentrain plan finds no layout that fits {size(memory)} a worker on up to "
            f"{counts[-1]} workers (the smallest, {smallest.name} on "
            f"{_workers(smallest.workers)}, needs {size(smallest.total_bytes)})"
        )
    return (
        f"gentrain plan recommends {row.name} on {_workers(row.workers)} "
        f"({size(row.total_bytes)} of {size(memory)} a worker)"
    )


def advice_here(spec: JobSpec) -> str:
    """`advice` for the workers' memory as this machine tells it (a GPU job's driver without a
    GPU cannot: ""), as a clause to end a message with."""
    import torch

    if spec.train.use_gpu and not torch.cuda.is_available():
        return ""
    memory, _ = default_memory()
    try:
        return "; " + advice(spec, memory=memory)
    except Exception:  # the message stands without it
        return ""


def default_memory() -> tuple[int, str]:
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_properties(0)
        return device.total_memory, f"GPU 0, {device.name}"
    return machine_memory(), "this machine's RAM"


def machine_memory() -> int:
    """This machine's RAM, or less under a limit on the process's data (`ulimit -d`)."""
    import resource

    import psutil

    total = psutil.virtual_memory().total
    limit, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return total if limit == resource.RLIM_INFINITY else min(total, limit)


def _workers(count: int) -> str:
    return f"{count} worker" + ("s" if count > 1 else "")


__all__ = ["Layout", "Plan", "Row", "advice", "make_plan", "parse_size", "recommend", "size"]
