"""Rank 0's handle on the job's run: everything it logs goes through the run's outbox."""

import logging
import os
import re
import tempfile
import time
from pathlib import Path

from gentrain.tracking.models import log_pytorch_model, model_format, no_requirement_scan
from gentrain.tracking.outbox import Outbox, last_step
from gentrain.tracking.store import client_for

SAMPLES = "samples"  # the image key of each evaluation's sample grid
TEXTS = "samples.json"  # the table of each evaluation's sample texts


# A preview text's parts are labelled by lines such as "[prompt]"; the table's columns gather
# them by role. The UI's compare view groups rows by the first column and puts the second of
# each run side by side: the same prompt, each run's generation.
ROLES = {
    "prompt": ("prompt", "masked"),
    "generation": ("model", "filled", "sample", "text"),
    "reference": ("reference", "original"),
}


def text_rows(texts: list[str], *, step: int) -> dict[str, list]:
    """Preview texts as table columns: prompt, generation, reference, step, sample, then any
    part whose label has no role. A text without a prompt (a free sample) is named by number."""
    rows = []
    for number, text in enumerate(texts):
        parts = _labelled_parts(text)
        row = {role: _first(parts, labels) for role, labels in ROLES.items()}
        row["prompt"] = row["prompt"] or f"(free sample {number})"
        row |= {"step": step, "sample": number}
        known = {label for labels in ROLES.values() for label in labels}
        row |= {label: part for label, part in parts.items() if label not in known}
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return {column: [row.get(column, "") for row in rows] for column in columns}


def _labelled_parts(text: str) -> dict[str, str]:
    parts, label = {}, "text"
    for line in text.split("\n"):
        if re.fullmatch(r"\[[a-z_]+\]", line):
            label = line[1:-1]
            parts.setdefault(label, "")
        else:
            parts[label] = f"{parts[label]}\n{line}" if parts.get(label) else line
    return parts


def _first(parts: dict[str, str], labels: tuple[str, ...]) -> str:
    return next((parts[label] for label in labels if label in parts), "")


def outbox_root() -> Path:
    """GENTRAIN_OUTBOX, else .gentrain/outbox in the working directory, else (that directory
    was removed while the run went on) in the home directory."""
    if configured := os.environ.get("GENTRAIN_OUTBOX"):
        return Path(configured)
    try:
        return Path.cwd() / ".gentrain" / "outbox"
    except FileNotFoundError:
        return Path.home() / ".gentrain" / "outbox"


def outbox_dir(run_id: str) -> Path:
    """Where rank 0 keeps what it logs until the tracking store has it (on its own machine)."""
    return outbox_root() / run_id


class RunLogger:
    """Rank 0's handle on the job's run. Everything goes through an outbox (tracking.outbox):
    logging never waits on the store. After a resume, steps already in the run's history are
    not logged again, so a replayed stretch of training never doubles a metric, a sample or a
    checkpoint's model."""

    def __init__(self, *, uri: str, run_id: str, outbox: Path, warn=None):
        self.uri, self.run_id = uri, run_id
        history = client_for(uri).get_metric_history(run_id, "loss")
        sent = max((m.step for m in history), default=0)
        self.logged_through = max(sent, last_step(outbox, "loss"))
        self.warn = warn or _log_warning  # shown where the run is watched
        self.outbox = Outbox(outbox, uri=uri, run_id=run_id, warn=self.warn)
        self._step_metrics: list[list] = []  # the entries logged at the latest step

    def _replayed(self, step: int) -> bool:
        """Whether `step` was logged before this process started (a resumed run replays the
        steps after its checkpoint; a fresh run logs step 0's samples)."""
        return self.logged_through > 0 and step <= self.logged_through

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        if self._replayed(step) or not metrics:
            return
        now = int(time.time() * 1000)
        entries = [[k, float(v), now, step] for k, v in metrics.items()]
        if self._step_metrics[:1] and self._step_metrics[0][3] != step:
            self._step_metrics = []
        self._step_metrics += entries  # a checkpoint at this step links to them
        self.outbox.put({"metrics": entries})

    def log_checkpoint(self, *, step: int, location: str) -> None:
        """The checkpoint taken at `step` as a logged model, with the metrics of its step."""
        if self._replayed(step):
            return
        metrics = [entry for entry in self._step_metrics if entry[3] == step]
        self.outbox.put({"checkpoint": {"step": step, "metrics": metrics, "location": location}})

    def set_tag(self, key: str, value: str) -> None:
        self.outbox.put({"tag": [key, value]})

    def log_image_grid(self, images, *, step: int) -> None:
        """images: (N, C, H, W) in [-1, 1] -> one grid, MLflow's image `samples` at `step`: the
        run's chart view shows it with a step slider, the compare view runs side by side."""
        from torchvision.utils import save_image

        if self._replayed(step):
            return
        side = images.shape[-1]
        scale = max(1, 32 // side)  # small images are enlarged (nearest) so the grid is legible
        images = images.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"step_{step}.png"
            save_image(images.float().cpu() * 0.5 + 0.5, path, nrow=8, padding=2, pad_value=1.0)
            self.outbox.put_image(path, key=SAMPLES, step=step)

    def log_texts(self, texts: list[str], *, step: int) -> None:
        """-> rows of MLflow's table samples.json (the compare view shows runs' texts side by
        side): the step, the sample's number and each labelled part of it."""
        if self._replayed(step):
            return
        self.log_table(text_rows(texts, step=step), path=TEXTS, step=step)

    def log_table(self, columns: dict[str, list], *, path: str, step: int) -> None:
        """-> rows of the MLflow table `path` (each evaluation's rows added to it)."""
        if self._replayed(step):
            return
        self.outbox.put({"table": columns, "path": path})

    def log_datasets(self, entries: list[dict]) -> None:
        """MLflow dataset inputs (tracking.datasets); a resumed run's are not logged twice."""
        self.outbox.put({"datasets": entries})

    def log_directory(self, directory: Path, artifact_path: str) -> None:
        """Every file under `directory`, under `artifact_path` (its subdirectories kept)."""
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                parent = path.parent.relative_to(directory)
                self.outbox.put_file(path, str(Path(artifact_path) / parent))

    def log_model(self, module, *, example_input, register_as: str | None, step: int) -> None:
        """The final model as an MLflow PyTorch model under `model` (code included, so a fresh
        process loads it with `mlflow.pytorch.load_model("runs:/<id>/model")`)."""
        import torch
        from mlflow.models import infer_signature

        module, example_input = module.cpu().eval(), example_input.cpu()
        with torch.no_grad():
            output = module(example_input)
        signature = None  # a module that returns several tensors is logged without one
        if isinstance(output, torch.Tensor):
            signature = infer_signature(example_input.numpy(), output.numpy())

        def log() -> None:
            log_pytorch_model(
                module,
                signature,
                uri=self.uri,
                run_id=self.run_id,
                register_as=register_as,
                step=step,
            )

        def save(path: Path) -> dict:
            import mlflow

            with no_requirement_scan():
                mlflow.pytorch.save_model(
                    module, str(path), signature=signature, **model_format(module)
                )
            return {"saved_model": path.name, "register_as": register_as, "step": step}

        self.outbox.put_model(log, save)

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the store to have everything; False: the outbox keeps
        what it lacks."""
        return self.outbox.close(timeout)


def _log_warning(text: str) -> None:
    logging.getLogger("gentrain").warning("gentrain: %s", text)
