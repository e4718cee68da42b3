"""``verify --remote``: every remote object of a set streamed and checked, nothing written to disk.

Per set: ``SHA256SUMS`` (bounded), its signature when signing is configured, the manifest (its
SHA-256 against ``SHA256SUMS``, its header against the set's name), then each artifact's size and
SHA-256 against the manifest and ``SHA256SUMS`` (read to exactly the recorded size: a longer
object is an error, not a longer read). A set only verifies if every set its restore reads does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from erp_backup import remote_sets
from erp_backup.adapters.storage.base import RemoteStore
from erp_backup.adapters.storage.local import MANIFEST, SUMS
from erp_backup.config import Settings
from erp_backup.core.chain import Damaged
from erp_backup.core.errors import BackupError, CryptoError, IntegrityError
from erp_backup.core.models import BackupId, Manifest
from erp_backup.verify import VerifyReport

LEVEL = "remote"


SignatureCheck = Callable[[BackupId, bytes, "bytes | None"], "str | None"]


@contextmanager
def signature_checker(settings: Settings) -> Iterator[SignatureCheck]:
    """``check(set id, SHA256SUMS bytes, signature bytes or None)`` -> why the set is not signed as
    configured, or None. Without ``[encryption] sign`` there is nothing to check. One GPG session
    for every set checked; a configuration problem (no verification key) raises at once."""
    from erp_backup import encryption

    if not encryption.signs(settings):
        yield lambda _sid, _sums, _sig: None
        return
    with encryption.session(settings, signing=True) as s:
        s.trusted()  # no verification key configured: one error now, not one per set

        def check(sid: BackupId, sums: bytes, sig: bytes | None) -> str | None:
            try:
                s.check_signature_bytes(sums, sig, sid.value)
            except CryptoError as e:
                return e.message.removeprefix(f"set {sid}: ")
            return None

        yield check


def _own(check_signature: SignatureCheck, store: RemoteStore, sid: BackupId, objects: dict[str, int]
         ) -> tuple[VerifyReport, tuple[BackupId, ...]]:
    problems: list[str] = []
    checked = 0

    def bad(text: str) -> tuple[VerifyReport, tuple[BackupId, ...]]:
        problems.append(f"{sid}: {text}")
        return VerifyReport(sid.value, LEVEL, tuple(problems), 0, checked, tuple(problems)), ()

    if MANIFEST not in objects:
        return bad("incomplete remotely: no manifest.json (an upload did not finish; the next one completes it)")
    if SUMS not in objects:
        return bad(f"{SUMS} is missing remotely")
    try:
        raw, sums = remote_sets.read_sums(store, sid)
        sig = remote_sets.read_bounded(store, f"{sid}/{remote_sets.SIG}", 1 << 16) \
            if remote_sets.SIG in objects else None
        problem = check_signature(sid, raw, sig)
        if problem:
            return bad(problem)
        head = remote_sets.header_of(store, sid)
        if isinstance(head, Damaged):
            return bad(head.reason)
        m: Manifest = head
        if MANIFEST not in sums:
            return bad(f"{SUMS} does not list {MANIFEST}")
        if objects[MANIFEST] > remote_sets.MAX_MANIFEST:
            return bad(f"{MANIFEST} is {objects[MANIFEST]} bytes, too large to be one")
        digest, size = remote_sets.sha256_stream(
            remote_sets.stream_bounded(store, f"{sid}/{MANIFEST}", objects[MANIFEST]))
        checked += size
        if digest != sums.pop(MANIFEST):
            return bad(f"{MANIFEST} does not match its checksum in {SUMS}")
        if sums != {a.name: a.sha256 for a in m.artifacts}:
            return bad(f"{SUMS} and {MANIFEST} disagree on the artifacts")
        for a in m.artifacts:
            if a.name not in objects:
                problems.append(f"{sid}: {a.name} is missing remotely")
                continue
            if objects[a.name] != a.size:
                problems.append(f"{sid}: {a.name} has {objects[a.name]} bytes remotely, the manifest records {a.size}")
                continue
            h = hashlib.sha256()
            for chunk in remote_sets.stream_bounded(store, f"{sid}/{a.name}", a.size):
                h.update(chunk)
            checked += a.size
            if h.hexdigest() != a.sha256:
                problems.append(f"{sid}: {a.name} does not match its checksum (SHA-256 {h.hexdigest()[:16]}…, "
                                f"expected {a.sha256[:16]}…)")
    except BackupError as e:
        if not isinstance(e, IntegrityError):
            raise  # the store failed (network, access): not a verdict on the set
        problems.append(f"{sid}: {e.message}")
        return VerifyReport(sid.value, LEVEL, tuple(problems), 0, checked, tuple(problems)), ()
    return VerifyReport(sid.value, LEVEL, tuple(problems), len(m.artifacts), checked, tuple(problems)), m.depends_on


def verify_remote(settings: Settings, store: RemoteStore, ids: Iterable[str] | None = None) -> list[VerifyReport]:
    """A report per remote set (``ids``, or every complete one; an incomplete one named in ``ids``
    fails). A set fails as well when a set its restore reads is missing remotely or fails."""
    with signature_checker(settings) as check_signature:
        reports = _verify(check_signature, store, ids)
    _record(settings, reports)
    return reports


def _record(settings: Settings, reports: list[VerifyReport]) -> None:
    """The outcome beside the local sets (``<id>.remote-verified.json``: remote retention reads it).
    Best effort: the local directory may be gone (a disaster) or read-only. Each outcome also gets
    its line in the verification log ([verify] log), level ``remote-<level>``."""
    import logging

    from erp_backup import verdicts, verify_log

    v = settings.verify
    warn = verify_log.append(v.log, [verify_log.VerifyLine(r.set_id, f"remote-{r.level}", r.ok, "; ".join(r.problems))
                                     for r in reports], max_bytes=v.log_max_bytes, keep=v.log_keep)
    if warn:
        logging.getLogger("erp_backup.run").warning("%s", warn)
    for r in reports:
        try:
            verdicts.record(settings.storage.local_dir, r.set_id, ok=r.ok, level=r.level, problems=r.problems,
                            where="remote")
        except OSError:
            pass


def _verify(check_signature: SignatureCheck, store: RemoteStore, ids: Iterable[str] | None) -> list[VerifyReport]:
    listing = remote_sets.scan(store)
    wanted = [BackupId(i) for i in ids] if ids else listing.complete
    own: dict[BackupId, tuple[VerifyReport, tuple[BackupId, ...]]] = {}

    def checked(sid: BackupId) -> tuple[VerifyReport, tuple[BackupId, ...]]:
        if sid not in own:
            objects = listing.objects.get(sid.value)
            if objects is None:
                problem = f"{sid}: not in {store.describe()}"
                own[sid] = VerifyReport(sid.value, LEVEL, (problem,), 0, 0, (problem,)), ()
            else:
                own[sid] = _own(check_signature, store, sid, objects)
        return own[sid]

    out = []
    for sid in wanted:
        rep, needs = checked(sid)
        extra = []
        for dep in needs:
            dep_rep, _ = checked(dep)
            if not dep_rep.ok:
                extra.append(f"{sid}: needs {dep}, which failed: {dep_rep.problems[0]}")
        if extra:
            rep = VerifyReport(rep.set_id, rep.level, rep.problems + tuple(extra), rep.files_checked,
                               rep.bytes_checked, rep.shared_problems)
        out.append(rep)
    return out


def rows(reports: list[VerifyReport]) -> list[dict[str, object]]:
    return [{"set": r.set_id, "level": r.level, "result": "passed" if r.ok else "FAILED",
             "problems": "; ".join(r.problems) or "-", "bytes checked": r.bytes_checked,
             "objects checked": r.files_checked} for r in reports]
