"""The outcome of the last verification of each set, kept next to the set (not inside it).

``<local_dir>/<id>.verified.json`` for the local copy, ``<local_dir>/<id>.remote-verified.json``
for the off-site copy: ``{"id", "where", "result": "passed"|"failed", "level", "at", "problems"}``.
A set's own files are checksummed (``SHA256SUMS``) and never change after the commit, so the
outcome lives beside them: readers of sets ignore these files (their names are not set ids), a
manual restore never needs them, and removing a set removes its records.

Written by every verification of committed sets (``erp_backup.verify.verify_sets``: the CLI's
``verify`` and the verify flow); read by retention: a set whose last verification failed never
counts as the newest valid full. A record that cannot be read counts as failed (it cannot vouch
for the set), which only ever makes retention keep more.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from erp_backup.core.models import BackupId

SUFFIX = {"local": ".verified.json", "remote": ".remote-verified.json"}
_MAX = 1 << 20


def record_path(root: Path, set_id: str, where: str = "local") -> Path:
    return Path(root) / f"{BackupId(set_id).value}{SUFFIX[where]}"


def record(root: Path, set_id: str, *, ok: bool, level: str, problems: Iterable[str] = (),
           where: str = "local", at: datetime | None = None) -> Path:
    """Write (atomically, 0600) the outcome of one verification of ``set_id``."""
    path = record_path(root, set_id, where)
    body = {"id": set_id, "where": where, "result": "passed" if ok else "failed", "level": level,
            "at": (at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "problems": list(problems)[:20]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read(path: Path, set_id: str) -> str | None:
    """None when the record says passed; else why the set does not count as verified."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a record is a plain file, never a link
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_MAX + 1)
        data = json.loads(raw) if len(raw) <= _MAX else None
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("id") != set_id or data.get("result") not in ("passed", "failed"):
        return f"its verification record {path.name} cannot be read"
    if data["result"] == "passed":
        return None
    problems = data.get("problems") or []
    first = problems[0] if isinstance(problems, list) and problems and isinstance(problems[0], str) else "?"
    return f"its last verification ({data.get('at', '?')}) failed: {first}"


def failed(root: Path, where: str = "local") -> dict[BackupId, str]:
    """Sets whose last recorded verification failed (or whose record is unreadable), with why.
    Shaped like ``chain.select_for_time``'s ``invalid``."""
    out: dict[BackupId, str] = {}
    suffix = SUFFIX[where]
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for name in names:
        if not name.endswith(suffix):
            continue
        sid = name[: -len(suffix)]
        if not BackupId.is_valid(sid) or (where == "local" and name.endswith(SUFFIX["remote"])):
            continue
        why = _read(Path(root) / name, sid)
        if why is not None:
            out[BackupId(sid)] = why
    return out


def forget(root: Path, set_id: str, where: str = "local") -> None:
    """Remove the record of a set that is gone."""
    record_path(root, set_id, where).unlink(missing_ok=True)


def orphans(root: Path, where: str = "local") -> list[Path]:
    """Records whose set directory is gone (removed by hand, or a prune killed between the set and
    its record)."""
    suffix = SUFFIX[where]
    try:
        names = os.listdir(root)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if name.endswith(suffix) and not (where == "local" and name.endswith(SUFFIX["remote"])):
            sid = name[: -len(suffix)]
            if BackupId.is_valid(sid) and not os.path.isdir(Path(root) / sid):
                out.append(Path(root) / name)
    return out
