"""The two kinds of failure gentrain tells apart: bad input (exit 2) and runtime faults (exit 1)."""


class SpecError(ValueError):
    """Bad input: a spec, an override, a file or a setting the user can fix. The message is one line
    that names the field or file and what is allowed."""


class GentrainError(RuntimeError):
    """A runtime fault reported plainly (a missing weights file, a failed run)."""
