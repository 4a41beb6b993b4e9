"""A checkpoint of any strategy at any world size loads under another (issue 30): each cell
trains GPT's debug flavor 2 steps under one layout (gloo processes, gentrain's own strategy),
saves, loads that checkpoint under another layout and saves again; both checkpoints, read whole,
hold the same weights, optimizer moments, step counts and schedule."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import JOBS, gentrain

LAYOUTS = {  # name: (workers, spec overrides)
    "ddp@1": (1, []),
    "ddp@2": (2, []),
    "fsdp@1": (1, ["train.strategy=fsdp"]),
    "fsdp@2": (2, ["train.strategy=fsdp"]),
    **{
        f"zero{stage}@{workers}": (
            workers,
            ["train.strategy=deepspeed", f"train.deepspeed.zero_stage={stage}"],
        )
        for stage in (0, 1, 2, 3)
        for workers in (1, 2)
    },
}
CELLS = [
    ("ddp@2", "fsdp@1"),
    ("fsdp@2", "ddp@1"),
    ("fsdp@1", "fsdp@2"),
    ("zero2@2", "fsdp@1"),
    ("zero3@2", "ddp@2"),
    ("zero0@1", "fsdp@2"),
    ("fsdp@2", "zero3@1"),
    ("ddp@1", "zero1@2"),
    ("zero1@2", "zero2@1"),
]


def _spec(name: str):
    from gentrain import spec as spec_module

    workers, overrides = LAYOUTS[name]
    return spec_module.load(
        JOBS / "gpt_python_docs.yaml",
        [
            *overrides,
            "model.flavor=debug",
            "data.batch_size=8",
            f"train.workers={workers}",
            "optim.weight_decay=0.01",
        ],
    )


def _worker(rank: int, world: int, port: int, name: str, source: str, target: str) -> None:
    from gentrain import checkpoints
    from gentrain.data import open_data
    from gentrain.families import get_family
    from gentrain.noise import DrawPlan
    from gentrain.strategies import layout, make_strategy

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ["WORLD_SIZE"] = str(world)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    spec = _spec(name)
    family = get_family("gpt")
    step_fn = family.make_step()
    data = open_data(spec.data)
    torch.manual_seed(spec.train.seed)
    models = step_fn.build(family.config(flavor="debug", overrides={}), data.info)
    strategy = make_strategy(spec, device=torch.device("cpu"), world=world, rank=rank)
    strategy.prepare(models, step_fn)
    if source:
        strategy.load(Path(source))
    else:
        batches = data.stream.batches(batch_size=8, rank=rank, world=world)
        for step in (1, 2):

            def plan(offset: int, step: int = step) -> DrawPlan:
                return DrawPlan(0, step, "gpt", batches.first_row + offset, 8 // world)

            strategy.train_phase("gpt", next(batches)[0], plan)
        batches.close()
    Path(target).mkdir(exist_ok=True)
    strategy.save(Path(target), rank=rank)
    if rank == 0:
        state = {"step": 2, "world": world, "layout": layout(spec.train)}
        (Path(target) / checkpoints.STATE).write_text(json.dumps(state))
    dist.barrier()
    dist.destroy_process_group()


def _run(name: str, *, source: Path | None, target: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        _worker,
        args=(LAYOUTS[name][0], port, name, str(source or ""), str(target)),
        nprocs=LAYOUTS[name][0],
        start_method="spawn",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The checkpoint of 2 steps under each source layout (made once)."""
    made = {}

    def checkpoint(name: str) -> Path:
        if name not in made:
            made[name] = tmp_path_factory.mktemp(name.replace("@", "-"))
            _run(name, source=None, target=made[name])
        return made[name]

    return checkpoint


def _whole(directory: Path):
    from gentrain.data import open_data
    from gentrain.families import get_family
    from gentrain.strategies import whole_state

    spec = _spec("ddp@1")
    family = get_family("gpt")
    models = family.make_step().build(
        family.config(flavor="debug", overrides={}), open_data(spec.data).info
    )
    return whole_state.read(directory, whole_state.parameter_names(models))


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, target", CELLS, ids=[f"{s}-to-{t}".replace("@", "x") for s, t in CELLS]
)
def test_a_checkpoint_loads_whole_under_another_layout(source, target, trained, tmp_path):
    saved = trained(source)
    _run(target, source=saved, target=tmp_path / "again")
    before, after = _whole(saved), _whole(tmp_path / "again")

    weights = before.weights["gpt"]
    assert set(after.weights["gpt"]) == set(weights)
    for key, value in weights.items():
        assert torch.equal(after.weights["gpt"][key].float(), value.float()), key
    moments = before.moments["gpt"]
    assert moments and set(after.moments["gpt"]) == set(moments)
    for key, state in moments.items():
        assert {"exp_avg", "exp_avg_sq", "step"} <= set(state), key
        for kind, value in state.items():
            again = after.moments["gpt"][key][kind]
            assert torch.equal(torch.as_tensor(again).float(), torch.as_tensor(value).float()), (
                key,
                kind,
            )
        assert float(state["step"]) == 2 and state["exp_avg_sq"].abs().sum() > 0, key
    assert after.schedules["gpt"]["last_epoch"] == before.schedules["gpt"]["last_epoch"] == 2


# --- end to end: `gentrain run --resume RUN_ID` under another layout -------------------------

STEPS = 10  # each leg's; a resumed run goes on to 2 * STEPS
PIPELINE = (2, ["train.strategy=pipeline", "train.pipeline.stages=2"])


@pytest.fixture(scope="module")
def local_ray():
    yield  # launch.run starts the embedded Ray once; the runs of this module reuse it
    import ray

    ray.shutdown()


def _job(tmp_path: Path, layout: str, *more: str):
    from gentrain import spec as spec_module

    return spec_module.load(JOBS / "gpt_python_docs.yaml", _settings(tmp_path, layout, *more))


def _settings(tmp_path: Path, layout: str, *more: str) -> list[str]:
    workers, overrides = LAYOUTS.get(layout) or PIPELINE
    return [
        *overrides,
        f"train.workers={workers}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"storage.path={tmp_path / 'checkpoints'}",
        "model.flavor=debug",
        "data.batch_size=16",
        f"train.max_steps={STEPS}",
        "train.log_every=1",
        f"train.eval_every={2 * STEPS}",
        f"train.checkpoint_every={STEPS}",
        "eval.metrics=[]",
        "optim.lr=3e-3",
        "optim.schedule=constant",
        "optim.warmup_steps=0",
        *more,
    ]


def _history(result) -> list[tuple[int, float]]:
    import mlflow

    client = mlflow.MlflowClient(result.tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "loss"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "first, then",
    [("ddp@2", "fsdp@1"), ("zero2@2", "ddp@1"), ("fsdp@1", "zero3@2")],
    ids=["ddp2-to-fsdp1", "zero2x2-to-ddp1", "fsdp1-to-zero3x2"],
)
def test_a_finished_run_goes_on_under_another_strategy_and_world_size(
    first, then, local_ray, new_store, tmp_path
):
    """A run of STEPS steps under `first`, continued by run id under `then` to 2 * STEPS: its
    next STEPS losses are an uninterrupted run's under `then`, within 1e-4 (the tolerance to
    which every strategy and world size follows one trajectory, test_matrix: sums reduce in
    another order, nothing else differs)."""
    import mlflow

    from gentrain import launch

    new_store(tmp_path)
    whole = launch.run(_job(tmp_path, then, f"train.max_steps={2 * STEPS}"))
    started = launch.run(_job(tmp_path, first))
    resumed = launch.run(
        _job(tmp_path, then, f"train.max_steps={2 * STEPS}"), resume_run_id=started.run_id
    )
    assert resumed.run_id == started.run_id
    history = _history(resumed)
    assert [step for step, _ in history] == list(range(1, 2 * STEPS + 1)), "no step twice"
    losses = [value for _, value in history]
    assert losses[STEPS:] == pytest.approx([v for _, v in _history(whole)][STEPS:], rel=1e-4)

    run = mlflow.MlflowClient(resumed.tracking_uri).get_run(resumed.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    workers, strategy = LAYOUTS[first][0], first.split("@")[0]
    expected = {"ddp": "ddp", "fsdp": "fsdp", "zero2": "deepspeed ZeRO-2"}[strategy]
    plural = "s" if workers > 1 else ""
    assert tags["gentrain.resumed_from_strategy"] == f"{expected} on {workers} worker{plural}"
    assert tags["gentrain.resumed_from_workers"] == str(workers)
    assert tags["gentrain.resumed_from_step"] == str(STEPS)
    assert tags["gentrain.strategy"] == _job(tmp_path, then).train.strategy
    assert tags["gentrain.workers"] == str(LAYOUTS[then][0])


@pytest.mark.slow
def test_what_cannot_resume_is_refused_before_anything_starts(local_ray, new_store, tmp_path):
    """A pipeline's checkpoint under another cut or strategy, and a run asked to continue to the
    step it has reached: exit 2, one line naming the field and what is allowed."""
    from gentrain import launch

    new_store(tmp_path)
    run_id = launch.run(_job(tmp_path, "pipeline")).run_id

    def resume(*more: str) -> str:
        sets = [arg for key in _settings(tmp_path, "pipeline", *more) for arg in ("--set", key)]
        refused = gentrain(
            "run", str(JOBS / "gpt_python_docs.yaml"), *sets, "--resume", run_id, cwd=tmp_path
        )
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        line = refused.stderr.strip()
        assert "\n" not in line, line
        return line

    line = resume("train.strategy=fsdp", f"train.max_steps={2 * STEPS}")
    assert line.startswith(f"error: train.strategy: run {run_id}'s checkpoint was written by ")
    assert "pipeline (2 stages) on 2 workers" in line and "only under pipeline" in line
    line = resume("train.workers=4", "train.pipeline.stages=4", f"train.max_steps={2 * STEPS}")
    assert "pipeline (2 stages) on 2 workers" in line
    line = resume()  # as it was: it has trained its STEPS
    assert f"train.max_steps: run {run_id} finished at step {STEPS}; set a larger" in line


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp@2", "fsdp@2"])
def test_an_asynchronous_checkpoint_holds_the_step_it_was_taken_at(
    layout, local_ray, new_store, tmp_path
):
    """train.checkpoint_async: the checkpoints of steps 5 and 10, written while the next step
    trained, hold what the same run's synchronous checkpoints hold, and are sealed whole."""
    from gentrain import checkpoints, launch

    new_store(tmp_path)
    every = ["train.checkpoint_every=5"]
    written = {}
    for asynchronous in (False, True):
        result = launch.run(
            _job(tmp_path, layout, *every, f"train.checkpoint_async={str(asynchronous).lower()}")
        )
        run_dir = tmp_path / "checkpoints" / result.run_id
        found = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
        assert [json.loads((p / checkpoints.STATE).read_text())["step"] for p in found] == [5, 10]
        assert all(checkpoints.problem(p) is None for p in found)
        written[asynchronous] = [_whole(p) for p in found]
    for sync, async_ in zip(written[False], written[True], strict=True):
        for key, value in sync.weights["gpt"].items():
            assert torch.equal(async_.weights["gpt"][key], value), key
        for key, state in sync.moments["gpt"].items():
            assert torch.equal(async_.moments["gpt"][key]["exp_avg"], state["exp_avg"]), key
