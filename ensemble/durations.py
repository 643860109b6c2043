"""Parse human durations such as ``90s``, ``10m``, ``1.5h``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import re

from ensemble.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str, *, option: str = "--timeout") -> float:
    """Seconds in ``text``; raises UsageError naming the option and the bad value."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    elif t and not _PART.sub("", t):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(t))
    else:
        seconds = 0.0
    if seconds <= 0:
        raise UsageError(f"{option}: cannot read duration '{text}' (use e.g. 90s, 10m, 1h, 1h30m)")
    return seconds
