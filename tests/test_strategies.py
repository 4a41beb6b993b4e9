"""Strategies: the DeepSpeed config a spec generates, and every family trained under every strategy
on a real local Ray with 2 gloo workers (debug flavors, a few steps): the loss falls, the run ends
with its model in MLflow."""

import mlflow
import pytest
import ray

from conftest import JOBS
from gentrain import launch
from gentrain import spec as spec_module
from gentrain.strategies.deepspeed import deepspeed_config

GAN = JOBS / "dcgan_digits.yaml"
DEEPSPEED = ["train.strategy=deepspeed"]


def _config(overrides: list[str], *, world: int = 2) -> dict:
    return deepspeed_config(spec_module.load(GAN, DEEPSPEED + overrides), world=world)


def test_config_takes_batch_zero_and_clipping_from_the_spec():
    config = _config(
        ["data.batch_size=64", "train.deepspeed.zero_stage=1", "optim.grad_clip=0.5"], world=4
    )
    assert config["train_batch_size"] == 64
    assert config["train_micro_batch_size_per_gpu"] == 16
    assert config["gradient_accumulation_steps"] == 1
    assert config["zero_optimization"] == {"stage": 1}
    assert config["gradient_clipping"] == 0.5
    assert "torch_autocast" not in config and "optimizer" not in config


def test_accumulation_splits_each_workers_batch():
    config = _config(["data.batch_size=64", "train.deepspeed.gradient_accumulation_steps=4"])
    assert config["train_micro_batch_size_per_gpu"] * 2 * 4 == config["train_batch_size"] == 64


def test_offload_and_precision_and_gpu_optimizer():
    config = _config(
        [
            "train.use_gpu=true",
            "train.precision=bf16",
            "optim.name=adamw",
            "train.deepspeed.zero_stage=3",
            "train.deepspeed.offload_optimizer=cpu",
            "train.deepspeed.offload_param=nvme",
            "train.deepspeed.nvme_path=/local/nvme",
            "train.deepspeed.gradient_clipping=2.0",
        ]
    )
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {
        "device": "nvme",
        "pin_memory": True,
        "nvme_path": "/local/nvme",
    }
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert config["gradient_clipping"] == 2.0
    assert config["optimizer"]["type"] == "AdamW"  # DeepSpeed's fused one on the GPU


def test_raw_config_overrides_generated_keys_deeply():
    raw = "{zero_optimization: {reduce_bucket_size: 1000}, steps_per_print: 5}"
    config = _config([f"train.deepspeed.config={raw}"])
    assert config["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000}
    assert config["steps_per_print"] == 5


# --- every family under every strategy ------------------------------------------------------

FAMILY_JOBS = {
    "gan": "dcgan_digits.yaml",
    "vae": "vae_digits.yaml",
    "diffusion": "diffusion_digits.yaml",
    "flow": "flow_digits.yaml",
    "gpt": "gpt_python_docs.yaml",
    "bert": "bert_python_docs.yaml",
}
STRATEGY_SETTINGS = {
    "ddp": [],
    "zero1": DEEPSPEED + ["train.deepspeed.zero_stage=1"],
    "zero2": DEEPSPEED + ["train.deepspeed.zero_stage=2"],
    "zero3": DEEPSPEED + ["train.deepspeed.zero_stage=3"],
}
STEPS = 8


@pytest.fixture(scope="module")
def local_ray():
    yield  # launch.run starts the embedded Ray once; every cell of the matrix reuses it
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGY_SETTINGS)
@pytest.mark.parametrize("family", FAMILY_JOBS)
def test_family_trains_under_strategy(family, strategy, local_ray, tmp_path):
    job = spec_module.load(
        JOBS / FAMILY_JOBS[family],
        [
            *STRATEGY_SETTINGS[strategy],
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"storage.path={tmp_path / 'checkpoints'}",
            "model.flavor=debug",
            "data.batch_size=16",
            f"train.max_steps={STEPS}",
            "train.log_every=1",
            f"train.eval_every={STEPS}",
            f"train.checkpoint_every={STEPS}",
            "eval.num_samples=32",
            "optim.lr=3e-3",
            "optim.schedule=constant",
            "optim.warmup_steps=0",
        ],
    )
    result = launch.run(job)
    client = mlflow.MlflowClient(result.tracking_uri)
    history = sorted(client.get_metric_history(result.run_id, "loss"), key=lambda m: m.step)
    losses = [m.value for m in history]
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    assert sum(losses[-3:]) < sum(losses[:3]), losses  # it learns
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gentrain.strategy"] == job.train.strategy
    assert client.search_logged_models([run.info.experiment_id]), "no model logged"
    if strategy.startswith("zero"):  # every rank saved its own optimizer shard, engine by engine
        shards = {p.name for p in (tmp_path / "checkpoints").rglob("*optim_states.pt")}
        assert shards == {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)}
