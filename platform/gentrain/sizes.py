"""Byte counts as people write and read them."""

import re

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """'24GiB', '80GB', '512MiB', '1.5T', '1000000' -> bytes (binary units with an i)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not found or (found[3] and not found[2]):
        raise ValueError("a size such as 24GiB, 80GB or 512MiB")
    number, unit, binary = found.groups()
    scale = 1024 ** ("kmgt".index(unit) + 1) if binary else _UNITS[unit]
    value = int(float(number) * scale)
    if value <= 0:
        raise ValueError("a size above zero")
    return value


def size(count: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"
