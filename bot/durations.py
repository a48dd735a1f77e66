"""Durations as people write them: `90` (seconds), `90s`, `10m`, `4h`, `2d`."""

from __future__ import annotations

import re

from .errors import UsageError

__all__ = ["seconds"]

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def seconds(value: str | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    found = _DURATION.match(value)
    if found is None:
        raise UsageError(f"{value!r} is not a duration (e.g. 90, 90s, 10m, 4h, 2d)")
    return float(found[1]) * _UNITS[found[2].lower()]
