"""Alert audiences and the integrity event the security team's automations match.

Two audiences (strategy §10.2), each a notification block that ``erp-backup setup`` fills:

- **administrators** (block ``erp-backup``, ``setup --notify URL``): every alert;
- **security team** (block ``erp-backup-security``, ``setup --notify-security URL``): integrity,
  signature and permission failures, and failed restore tests.

A set that fails a check, or a set a restore refuses, emits ``erp-backup.integrity.failed``
(resource ``erp-backup.set.<id>``) with a ``class`` in its payload:

- ``signature``  — ``SHA256SUMS.sig`` missing, bad, or made by a key that is not a verification key;
- ``permission`` — a set file that cannot be read (permission denied), or one that group or others
  can read (backup files are 0600, set directories 0700: a wider mode exposes the data);
- ``checksum``   — everything else a verification finds (a checksum mismatch, a broken archive or
  dump, a missing member of its chain).

Emitting never fails the run that found the problem: the run fails on its own, and a lost event is a
warning in its log. Without a Prefect API (the in-process CLI) there is no automation to reach and
nothing is emitted.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from erp_backup.core.errors import BackupError, ChainError, CryptoError, IntegrityError, RestoreError

if TYPE_CHECKING:
    from erp_backup.verify import VerifyReport

INTEGRITY_EVENT = "erp-backup.integrity.failed"
CLASSES = ("checksum", "signature", "permission")
ADMINS_BLOCK = "erp-backup"
SECURITY_BLOCK = "erp-backup-security"

_SIGNATURE = re.compile(r"signature|not signed|signed by|SHA256SUMS\.sig", re.IGNORECASE)
_PERMISSION = re.compile(r"permission denied|\[Errno 13\]|readable by group or others|operation not permitted",
                         re.IGNORECASE)

_DAMAGED = re.compile(r"\bis damaged\b|manifest is damaged|checksum", re.IGNORECASE)

log = logging.getLogger("erp_backup.alerts")


def classify(problem: str) -> str:
    """The class of a verification problem or refusal text: signature, permission or checksum."""
    if _SIGNATURE.search(problem):
        return "signature"
    if _PERMISSION.search(problem):
        return "permission"
    return "checksum"


def classify_error(err: BaseException) -> str | None:
    """The class of an error that refused a set, or None when it says nothing about the set's
    integrity (a wrong passphrase, a missing key, a dead database: the failed-run alert covers those)."""
    if isinstance(err, PermissionError):
        return "permission"
    text = str(err)
    if isinstance(err, CryptoError):
        return "signature" if _SIGNATURE.search(text) else None
    if isinstance(err, IntegrityError):
        return classify(text)
    if isinstance(err, RestoreError | ChainError) and _DAMAGED.search(text):
        return classify(text)  # a set refused as damaged (its checksums or manifest disagree)
    if isinstance(err, BackupError) and _PERMISSION.search(text):
        return "permission"
    return None


def exposed_files(set_dir: Path) -> list[str]:
    """Problems for the set directory and the files in it that group or others can access (a set is
    0700 with 0600 files), or that cannot be read. Never follows a symbolic link."""
    problems: list[str] = []
    sid = set_dir.name
    try:
        st = os.lstat(set_dir)
        names = sorted(os.listdir(set_dir)) if stat.S_ISDIR(st.st_mode) else []
    except PermissionError as e:
        return [f"{sid}: cannot read the set directory: permission denied ({e.strerror})"]
    except OSError:
        return []  # gone or unreadable for another reason: the verification names it
    if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
        problems.append(f"{sid}: the set directory is readable by group or others "
                        f"(mode {stat.S_IMODE(st.st_mode):04o}, should be 0700)")
    for name in names:
        try:
            fst = os.lstat(set_dir / name)
        except OSError:
            continue
        if stat.S_ISREG(fst.st_mode) and stat.S_IMODE(fst.st_mode) & 0o077:
            problems.append(f"{sid}/{name} is readable by group or others "
                            f"(mode {stat.S_IMODE(fst.st_mode):04o}, should be 0600)")
    return problems


def emit_integrity(set_id: str, problem: str, cls: str, source: str) -> bool:
    """Emit ``erp-backup.integrity.failed`` for ``set_id`` (Prefect events; a no-op without a Prefect
    API). True if an event was handed to Prefect."""
    if cls not in CLASSES:
        raise ValueError(f"unknown integrity class {cls!r}")
    try:
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.events import emit_event
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value() and FlowRunContext.get() is None and TaskRunContext.get() is None:
            return False  # no server: no automation to reach (and no temporary server started for it)
        ev = emit_event(event=INTEGRITY_EVENT,
                        resource={"prefect.resource.id": f"erp-backup.set.{set_id.replace(' ', '-')}",
                                  "prefect.resource.name": set_id, "erp-backup.class": cls},
                        payload={"class": cls, "set": set_id, "problem": problem[:2000], "source": source})
    except Exception as e:  # an event is a courtesy: the run fails (and alerts) on its own
        log.warning("could not emit %s for %s: %s: %s", INTEGRITY_EVENT, set_id, type(e).__name__, e)
        return False
    return ev is not None


MAX_EVENTS = 5  # per verification run: a disk that damaged 200 sets is one incident, not 200 pages


def report_class(r: VerifyReport) -> tuple[str, str]:
    """(class, the problem that decides it) of a failed report: a signature problem anywhere in it
    wins, then a permission one, else its first problem (checksum)."""
    classes = [classify(p) for p in r.problems]
    cls = next((c for c in ("signature", "permission") if c in classes), "checksum")
    return cls, next(p for p, c in zip(r.problems, classes, strict=True) if c == cls)


def planned_events(reports: Iterable[VerifyReport]) -> list[tuple[str, str, str]]:
    """(set, problem, class) of the events for ``reports``: one per failed set, the first ``MAX_EVENTS``
    of them; the others in one more (set ``<n> more sets``, the worst class among them)."""
    failed = [(r.set_id, *report_class(r)) for r in reports if not r.ok]
    out = [(sid, problem, cls) for sid, cls, problem in failed[:MAX_EVENTS]]
    rest = failed[MAX_EVENTS:]
    if rest:
        classes = {c for _, c, _ in rest}
        cls = next(c for c in ("signature", "permission", "checksum") if c in classes)
        ids = ", ".join(sid for sid, _, _ in rest[:20]) + (" …" if len(rest) > 20 else "")
        out.append((f"{len(rest)} more sets", f"{len(rest)} more sets failed too: {ids}", cls))
    return out


def emit_for_reports(reports: Iterable[VerifyReport], source: str) -> int:
    """The integrity events of ``planned_events``; how many were emitted."""
    return sum(emit_integrity(sid, problem, cls, source) for sid, problem, cls in planned_events(reports))


def emit_for_error(set_id: str | None, err: BaseException, source: str) -> bool:
    """An integrity event for a refused set, if ``err`` is about its integrity."""
    cls = classify_error(err)
    if cls is None:
        return False
    return emit_integrity(set_id or "unknown", str(err), cls, source)


def emit_cli_refusal(set_id: str | None, err: BaseException, source: str = "restore") -> bool:
    """The CLI refused a set before Prefect started (restore's preflight): when a Prefect API is
    configured, emit the integrity event and wait (at most 10 s) until it is sent, since the process
    exits right after. Nothing is imported or sent for an error that is no integrity failure."""
    if classify_error(err) is None:
        return False
    try:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        if not url:
            return False
        import httpx

        try:  # a dead server: no event, and no seconds of Prefect's retry noise before the error line
            httpx.get(f"{str(url).rstrip('/')}/health", timeout=2).raise_for_status()
        except httpx.HTTPError as e:
            log.warning("the integrity alert for %s was not sent: the Prefect API at %s did not answer (%s)",
                        set_id, url, type(e).__name__)
            return False
        sent = emit_for_error(set_id, err, source)
        if sent:
            from prefect.events.worker import EventsWorker

            EventsWorker.drain_all(timeout=10)
        return sent
    except Exception as e:  # never hides the refusal itself
        log.warning("could not emit %s for %s: %s: %s", INTEGRITY_EVENT, set_id, type(e).__name__, e)
        return False
