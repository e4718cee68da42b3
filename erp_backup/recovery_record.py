"""The restore test's record next to the sets: ``.restore-test.json`` (the last result) and
``.restore-test-history.jsonl`` (one line per test). Standard library only: ``status`` reads it in
well under a second."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

RECORD = ".restore-test.json"
HISTORY = ".restore-test-history.jsonl"


def write(root: Path, doc: dict[str, Any]) -> None:
    """The last result replaced atomically, a line appended to the history; both 0600."""
    text = json.dumps(doc)
    tmp = root / f"{RECORD}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / RECORD)
    fd = os.open(root / HISTORY, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text + "\n")


_NUMBERS = ("rto_seconds", "rto_extrapolated_seconds", "rto_target_seconds", "rpo_seconds", "max_gap_seconds",
            "rpo_target_seconds")


def _problem(doc: Any) -> str | None:
    """Why ``doc`` is not a record ``write`` made (the backup directory is untrusted: a damaged or
    crafted record must neither crash ``status`` nor pass for a successful test)."""
    if not isinstance(doc, dict):
        return "it is not a JSON object"
    if not isinstance(doc.get("ok"), bool):
        return "'ok' is not true or false"
    at = doc.get("tested_at")
    if not isinstance(at, str) or len(at) != 20 or not at.endswith("Z") or at[10] != "T":
        return "'tested_at' is not a UTC time"
    if not isinstance(doc.get("set"), str | None):
        return "'set' is not a set id"
    for key in _NUMBERS:
        v = doc.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
                              or v < 0):
            return f"'{key}' is not a number of seconds"
    problems = doc.get("problems", [])
    if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
        return "'problems' is not a list of texts"
    if not isinstance(doc.get("max_gap"), str | None):
        return "'max_gap' is not a text"
    return None


def last_result(root: Path) -> dict[str, Any] | None:
    """The last recorded restore test, or None (never recorded). A record that cannot be read or is
    not shaped as ``write`` makes it (never through a link) counts as a failed test that says so."""
    path = root / RECORD
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as f:
            doc = json.loads(f.read(1 << 20))
        why = _problem(doc)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        why = f"it cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})"
        doc = None
    if why is None:
        return dict(doc)
    return {"ok": False, "tested_at": None, "set": None, "problems": [
        f"the restore test record {path} is damaged: {why}; run `erp-backup restore-test` again"]}
