"""Strategies: the DeepSpeed config a spec generates and how its checkpoints load (the families x
strategies matrix is in test_matrix.py)."""

import pickle

import pytest
import torch

from conftest import JOBS
from gentrain import spec as spec_module
from gentrain.strategies.deepspeed import WeightsOnlyLoads, deepspeed_config

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


def test_no_clipping_unless_asked():
    # DeepSpeed clips to norm 1.0 when its config has no gradient_clipping
    assert _config([])["gradient_clipping"] == 0.0


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


class _Planted:
    def __reduce__(self):  # unpickling it would run code
        return (print, ("unpickled",))


def test_deepspeed_checkpoints_load_weights_only(tmp_path):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.zero.config import ZeroStageEnum

    loads = WeightsOnlyLoads(TorchCheckpointEngine())
    torch.save({"zero_stage": ZeroStageEnum.optimizer_states, "w": torch.ones(2)}, tmp_path / "a")
    state = loads.load(str(tmp_path / "a"), map_location="cpu")
    assert state["zero_stage"] == ZeroStageEnum.optimizer_states
    assert torch.equal(state["w"], torch.ones(2))
    torch.save({"w": torch.ones(2), "payload": _Planted()}, tmp_path / "b")
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        loads.load(str(tmp_path / "b"))
