"""What `gentrain run` shows while it trains and when it ends."""

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gentrain.cli.common import out, ui_address
from gentrain.redact import redact


class TrainingProgress:
    """step / max_steps, loss, samples/s and ETA, drawn by the driver from rank 0's reports: a live
    bar on a terminal, a plain line every few seconds when the output is a file or a pipe."""

    PLAIN_INTERVAL = 10.0  # seconds between plain lines

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.live = out.is_terminal
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=out,
            disable=not self.live,
        )
        self.task = self.bar.add_task("starting", total=max_steps, stats="")
        self.latest: dict[str, float] = {}
        self.first: tuple[int, float] | None = None  # (step, time) of the first report
        self.last_plain = 0.0

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def started(self, run_id: str) -> None:
        self.bar.update(self.task, description=f"run {run_id[:8]}")
        out.print(f"MLflow run {run_id}: starting Ray workers...", markup=False)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if self.first is None:  # a resumed run starts part way: rate and ETA count from here
            self.first = (step, now)
            self.bar.reset(self.task, total=self.max_steps, completed=step)
        self.latest.update(metrics)
        shown = [f"{k} {self.latest[k]:.4g}" for k in ("loss", "fid", "is") if k in self.latest]
        if "samples_per_sec" in self.latest:
            shown.append(f"{self.latest['samples_per_sec']:.0f} samples/s")
        self.bar.update(self.task, completed=step, stats="  ".join(shown))
        if not self.live and (
            now - self.last_plain >= self.PLAIN_INTERVAL or step == self.max_steps
        ):
            self.last_plain = now
            out.print(
                f"step {step}/{self.max_steps}  {'  '.join(shown)}  eta {self._eta(step, now)}",
                markup=False,
                highlight=False,
            )

    def _eta(self, step: int, now: float) -> str:
        first_step, first_time = self.first
        if step <= first_step:
            return "-"
        seconds = (now - first_time) / (step - first_step) * (self.max_steps - step)
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def print_summary(result, *, shown: tuple[str, ...]) -> None:
    """What the run ended with: its `shown` metrics (the loss, the job's evaluation metrics)."""
    out.print()
    out.print(
        f"[bold green]done[/]: MLflow run {result.run_id} in experiment '{result.experiment}'"
    )
    final = {k: result.metrics[k] for k in shown if k in result.metrics}
    if final:
        out.print("final: " + "  ".join(f"{k} {v:.4g}" for k, v in final.items()), markup=False)
    out.print(f"tracking store: {redact(result.tracking_uri)}", markup=False)
    address = ui_address(result.tracking_uri, f"#/runs/{result.run_id}")
    out.print(f"look at it: {address}", markup=False)
