"""The checkpoint format of ddp and fsdp: torch.distributed.checkpoint (DCP). Each rank writes its
own shards of every network's weights and optimizer state, keyed by parameter name; loading reads
them into whatever layout the loading job has (another world size, whole replicas or shards), so a
checkpoint of either strategy resumes under the other, on any number of workers."""

import warnings
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

DIRECTORY = "dcp"  # the shards and DCP's metadata
SCHEDULES = "schedules.pt"  # rank 0's: each network's learning-rate schedule (and loss scaler)


def written(directory: Path) -> bool:
    return (directory / DIRECTORY).is_dir()


def save(
    directory: Path,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedules: dict[str, Any],
    *,
    rank: int,
    asynchronous: bool = False,
    group: dist.ProcessGroup | None = None,
) -> Future | None:
    """Every rank calls it (a collective): each writes its shards; rank 0 the schedules.
    `asynchronous`: the state is copied to CPU memory now and written by a thread (its
    collectives on `group`); the Future is done when the files are whole."""
    if rank == 0:
        torch.save(schedules, directory / SCHEDULES)
    with _alone_quietly() as alone:
        state, where = _state(models, optimizers), directory / DIRECTORY
        if asynchronous:
            return dcp.async_save(state, checkpoint_id=where, process_group=group, no_dist=alone)
        dcp.save(state, checkpoint_id=where, no_dist=alone)
    return None


def load(
    directory: Path, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> dict[str, Any]:
    """Load the weights and optimizer state into `models` and `optimizers` as they are laid out
    here (a collective); returns the schedules."""
    state = _state(models, optimizers)
    with _alone_quietly() as alone:
        dcp.load(state, checkpoint_id=directory / DIRECTORY, no_dist=alone)
    for name, model in models.items():
        set_state_dict(
            model,
            optimizers[name],
            model_state_dict=state[name]["model"],
            optim_state_dict=state[name]["optimizer"],
        )
    return torch.load(directory / SCHEDULES, weights_only=True)


def _state(models, optimizers) -> dict[str, dict[str, Any]]:
    """Each network's weights and optimizer state by parameter name, as this rank holds them
    (the optimizer's moments are created first, where it has not stepped yet, to be loaded into)."""
    state = {}
    for name, model in models.items():
        weights, optimizer = get_state_dict(model, optimizers[name])
        state[name] = {"model": weights, "optimizer": optimizer}
    return state


@contextmanager
def _alone_quietly():
    """Whether this process trains alone, without a process group (a PlainSession): then DCP
    reads and writes by itself, which it warns of; gentrain means it."""
    alone = not dist.is_initialized()
    with warnings.catch_warnings():
        if alone:
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield alone
