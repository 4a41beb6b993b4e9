"""The two kinds of failure gentrain tells apart: bad input (exit 2) and runtime faults (exit 1)."""

import traceback

from gentrain.redact import redact


class SpecError(ValueError):
    """Bad input: a spec, an override, a file or a setting the user can fix. The message is one line
    that names the field or file and what is allowed."""


class GentrainError(RuntimeError):
    """A runtime fault reported plainly (a missing weights file, a failed run)."""


ERROR_FILE = "error.txt"  # a failed run's (or sweep's) full traceback, an MLflow artifact


def traceback_of(err: BaseException) -> str:
    """The whole traceback of `err` and of the errors it came from, as Python prints it (a Ray
    worker's error includes the worker's own traceback), a password in a URI masked."""
    return redact("".join(traceback.format_exception(err)))


def first_line(err: BaseException) -> str:
    """An error's first non-empty line (at most 300 characters), else its class name; a password
    in a URI masked (MLflow's errors name the URL they asked)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return redact(lines[0].strip())[:300] if lines else type(err).__name__
