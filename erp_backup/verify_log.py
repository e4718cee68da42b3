"""The verification log: one line per verified set, appended by every verification.

The strategy's §5.3 asks operators to check a verification log after each verification; every
verification (the verify flow, the CLI, ``scripts/verify_backup.sh``) appends here, whatever
started it. One line per set, ``key=value`` fields so ``grep``/``awk`` read it::

    2026-11-29T07:51:03Z set=full-20261129T020000Z level=full outcome=passed problem=-
    2026-11-29T07:51:04Z set=incr-20261129T030000Z level=full outcome=FAILED problem="files.tar.zst: sha256 mismatch"

A problem text can name paths from a (possibly crafted) set: it is written JSON-quoted, so no
newline or control character from a set can forge a line. The log is rotated by size
(``verify.log`` → ``verify.log.1`` … ``.N``) under an exclusive ``flock`` so two verifications never
interleave or rotate twice. Failing to write the log never fails a verification: the caller gets
a warning to log instead.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from erp_backup.config import Settings
    from erp_backup.verify import VerifyReport

DEFAULT_LOG = Path("/var/log/erp-backup/verify.log")


@dataclass(frozen=True)
class VerifyLine:
    set_id: str
    level: str
    ok: bool
    problem: str = ""


def _field(text: str) -> str:
    if text and text != "-" and all(c.isprintable() and not c.isspace() and c not in '"\\=' for c in text):
        return text
    return json.dumps(text, ensure_ascii=True) if text else "-"


def format_line(line: VerifyLine, when: datetime) -> str:
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"{stamp} set={_field(line.set_id)} level={_field(line.level)} "
            f"outcome={'passed' if line.ok else 'FAILED'} problem={_field(line.problem)}\n")


def _rotate(path: Path, keep: int) -> None:
    if keep <= 0:
        path.unlink(missing_ok=True)
        return
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


def append(path: Path, lines: Iterable[VerifyLine], *, max_bytes: int = 1 << 20, keep: int = 5,
           now: datetime | None = None) -> str | None:
    """Append one line per set; rotate first if the log has reached ``max_bytes``. Returns None,
    or a warning (the log could not be written) for the caller to log: it never raises."""
    text = "".join(format_line(line, now or datetime.now(UTC)) for line in lines)
    if not text:
        return None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                if path.is_symlink():
                    return f"verification log {path} is a symbolic link: not written (remove it)"
                if path.exists() and path.stat().st_size >= max_bytes:
                    _rotate(path, keep)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as f:
                    f.write(text)
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(lock_fd)
    except OSError as e:
        return f"verification log {path} not written: {e.strerror or e} (check [verify] log and its directory)"
    return None


def parse_line(text: str) -> dict[str, str]:
    """One log line back into its fields (``time``, ``set``, ``level``, ``outcome``, ``problem``)."""
    stamp, _, rest = text.rstrip("\n").partition(" ")
    out = {"time": stamp}
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            dec = json.JSONDecoder()
            value, end = dec.raw_decode(rest)
            rest = rest[end:].lstrip(" ")
            out[key] = str(value)
        else:
            value, _, rest = rest.partition(" ")
            out[key] = "" if value == "-" else value
    return out


def record(settings: Settings, reports: Iterable[VerifyReport]) -> str | None:
    """``append`` one line per report to the configured log ([verify] log); a warning or None."""
    v = settings.verify
    return append(v.log, [VerifyLine(r.set_id, r.level, r.ok, "; ".join(r.problems)) for r in reports],
                  max_bytes=v.log_max_bytes, keep=v.log_keep)
