"""A checkpoint read whole, whichever strategy and world size wrote it: each network's weights,
its optimizer's state by parameter name (full size) and its learning-rate schedule. A strategy
loads it when the checkpoint is not in its own format: ddp or fsdp resuming DeepSpeed's, and
DeepSpeed resuming ddp's, fsdp's, or its own at another world size or ZeRO stage. DeepSpeed's
ZeRO checkpoints are read through DeepSpeed's universal checkpoint (ds_to_universal)."""

import contextlib
import io
import tempfile
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from gentrain.errors import GentrainError
from gentrain.strategies import dcp_format

DEEPSPEED = "deepspeed"  # the directory DeepSpeed's engines save under, one per network


@dataclass
class WholeState:
    weights: dict[str, dict[str, torch.Tensor]]  # network -> state_dict (parameters and buffers)
    moments: dict[str, dict[str, dict[str, torch.Tensor]]]  # network -> parameter -> state
    schedules: dict[str, dict]  # network -> its LambdaLR's state_dict


def read(directory: Path, parameters: dict[str, list[str]]) -> WholeState:
    """The checkpoint in `directory`, whole. `parameters`: each network's parameter names in the
    order its optimizer holds them (how a plain optimizer's state refers to them)."""
    if dcp_format.written(directory):
        return _from_dcp(directory)
    if (directory / DEEPSPEED).is_dir():
        return _from_deepspeed(directory / DEEPSPEED, parameters)
    raise GentrainError(f"checkpoint {directory.name}: neither a DCP nor a DeepSpeed checkpoint")


def _from_dcp(directory: Path) -> WholeState:
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "whole.pt"
        dcp_to_torch_save(directory / dcp_format.DIRECTORY, whole)
        state = torch.load(whole, weights_only=True)
    schedules = torch.load(directory / dcp_format.SCHEDULES, weights_only=True)
    return WholeState(
        weights={name: parts["model"] for name, parts in state.items()},
        moments={name: parts["optimizer"]["state"] for name, parts in state.items()},
        schedules={name: parts["schedule"] for name, parts in schedules.items()},
    )


def _from_deepspeed(directory: Path, parameters: dict[str, list[str]]) -> WholeState:
    whole = WholeState({}, {}, {})
    for name in parameters:
        saved = directory / name / "state"
        model_states = load_weights_only(sorted(saved.glob("*model_states.pt"))[0], "cpu")
        whole.schedules[name] = model_states["lr_scheduler"]
        weights = {k: v for k, v in model_states["module"].items() if v.numel()}  # ZeRO-3: none
        if list(saved.glob("*optim_states.pt")):  # ZeRO 1-3: the optimizer's shards, flat
            params, moments = _universal(saved, model_states)
        else:  # ZeRO 0: a plain optimizer's state, beside the whole weights
            params = {}
            moments = {
                parameters[name][index]: state
                for index, state in model_states["optimizer"]["state"].items()
            }
        weights.update(params)
        for alias, source in (model_states.get("shared_params") or {}).items():  # tied weights
            weights.setdefault(alias, weights[source])
        whole.weights[name] = weights
        whole.moments[name] = moments
    return whole


def _universal(saved: Path, model_states: dict) -> tuple[dict, dict[str, dict]]:
    """Each parameter's fp32 weights and optimizer state from DeepSpeed's universal checkpoint
    of the ZeRO checkpoint in `saved` (reshaped: ZeRO-3's come flat)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    shapes = {k: v for group in model_states["param_shapes"] for k, v in group.items()}
    params, moments = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        args = Namespace(
            input_folder=str(saved),
            output_folder=tmp,
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # gentrain's engines are not Megatron's: no TP or PP
        )
        quiet = io.StringIO()  # its progress, line by line
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            ds_to_universal(args)
        for folder in sorted(p for p in (Path(tmp) / "zero").iterdir() if p.is_dir()):
            state = {}
            for file in folder.glob("*.pt"):
                value = torch.load(file, weights_only=True)
                value = value["param"] if isinstance(value, dict) else value
                shape = shapes.get(folder.name, value.shape)  # not a tied weight's second name
                state[file.stem] = value.view(shape) if value.dim() else value
            params[folder.name] = state.pop("fp32")
            if state:
                moments[folder.name] = state
    steps = [state["step"] for state in moments.values() if "step" in state]
    step = steps[0] if steps else _zero3_step(saved)
    for state in moments.values():
        state.setdefault("step", step)
    return params, moments


def _zero3_step(saved: Path) -> torch.Tensor:
    """The optimizer's step count, which ZeRO-3's universal checkpoint leaves out."""
    optim_states = load_weights_only(sorted(saved.glob("*optim_states.pt"))[0], "cpu")
    state = optim_states["optimizer_state_dict"]["optimizer_state_dict"]["state"]
    return next(iter(state.values()))["step"]


def parameter_names(models: dict[str, torch.nn.Module]) -> dict[str, list[str]]:
    """Each network's trained parameters' names, in the order its optimizer holds them."""
    return {
        name: [key for key, p in model.named_parameters() if p.requires_grad]
        for name, model in models.items()
    }


def like(saved: dict[str, torch.Tensor], template: dict[str, torch.Tensor]) -> dict:
    """A parameter's saved optimizer state in the dtypes of this optimizer's state (a step count
    saved as an integer is a float tensor to torch's Adam)."""
    missing = set(template) - set(saved)
    if missing:
        raise GentrainError(f"the checkpoint's optimizer state lacks {', '.join(sorted(missing))}")
    return {
        key: torch.as_tensor(saved[key]).to(dtype=value.dtype)
        if torch.is_tensor(value)
        else saved[key]
        for key, value in template.items()
    }


def load_weights_only(path: str | Path, map_location=None) -> Any:
    """A file of a DeepSpeed checkpoint, read with torch.load(weights_only=True)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    held = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    with torch.serialization.safe_globals(held):
        return torch.load(path, map_location=map_location, weights_only=True)
