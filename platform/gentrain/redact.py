"""Secrets never leave in what gentrain writes or prints: passwords in URIs are masked."""

import re
from typing import Any

# scheme://user:password@host -> scheme://user:***@host
_PASSWORD_IN_URI = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):([^@/\s]+)@")


def redact(text: str) -> str:
    return _PASSWORD_IN_URI.sub(r"\1:***@", text)


def redact_values(value: Any) -> Any:
    """`value` with every string in it (nested dicts and lists too) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_values(item) for item in value)
    return value
