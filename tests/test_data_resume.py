"""Exact resume at any world size (issue 36): every rank logs the ids of the examples it trains
on; a run of 2 workers stopped mid-epoch goes on on 3 workers, stops again, and finishes on 1.
Together they train on exactly the global batches of an uninterrupted run. Resuming on data that
changed since is refused, naming the change."""

import io

import numpy as np
from PIL import Image

from conftest import gentrain

STEPS = 21  # 178 training images: 14 steps an epoch, so the last run crosses into the second
PROBE = """
import os
from dataclasses import dataclass

import torch
from gentrain.families import FamilySpec

calls = 0


@dataclass(frozen=True)
class Config:
    width: int = 1


class Step:
    phases = ("net",)

    def build(self, config, data):
        return {"net": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))}

    def loss(self, models, batch, *, phase):
        global calls
        calls += 1
        if calls == int(os.environ.get("PROBE_FAIL_AT", 0)):
            raise RuntimeError("probe: stopped on purpose")
        pixels = ((batch.flatten(1) + 1) * 127.5).round().long()
        ids = (pixels[:, 0] * 256 + pixels[:, 1]).tolist()  # what the image was made with
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        with open(os.path.join(os.environ["PROBE_DIR"], f"rank{rank}.txt"), "a") as log:
            log.write(" ".join(map(str, ids)) + "\\n")
        return models["net"](batch).pow(2).mean(), {}

    def sample(self, models, n):
        return torch.zeros(n, 1, 8, 8)


FAMILY = FamilySpec(
    name="probe", modality="image", config_cls=Config, flavors={"tiny": {}}, step=Step
)
"""


def _image_folder(directory, count: int) -> None:
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        pixels[0, 0], pixels[0, 1] = i // 256, i % 256
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (directory / f"{i:04d}.png").write_bytes(buffer.getvalue())


def _steps(directory, world: int, first: int, last: int) -> list[list[int]]:
    """The global batches of steps first..last that `directory`'s ranks logged, in rank order
    (logged lines past `last`, by ranks that went on while another stopped, are left out)."""
    ranks = [
        (directory / f"rank{rank}.txt").read_text().splitlines()[: last - first + 1]
        for rank in range(world)
    ]
    return [sum(([int(i) for i in r[k].split()] for r in ranks), []) for k in range(len(ranks[0]))]


def test_a_run_stopped_mid_epoch_resumes_on_3_and_on_1_workers_at_the_next_example(
    new_store, tmp_path
):
    new_store(tmp_path)
    (tmp_path / "probe.py").write_text(PROBE)
    _image_folder(tmp_path / "images", 200)
    (tmp_path / "job.yaml").write_text(
        "name: probe\nmodel: {family: 'probe:FAMILY', flavor: tiny}\n"
        "data: {source: 'images:images', channels: 1, batch_size: 12}\n"
        f"train: {{workers: 2, max_steps: {STEPS}, checkpoint_every: 3, eval_every: 21,"
        " log_every: 3, max_failures: 0}\n"
        "eval: {metrics: []}\nstorage: {path: checkpoints}\n"
    )

    def run(name: str, *args: str, fail_at: int = 0):
        (tmp_path / name).mkdir()
        env = {"PROBE_DIR": str(tmp_path / name), "PROBE_FAIL_AT": str(fail_at)}
        return gentrain("run", "job.yaml", *args, cwd=tmp_path, env=env)

    whole = run("whole")
    assert whole.returncode == 0, whole.stderr
    uninterrupted = _steps(tmp_path / "whole", 2, 1, STEPS)
    assert len(uninterrupted) == STEPS and all(len(batch) == 12 for batch in uninterrupted)
    epoch = sum(uninterrupted[:14], [])
    assert len(set(epoch)) == len(epoch) == 168, "no example twice in an epoch"
    assert set(uninterrupted[14]) & set(epoch), "the second epoch trains on them again"

    stopped = run("first", fail_at=7)  # 2 workers; the checkpoint of step 6 is the last
    assert stopped.returncode == 1, stopped.stderr
    run_id = stopped.stdout.split("MLflow run ")[1].split(":")[0]
    again = run("second", "--resume", run_id, "--set", "train.workers=3", fail_at=4)
    assert again.returncode == 1, again.stderr  # on 3 workers from step 7; stops at step 10
    last = run("third", "--resume", run_id, "--set", "train.workers=1")
    assert last.returncode == 0, last.stderr  # on 1 worker from step 10

    assert _steps(tmp_path / "first", 2, 1, 6) == uninterrupted[:6]
    assert _steps(tmp_path / "second", 3, 7, 9) == uninterrupted[6:9]
    assert _steps(tmp_path / "third", 1, 10, STEPS) == uninterrupted[9:]

    (tmp_path / "images" / "0000.png").rename(tmp_path / "images" / "moved.png")
    refused = gentrain("run", "job.yaml", "--resume", run_id, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and "data.source: the data changed since run" in line, line
    assert "added: " in line and "moved.png" in line and "removed: " in line
    assert "--allow-data-change" in line
