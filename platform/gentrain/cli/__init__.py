"""The gentrain command line: parses, calls the Python API, prints.

Bad input exits 2 with one line on stderr; a failed run exits 1."""

import os
import sys

import typer

from gentrain.cli.common import app, fault

# Each registers its commands, in the order `gentrain --help` lists them.
from gentrain.cli import train, runs, jobs, ui  # noqa: F401  # isort: skip

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except SystemExit as end:
        _exit(end.code)
    except Exception as error:  # a fault gentrain did not foresee: still one line
        try:
            fault(error)
        except typer.Exit as end:
            _exit(end.exit_code)


def _exit(code: int | str | None) -> None:
    """Once a command has used Ray (run, sweep), stop it and end the process without Python's
    own teardown: Ray's shutdown at exit sleeps 0.5 s for logs the driver does not show, and
    unloading torch and MLflow takes over 1 s more, all after the run's result is printed.
    Everything the command wrote is closed by then: runs ended, files written, output flushed."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        raise SystemExit(code)
    import logging

    from gentrain import cluster

    cluster.shutdown()
    logging.shutdown()
    if isinstance(code, str):  # SystemExit's own convention: the message, then status 1
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
