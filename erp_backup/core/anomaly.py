"""Is a backup's size out of line with its recent history? Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True)
class SizeVerdict:
    anomalous: bool
    reason: str
    baseline: float | None = None
    ratio: float | None = None


def size_anomaly(size: int, history: Sequence[int], *, factor: float = 3.0, min_history: int = 3,
                 min_bytes: int = 1 << 20) -> SizeVerdict:
    """Compare ``size`` with the median of ``history`` (same kind, newest last).

    Anomalous when it is more than ``factor`` times larger or smaller than the
    median. Tiny sets (both under ``min_bytes``) never count: their noise is
    meaningless. Too little history: no verdict."""
    if len(history) < min_history:
        return SizeVerdict(False, f"only {len(history)} earlier set(s) of this kind; need {min_history}")
    base = float(median(history))
    if size < min_bytes and base < min_bytes:
        return SizeVerdict(False, "set and baseline are both under the noise floor", base, None)
    ratio = size / base if base > 0 else float("inf")
    if ratio > factor:
        return SizeVerdict(True, f"{size} bytes is {ratio:.1f}x the median of the last {len(history)} "
                           f"({base:.0f} bytes)", base, ratio)
    if ratio < 1 / factor:
        return SizeVerdict(True, f"{size} bytes is only {ratio:.2f}x the median of the last {len(history)} "
                           f"({base:.0f} bytes): data may be missing", base, ratio)
    return SizeVerdict(False, f"{ratio:.2f}x the median of the last {len(history)}", base, ratio)
