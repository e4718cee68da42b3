"""The upload stage: after a set is committed locally, send it off-site (issue #8).

``upload_stage`` runs after ``commit`` in ``erp_backup.pipeline.run_pipeline``. It returns ``None``
when no ``[remote]`` is configured.

What is sent, in this order, to ``<prefix>/<id>/`` (``erp_backup.remote_copy`` decides the bytes:
encrypted on the way out): the artifacts (streamed; S3 multipart with parts in parallel), then
``SHA256SUMS`` and its signature, ``manifest.json`` **last**. Each object's size as the service
reports it is checked against what was sent, and each artifact's SHA-256 (computed while it is
streamed) against the ``SHA256SUMS`` about to be sent: the manifest only goes up when everything
before it is right. A set is complete remotely once its manifest is there.

Catch-up: every committed local set that is not complete remotely, finished within
``[remote] catch_up_days`` (``catch_up_monthly_days`` for monthly archives: they are kept longer),
or within the remote retention of its kind if that is shorter (``[retention.remote]``), is sent
too, oldest first — so a chain's parent always goes before its children, and a set whose parent
is missing remotely takes its parent along whatever its age. A set that fails is retried
(``retries``, backoff doubling from ``retry_backoff_s``) from its first object: a stream being
encrypted cannot be rewound. Leftover objects of an earlier, interrupted attempt are overwritten,
and the ones the new copy does not have are deleted before its manifest goes up. A failure raises
(the flow fails and alerts) after the sets before it were sent; the local sets are never touched.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from erp_backup import remote_sets
from erp_backup.adapters.storage.base import RemoteStore
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository
from erp_backup.backup import CommittedSet
from erp_backup.config import RemoteConfig, Settings
from erp_backup.core import manifest as mf
from erp_backup.core.errors import BackupError, ConfigError, IntegrityError, StorageError
from erp_backup.core.models import BackupId, BackupKind, Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadResult:
    """What the upload stage did: the sets it made complete remotely (this one and any earlier
    set that an earlier run failed to send), the bytes sent, and warnings for the report."""

    remote: str
    uploaded: tuple[str, ...] = ()
    bytes_sent: int = 0
    warnings: tuple[str, ...] = ()


class _Tap:
    """A readable that hashes and counts what passes through it."""

    def __init__(self, src: IO[bytes]) -> None:
        self._src = src
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True


def _plain_file(readable: IO[bytes]) -> Path | None:
    """The path of a readable that is a regular local file read from its start (S3 then reads its
    parts from the file in parallel), else None."""
    if isinstance(readable, io.BufferedReader) and isinstance(readable.name, str):
        try:
            if readable.tell() == 0:
                return Path(readable.name)
        except OSError:
            return None
    return None


def send_set(settings: Settings, repo: LocalRepository, store: RemoteStore, set_id: BackupId,
             stale: Iterable[str] = ()) -> int:
    """One attempt at sending one set: artifacts, trailer, manifest last. ``stale``: object names
    already under ``<id>/`` remotely (an interrupted attempt). Returns the bytes sent."""
    from erp_backup.remote_copy import remote_copy

    sent = 0
    names: set[str] = set()
    hashed: dict[str, str] = {}
    with remote_copy(settings, repo, set_id) as copy:
        for name, readable in copy.artifacts():
            if not remote_sets.safe_name(name):
                raise IntegrityError(f"set {set_id} names an artifact {name!r}", hint="verify the local set")
            key = f"{set_id}/{name}"
            path = _plain_file(readable)
            if path is not None:
                want = path.stat().st_size
                got = store.put_file(key, path)
            else:
                tap = _Tap(readable)
                got = store.put_stream(key, tap)  # type: ignore[arg-type]
                want = tap.size
                hashed[name] = tap.sha.hexdigest()
            if got != want:
                raise StorageError(f"{store.describe()}: {key} holds {got} bytes of the {want} sent",
                                   hint="the service lost part of the upload: run the upload again")
            sent += want
            names.add(name)
        trailer = copy.trailer()
        if not trailer or trailer[-1][0] != MANIFEST:
            raise IntegrityError(f"the remote copy of set {set_id} ends without its manifest",
                                 hint="this is a bug: report it")
        sums = dict(trailer).get(SUMS)
        if sums is None:
            raise IntegrityError(f"the remote copy of set {set_id} has no {SUMS}", hint="verify the local set")
        listed = mf.parse_sha256sums(sums.decode("utf-8"))
        for name, digest in hashed.items():
            if listed.get(name) != digest:
                raise IntegrityError(f"set {set_id}: {name} as sent does not match its checksum in {SUMS}",
                                     hint=f"the local set may be damaged: `erp-backup verify {set_id}`")
        missing = sorted(n for n in listed if n != MANIFEST and n not in names)
        if missing:
            raise IntegrityError(f"set {set_id}: {SUMS} lists {missing[0]}, which was not sent",
                                 hint=f"the local set may be damaged: `erp-backup verify {set_id}`")
        names.update(n for n, _ in trailer)
        leftovers = sorted(n for n in stale if n not in names)
        if leftovers:  # of an earlier attempt: gone before the manifest makes the set complete
            store.delete(f"{set_id}/{n}" for n in leftovers)
        for name, data in trailer:
            key = f"{set_id}/{name}"
            got = store.put_stream(key, io.BytesIO(data))
            if got != len(data):
                raise StorageError(f"{store.describe()}: {key} holds {got} bytes of the {len(data)} sent",
                                   hint="the service lost part of the upload: run the upload again")
            sent += len(data)
    return sent


def _with_retries(what: str, attempt: Callable[[], int], remote: RemoteConfig) -> int:
    delay = remote.retry_backoff_s
    for n in range(remote.retries + 1):
        try:
            return attempt()
        except (ConfigError, IntegrityError):
            raise  # another attempt cannot fix these
        except (StorageError, OSError) as e:
            if n == remote.retries:
                raise
            log.warning("sending %s failed (attempt %d of %d): %s; retrying in %.0f s", what, n + 1,
                        remote.retries + 1, e, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def window_days(remote: RemoteConfig, m: Manifest, kept: Any = None) -> float:
    """How far back a set of ``m``'s kind is caught up: ``catch_up_days`` (monthly archives:
    ``catch_up_monthly_days``), shortened to the remote retention (``kept``: ``[retention.remote]``
    when the config has it) so that nothing is sent that the next prune would delete."""
    days = remote.catch_up_monthly_days if m.is_monthly else remote.catch_up_days
    if kept is None:
        return days
    if m.is_monthly:
        limit = kept.monthly_days
    elif m.kind is BackupKind.INCREMENTAL:
        limit = kept.incremental_hours / 24
    elif m.kind is BackupKind.DIFFERENTIAL:
        limit = kept.differential_days
    else:
        limit = kept.full_days
    return min(days, float(limit))


def _window(remote: RemoteConfig, m: Manifest, now: datetime, kept: Any = None) -> bool:
    return m.finished_at >= now - timedelta(days=window_days(remote, m, kept))


def to_send(remote: RemoteConfig, local: list[Manifest], complete: set[BackupId], *, now: datetime,
            wanted: Iterable[BackupId] | None = None, newest: BackupId | None = None, kept: Any = None
            ) -> tuple[list[BackupId], list[str]]:
    """Which local sets to send, oldest first, and warnings: ``wanted`` (default: every set in the
    catch-up window, and ``newest``) that is not complete remotely, with every set it builds on that
    is not either."""
    by_id = {m.id: m for m in local}
    warnings: list[str] = []
    if wanted is None:
        chosen = [m.id for m in local if _window(remote, m, now, kept) or m.id == newest]
        old = [m.id.value for m in local if m.id not in complete and m.id not in chosen]
        if old:
            warnings.append(f"{len(old)} older local set(s) missing remotely were not sent (older than the "
                            f"catch-up window): {', '.join(old[:5])}{' …' if len(old) > 5 else ''}")
    else:
        chosen = list(wanted)
    out: set[BackupId] = set()
    for sid in chosen:
        if sid in complete:
            continue
        out.add(sid)
        m = by_id.get(sid)
        for dep in (m.depends_on if m else ()):
            if dep not in complete:
                if dep in by_id:
                    out.add(dep)
                else:
                    warnings.append(f"set {sid} builds on {dep}, which is neither remote nor local: "
                                    "its remote copy cannot be restored alone")
    return sorted(out), warnings


def push(settings: Settings, store: RemoteStore, *, wanted: Iterable[BackupId] | None = None,
         now: datetime | None = None, newest: BackupId | None = None,
         on_sent: Callable[[BackupId, int], None] | None = None) -> UploadResult:
    """Send what is missing remotely (see the module doc); raise on the first set that fails."""
    from erp_backup.remote_store import remote_config

    remote = remote_config(settings)
    repo = LocalRepository(settings.storage.local_dir)
    found = repo.scan()
    local = list(found.committed)
    local_ids = {m.id for m in local}
    if wanted is not None:
        wanted = list(wanted)
        unknown = [w for w in wanted if w not in local_ids]
        if unknown:
            raise StorageError(f"backup set {unknown[0]} is not a committed set in {repo.root}",
                               hint="see `erp-backup list`")
    try:
        listing = remote_sets.scan(store)
    except BackupError as e:
        e.message = f"upload failed (the local sets are kept; the next run sends them): {e.message}"
        e.args = (str(e),)
        raise
    complete = set(listing.complete)
    early: list[str] = []
    if newest is not None and newest in complete:
        # this run's own set, just committed, already "complete" remotely: a retried upload of this
        # very run, or objects someone planted under an id that is easy to guess (a review's stub
        # manifest made every upload of that set a no-op). Only a copy that checks out counts.
        problem = _remote_copy_problem(settings, store, newest, listing.objects.get(newest.value, {}))
        if problem is not None:
            complete.discard(newest)
            early.append(f"set {newest} looked complete in {store.describe()} but its copy there is not one this "
                         f"host made ({problem}): sent again")
    kept = getattr(getattr(settings, "retention", None), "remote", None)  # [retention.remote], if configured
    ids, warnings = to_send(remote, local, complete, now=now or datetime.now(UTC), wanted=wanted,
                            newest=newest, kept=kept)
    warnings[:0] = early
    if wanted is None:
        ids = _signed_only(settings, repo, ids, newest, {m.id: m for m in local}, warnings)
    uploaded: list[str] = []
    total = 0
    for sid in ids:
        stale = tuple(listing.objects.get(sid.value, {}))
        try:
            n = _with_retries(f"set {sid} to {store.describe()}",
                              lambda sid=sid, stale=stale: send_set(settings, repo, store, sid, stale),  # type: ignore[misc]
                              remote)
        except BackupError as e:
            done = f" (sent before it: {', '.join(uploaded)})" if uploaded else ""
            e.message = (f"upload of set {sid} to {store.describe()} failed (the local set is kept; the next run "
                         f"completes the upload){done}: {e.message}")
            e.args = (str(e),)
            raise
        uploaded.append(sid.value)
        total += n
        if on_sent:
            on_sent(sid, n)
    if listing.foreign:
        warnings.append(f"{len(listing.foreign)} object(s) in {store.describe()} belong to no backup set and were "
                        f"left alone, e.g. {listing.foreign[0]!r}")
    return UploadResult(store.describe(), tuple(uploaded), total, tuple(warnings))


def _remote_copy_problem(settings: Settings, store: RemoteStore, sid: BackupId, objects: dict[str, int]) -> str | None:
    """Why the remote copy of ``sid`` is not a whole copy made here, or None: its ``SHA256SUMS`` signed
    as configured, listing the manifest, whose bytes match it and whose header names ``sid``."""
    from erp_backup.core.chain import Damaged
    from erp_backup.remote_verify import signature_checker

    if SUMS not in objects or objects.get(MANIFEST, remote_sets.MAX_MANIFEST + 1) > remote_sets.MAX_MANIFEST:
        return f"no {SUMS}, or no plausible {MANIFEST}"
    try:
        raw, sums = remote_sets.read_sums(store, sid)
        sig = remote_sets.read_bounded(store, f"{sid}/{remote_sets.SIG}", 1 << 16) \
            if remote_sets.SIG in objects else None
        with signature_checker(settings) as check:
            problem = check(sid, raw, sig)
        if problem:
            return problem
        digest, _ = remote_sets.sha256_stream(remote_sets.stream_bounded(store, f"{sid}/{MANIFEST}",
                                                                         objects[MANIFEST]))
        if digest != sums.get(MANIFEST):
            return f"its {MANIFEST} does not match its {SUMS}"
        head = remote_sets.header_of(store, sid)
        if isinstance(head, Damaged):
            return head.reason
    except IntegrityError as e:
        return e.message
    return None


def _signed_only(settings: Settings, repo: LocalRepository, ids: list[BackupId], newest: BackupId | None,
                 by_id: dict[BackupId, Manifest], warnings: list[str]) -> list[BackupId]:
    """Catch-up with ``sign = true``: the sets without a good signature by a verification key (made
    before signing was configured, or put into the local directory by someone else) are not sent,
    nor the sets that build on them, with a warning naming them; the upload signs nothing it did not
    sign before. ``newest`` (this run's own set) is never dropped here: ``send_set`` refuses it."""
    from erp_backup import encryption

    if not encryption.signs(settings) or not ids:
        return ids
    bad: dict[BackupId, str] = {}
    with encryption.session(settings, signing=True) as s:
        for sid in ids:
            if sid == newest:
                continue
            try:
                s.check_signature(repo.set_dir(sid), sid.value)
            except BackupError as e:
                bad[sid] = e.message.removeprefix(f"set {sid}: ")
    late = []
    for sid in ids:
        m = by_id.get(sid)
        dep = next((d for d in m.depends_on if d in bad), None) if m is not None and sid not in bad else None
        if dep is not None and sid == newest:
            late.append(f"set {sid} builds on {dep}, which was not sent: its remote copy cannot be restored "
                        "(the next full backup starts a chain that can)")
        elif dep is not None:
            bad[sid] = f"it builds on {dep}, which is not sent"
    warnings.extend(f"set {sid} was not sent: {why}" for sid, why in bad.items())
    warnings.extend(late)
    return [sid for sid in ids if sid not in bad]


def upload_stage(settings: Settings, committed: CommittedSet) -> UploadResult | None:
    """Send ``committed`` (and earlier sets missing remotely, oldest first) to the remote store."""
    if settings.remote is None:
        return None
    from erp_backup.remote_store import open_store

    # the window is counted back from this set (a backup of "now" in tests and replays alike)
    return push(settings, open_store(settings), now=committed.manifest.finished_at, newest=committed.manifest.id)
