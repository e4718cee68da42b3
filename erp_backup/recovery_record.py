"""The restore test's record next to the sets: ``.restore-test.json`` (the last result) and
``.restore-test-history.jsonl`` (one line per test). Standard library only: ``status`` reads it in
well under a second."""

from __future__ import annotations

import json
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


def last_result(root: Path) -> dict[str, Any] | None:
    """The last recorded restore test, or None (never recorded, unreadable)."""
    try:
        with open(root / RECORD, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
