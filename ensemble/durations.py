"""Parse human durations such as ``90s``, ``10m``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import re

from ensemble.errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises UsageError naming the bad value."""
    s = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
        if not m.group(2):
            break
    if not s or pos != len(s) or total <= 0:
        raise UsageError(f"invalid duration '{text}': use e.g. 90s, 10m, 1h30m or seconds")
    return total
