"""Recovery objectives: durations as operators write them, RPO and RTO arithmetic. Pure.

* ``parse_duration("4h")`` -> 14400.0 (also ``90m``, ``1d``, ``30s``, ``1h30m``, a bare number of seconds);
* ``max_gap(times, now, window)``: the largest gap between consecutive restorable sets whose later
  set lies in the window ``[now - window, now]``; the gap reaching into the window from an older set
  counts from the window's start; a history shorter than the window counts from its first set;
* ``extrapolate(seconds, restored_bytes, current_bytes)``: linear in the data size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from erp_backup.core.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(value: object, *, key: str = "duration") -> float:
    """Seconds of ``value``: a number (seconds) or text like ``4h``, ``90m``, ``1h30m``, ``2d``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a duration", hint='write e.g. "4h", "90m" or 3600 (seconds)')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(f"(?:{_PART.pattern})+", text):
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise ConfigError(f"{key}: {value!r} is not a duration",
                              hint='write e.g. "4h", "90m", "1h30m", "2d" or a number of seconds')
    else:
        raise ConfigError(f"{key}: {value!r} is not a duration", hint='write e.g. "4h" or 3600 (seconds)')
    if seconds <= 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"{key}: {value!r} must be a positive duration", hint='e.g. "1h"')
    return seconds


def human(seconds: float) -> str:
    """``3h 5m``, ``1h``, ``1d``, ``42 s``: for messages (zero units left out)."""
    s = int(round(seconds))
    if s < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    return " ".join(f"{n}{u}" for n, u in ((d, "d"), (h, "h"), (m, "m")) if n) or "0m"


@dataclass(frozen=True)
class Gap:
    seconds: float
    after: str | None  # the set before the gap (None: the window's start)
    before: str  # the set that ends it


def max_gap(sets: Iterable[tuple[str, datetime]], now: datetime, window: timedelta = timedelta(hours=24)
            ) -> Gap | None:
    """The largest gap between consecutive sets (``(id, finished_at)``) ending inside ``[now - window, now]``.
    An older set just before the window anchors the first gap at the window's start; with no set before
    the window, the history starts at its first set. None with fewer than two points."""
    start = now - window
    ordered = sorted((t, i) for i, t in sets if t <= now)
    before = [x for x in ordered if x[0] < start]
    inside = [x for x in ordered if x[0] >= start]
    points: list[tuple[datetime, str | None]] = [(t, i) for t, i in inside]
    if before and inside:
        points.insert(0, (start, None))
    if len(points) < 2:
        return None
    best: Gap | None = None
    for (t0, a), (t1, b) in zip(points, points[1:], strict=False):
        g = (t1 - t0).total_seconds()
        if best is None or g > best.seconds:
            best = Gap(g, a, b or "")
    return best


def extrapolate(seconds: float, restored_bytes: int, current_bytes: int) -> float:
    """The restore time scaled linearly to the current data size (never below the measured time)."""
    if restored_bytes <= 0 or current_bytes <= restored_bytes:
        return seconds
    return seconds * current_bytes / restored_bytes
