"""The plan as a person reads it: what was measured, a table of layouts, the pick and why."""

import io

from rich.console import Console
from rich.table import Table

from gentrain.plan import Plan, size


def show(plan: Plan, out: Console) -> None:
    measured = plan.probe
    networks = ", ".join(f"{name} {count:,}" for name, count in measured.networks.items())
    model = plan.spec.model
    out.print(
        f"{model.family} {model.flavor}: {measured.params:,} parameters ({networks}); "
        f"activations {size(measured.activations.per_example)} per example, measured in "
        f"{measured.seconds:.1f} s",
        markup=False,
        highlight=False,
    )
    if not measured.measured:
        out.print(
            f"activations not measured: {measured.params * 4 / 2**30:.1f} GiB of fp32 weights "
            "is too large to run on this machine (sizes below are model state only)",
            markup=False,
            highlight=False,
        )
    if measured.blocks:
        largest = max(block.params for block in measured.blocks)
        out.print(
            f"{len(measured.blocks)} pipeline blocks, the largest {largest:,} parameters",
            markup=False,
            highlight=False,
        )
    train = plan.spec.train
    title = (
        f"per worker, batch {plan.spec.data.batch_size}, {train.precision}, against "
        f"{size(plan.memory)} ({plan.memory_source})"
    )
    table = Table(title=title, title_justify="left")
    columns = ("layout", "workers", "params", "grads", "optimizer", "activations", "other")
    for column in (*columns, "total", "fits", "sent/step"):
        justify = "left" if column == "layout" else "right"
        table.add_column(column, justify=justify, overflow="fold", no_wrap=not out.is_terminal)
    for row in plan.rows:
        table.add_row(
            row.name + (" *" if row is plan.chosen else ""),
            str(row.workers),
            *(
                size(value)
                for value in (
                    row.params_bytes,
                    row.grads_bytes,
                    row.optimizer_bytes,
                    row.activations_bytes,
                    row.transient_bytes + row.overhead_bytes,
                    row.total_bytes,
                )
            ),
            "yes" if row.fits else "no",
            size(row.comm_bytes_per_step),
        )
    # in a terminal cells fold to its width; piped, a row is one line however wide
    wide = Console(file=out.file, width=100_000, color_system=None, emoji=False)
    (out if out.is_terminal else wide).print(table, soft_wrap=False)
    out.print(
        "other: weights gathered for a block, gradients before their reduction"
        + (
            "; the worker process, DeepSpeed's library, host copies of the weights"
            if not train.use_gpu
            else ""
        ),
        markup=False,
        highlight=False,
    )
    word = "recommended" if plan.chosen else "nothing fits"
    out.print(f"{word}: {plan.reason()}", markup=False, highlight=False)


def render(plan: Plan) -> str:
    """The plan as `gentrain plan` prints it, as plain text (a run's artifact)."""
    text = io.StringIO()
    show(plan, Console(file=text, width=100_000, color_system=None, emoji=False))
    return text.getvalue()
