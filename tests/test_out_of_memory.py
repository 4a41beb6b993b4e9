"""A job too large for its memory limit (a data-segment limit on the driver and every Ray process
it starts, as `ulimit -d` sets it) ends with one line naming the strategy settings that fit, and
what `gentrain plan` makes of it."""

import resource

import mlflow
import pytest

from conftest import JOBS, gentrain

pytestmark = pytest.mark.slow

LIMIT = 3 << 30  # bytes of heap and anonymous memory per process
# 4 blocks of width 8192: about 3.2 billion parameters, 13 GB of fp32 weights alone
TOO_LARGE = "model.overrides={layers: 4, dim: 8192, heads: 32}"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))


def test_out_of_memory_names_the_strategies_that_fit(new_store, tmp_path):
    new_store(tmp_path)
    result = gentrain(
        "run",
        str(JOBS / "gpt_python_docs.yaml"),
        "--set",
        TOO_LARGE,
        "--set",
        "train.max_steps=2",
        "--set",
        "train.max_failures=0",
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        cwd=tmp_path,
        preexec_fn=_limit_memory,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.stderr
    assert "out of memory on worker rank" in line and "gpt small (3224.8M parameters)" in line
    assert "train.strategy: deepspeed with train.deepspeed.zero_stage: 3" in line
    assert "train.strategy: pipeline with train.pipeline.stages: 2" in line
    # 51 GB of model state: no layout fits 3 GiB a worker on 2 to 16 workers
    plan = "gentrain plan finds no layout that fits 3.0 GiB a worker"
    assert f"or give the workers more memory; {plan}" in line
    assert "(the smallest, zero3 on 16 workers, needs" in line
    assert line.endswith(" GiB) (gentrain --debug shows the traceback)")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert "out of memory" in run.data.tags["gentrain.failure"]


@pytest.mark.parametrize(
    ("params", "peak", "advice"),
    [
        (
            10**9,
            4 << 30,
            "to fit, try train.strategy: deepspeed with train.deepspeed.zero_stage: 3",
        ),
        (10**5, 9 << 30, "to fit, lower data.batch_size (now 64, or use train.deepspeed"),
    ],
)
def test_the_message_tells_model_state_from_the_rest(params, peak, advice):
    """Model state (16 bytes a parameter) against the worker's peak: the larger share decides."""
    from gentrain import spec as spec_module
    from gentrain.memory import out_of_memory_message

    spec = spec_module.load(JOBS / "gpt_python_docs.yaml", ["data.batch_size=64"])
    line = out_of_memory_message(spec, where="on worker rank 0 of 2", params=params, peak=peak)
    state = f"{params * 16 / 2**30:.1f} GiB"
    assert f"the worker held {peak / 2**30:.1f} GiB: model state" in line and state in line
    assert advice in line and "\n" not in line
    assert ("data.seq_len (now" in line) == (params < peak / 32), "text: shorter windows too"
