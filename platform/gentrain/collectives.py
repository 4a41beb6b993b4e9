"""How long the ranks of a job wait for each other: the collectives' timeout (from
train.stall_timeout), and a wait outside any collective while rank 0 evaluates."""

import contextlib
from datetime import timedelta

import torch

# While rank 0 evaluates, the other ranks wait for it outside any collective: an evaluation may
# take longer than a collective may wait (train.stall_timeout), and the driver's watchdog follows
# rank 0's progress through it.
EVALUATION_WAIT = timedelta(days=1)


def tell_others(key: str) -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.distributed_c10d._get_default_store().set(key, "1")


def wait_for_rank0(key: str) -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.distributed_c10d._get_default_store().wait([key], EVALUATION_WAIT)


def set_collective_timeout(seconds: float) -> None:
    """How long a collective of this process waits for its peers: the groups there are and
    those made from now on (a pipeline's, DeepSpeed's)."""
    from torch.distributed import distributed_c10d

    limit = timedelta(seconds=seconds)
    distributed_c10d.default_pg_timeout = limit
    distributed_c10d.default_pg_nccl_timeout = limit
    if torch.distributed.is_initialized():
        for group in list(distributed_c10d._world.pg_map):
            with contextlib.suppress(ValueError):  # a group this process is not part of
                torch.distributed.set_timeout(limit, group)
