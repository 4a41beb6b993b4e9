"""Faults injected into Ray's worker processes: a test starts its Ray with one of these as the
runtime_env's worker_process_setup_hook (and this directory on the workers' PYTHONPATH)."""

import os
import signal


def die_sealing_second_checkpoint() -> None:
    """Rank 1 is SIGKILLed while saving its second checkpoint: its files are written, its
    manifest is not, and its part never reaches Ray. Once per test (GENTRAIN_FAULT_MARKER: the
    file that records it happened), so the restarted workers save normally."""
    from gentrain import checkpoints

    seal = checkpoints.seal
    sealed = []

    def dying_seal(directory, *, rank):
        if rank == 1:
            sealed.append(directory)
            if len(sealed) == 2 and _first_time():
                os.kill(os.getpid(), signal.SIGKILL)
        seal(directory, rank=rank)

    checkpoints.seal = dying_seal


def _first_time() -> bool:
    try:
        os.close(os.open(os.environ["GENTRAIN_FAULT_MARKER"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True
