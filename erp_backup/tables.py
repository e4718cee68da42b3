"""Plain-text tables and sizes for the terminal (the CLI and the demo)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TextIO


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_table(rows: Sequence[Mapping[str, object]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols), file=out)
    print("  ".join("-" * widths[c] for c in cols), file=out)
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols), file=out)
