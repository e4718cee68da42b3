"""Retention that runs: prune the local repository and the remote store (issue #9).

- ``prune_local(settings, ...)``: the sets in ``[storage] local_dir`` under ``[retention.local]``;
- ``prune_remote(store, settings, ...)``: the sets of a ``RemoteStore`` (``<id>/...`` objects,
  complete once ``<id>/manifest.json`` is there) under ``[retention.remote]``;
- ``run_prune(settings, where, ...)``: the CLI's and the prune flow's work (``local``, ``remote``
  or ``all``), without Prefect;
- ``prune_stage(settings, committed, uploaded)``: the last-but-one stage of every backup.

The decisions are ``erp_backup.core.prune_plan.plan_prune`` (policy + safety rails). Deletion
follows its ``order`` (dependents first). A local set is first renamed to
``<id>.deleting.partial`` (no longer a set), then removed; a remote set loses its
``manifest.json`` first (no longer complete), then its other objects. A prune killed at any
moment therefore leaves only whole sets whose dependencies are all there, and debris that the
next prune removes. Leftovers (``.partial`` directories, incomplete uploads) go once older than
``[retention] leftover_grace_hours``; a ``.partial`` is only ever removed under the repository
lock, so never one a running backup is writing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from erp_backup import remote_sets, verdicts
from erp_backup.adapters.storage.base import RemoteObject, RemoteStore
from erp_backup.adapters.storage.local import MANIFEST, PARTIAL, LocalRepository
from erp_backup.backup import CommittedSet
from erp_backup.config import RetentionPolicyConfig, Settings
from erp_backup.core import chain
from erp_backup.core import manifest as mf
from erp_backup.core.errors import BackupError, ConfigError, LockError, StorageError
from erp_backup.core.models import BackupId, Manifest
from erp_backup.core.prune_plan import Leftover, PrunePlan, Row, Unreadable, plan_prune
from erp_backup.core.retention import Policy, SetRef
from erp_backup.upload import UploadResult

LOCAL, REMOTE, ALL = "local", "remote", "all"
WHERE = (LOCAL, REMOTE, ALL)
DELETING = f".deleting{PARTIAL}"  # LocalRepository.delete's name for a set being removed
MAX_HEADER = 4 << 20  # a manifest header (before the snapshot index) larger than this is not ours

Progress = Callable[[str, str], None]  # (event, name): "removed", "manifest-removed", "leftover-removed"


def _quiet(event: str, name: str) -> None:
    del event, name


@dataclass(frozen=True)
class PruneReport:
    """What one prune of one store decided and did."""

    where: str
    plan: PrunePlan
    dry_run: bool
    removed: tuple[str, ...] = ()  # sets removed, in order
    leftovers_removed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    store: str = ""  # the directory or the bucket, for messages

    def rows(self) -> list[Row]:
        return self.plan.rows()


@dataclass(frozen=True)
class PruneResult:
    """What the prune stage decided and did: sets removed (local and remote) and warnings."""

    removed_local: tuple[str, ...] = ()
    removed_remote: tuple[str, ...] = ()
    kept: int = 0
    warnings: tuple[str, ...] = ()
    reports: tuple[PruneReport, ...] = field(default=(), repr=False)


def policy_of(cfg: RetentionPolicyConfig) -> Policy:
    return Policy(full=timedelta(days=cfg.full_days), incremental=timedelta(hours=cfg.incremental_hours),
                  differential=timedelta(days=cfg.differential_days), monthly=timedelta(days=cfg.monthly_days),
                  keep_last=cfg.keep_last)


def _grace(settings: Settings) -> timedelta:
    return timedelta(hours=settings.retention.leftover_grace_hours)


def _age(seconds_since_epoch: float) -> timedelta:
    """Age by the wall clock (file and object times are real times, whatever ``now`` says)."""
    return timedelta(seconds=max(0.0, time.time() - seconds_since_epoch))


def _hours(d: timedelta) -> str:
    return f"{d.total_seconds() / 3600:.1f} h"


# ----------------------------------------------------------------------------- local


def _local_leftovers(repo: LocalRepository, grace: timedelta, busy: bool) -> list[Leftover]:
    out = []
    for p in repo.partials():
        try:
            age = _age(p.stat().st_mtime)
        except OSError:
            continue
        if p.name.endswith(DELETING):
            out.append(Leftover(p.name, True, "a set whose removal was interrupted: removed"))
        elif busy:
            out.append(Leftover(p.name, False, "incomplete set, a backup is running (the repository lock is "
                                               "held): kept"))
        elif age > grace:
            out.append(Leftover(p.name, True, f"incomplete set of an interrupted backup, {_hours(age)} old > "
                                              f"grace {_hours(grace)}: removed"))
        else:
            out.append(Leftover(p.name, False, f"incomplete set, {_hours(age)} old <= grace {_hours(grace)}: "
                                               "kept"))
    return out


def plan_local(settings: Settings, *, now: datetime, busy: bool = False) -> PrunePlan:
    """The local plan at ``now`` (reads only)."""
    repo = LocalRepository(settings.storage.local_dir)
    found = repo.scan()
    bad = verdicts.failed(repo.root, LOCAL)
    linked = {m.id for m in found.committed if repo.set_dir(m.id).is_symlink()}
    refs = [SetRef.from_manifest(m, valid=m.id not in bad) for m in found.committed if m.id not in linked]
    unreadable = [Unreadable(d.id.value, d.reason) for d in found.damaged]
    unreadable += [Unreadable(i.value, "it is a symbolic link, not a set directory") for i in sorted(linked)]
    return plan_prune(refs, policy_of(settings.retention.local), now, where=LOCAL, unreadable=unreadable,
                      leftovers=_local_leftovers(repo, _grace(settings), busy))


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def prune_local(settings: Settings, *, now: datetime | None = None, dry_run: bool = False,
                lock_wait_s: float | None = None, progress: Progress = _quiet) -> PruneReport:
    """Apply ``[retention.local]``. Deleting holds the repository lock (waiting up to ``lock_wait_s``,
    default ``[backup] lock_wait_s``); a dry run takes no lock and writes nothing."""
    repo = LocalRepository(settings.storage.local_dir)
    if not repo.root.is_dir():
        raise ConfigError(f"backup directory {repo.root} does not exist",
                          hint="check [storage] local_dir (nothing to prune before the first backup)")
    when = now or datetime.now(UTC)
    if dry_run:
        plan = plan_local(settings, now=when, busy=repo.busy())
        return PruneReport(LOCAL, plan, True, warnings=plan.notes, store=str(repo.root))
    wait = settings.backup.lock_wait_s if lock_wait_s is None else lock_wait_s
    with repo.lock(wait, purpose="prune"):
        plan = plan_local(settings, now=when)
        removed: list[str] = []
        for bid in plan.order:
            try:
                repo.delete(bid)
                verdicts.forget(repo.root, bid.value, LOCAL)
            except OSError as e:
                raise StorageError(f"cannot remove backup set {bid} from {repo.root}: {e.strerror or e}",
                                   hint="fix its permissions (run as root), then prune again; the sets "
                                        f"removed before it ({len(removed)}) are gone, the others untouched") from e
            removed.append(bid.value)
            progress("removed", bid.value)
        gone: list[str] = []
        for x in plan.leftovers:
            if x.remove:
                try:
                    _remove_tree(repo.root / x.name)
                except OSError as e:
                    raise StorageError(f"cannot remove {repo.root / x.name}: {e.strerror or e}",
                                       hint="remove it by hand (it is not a backup set)") from e
                gone.append(x.name)
                progress("leftover-removed", x.name)
        for orphan in verdicts.orphans(repo.root, LOCAL):
            orphan.unlink(missing_ok=True)
        gone += repo.clean_leftovers()  # scratch directories of killed restores/verifications
    return PruneReport(LOCAL, plan, False, tuple(removed), tuple(gone), plan.notes, str(repo.root))


# ----------------------------------------------------------------------------- remote

_HEADERS: dict[tuple[str, str, int], Manifest | str] = {}  # (store, key, size) -> header or problem


def _read_header(stream: IO[bytes], where: str) -> Manifest:
    """The manifest header from a stream: the text before the snapshot index (at most MAX_HEADER)."""
    marker = b"\n" + mf.FILES_MARKER.encode()
    buf = b"\n"
    while (pos := buf.find(marker)) < 0:
        if len(buf) > MAX_HEADER:
            raise BackupError(f"{where}: no snapshot index within {MAX_HEADER} bytes",
                              hint="it is not a manifest this tool wrote")
        chunk = stream.read(1 << 16)
        if not chunk:
            return mf.loads(buf, where=where)  # a manifest without an index marker: parse it whole
        buf += chunk
    return mf.loads(mf.header_text(buf[1: pos + 1].decode("utf-8")), where=where)


def remote_header(store: RemoteStore, set_id: str, size: int) -> Manifest | str:
    """The header of a remote set's manifest, or why it cannot be used. Remembered per object
    (key and size) for the life of the process: manifests never change once uploaded."""
    key = f"{set_id}/{MANIFEST}"
    cache_key = (store.describe(), key, size)
    cached = _HEADERS.get(cache_key)
    if cached is not None:
        return cached
    where = f"{store.describe()}/{key}"
    try:
        with store.get_stream(key) as stream:
            m = _read_header(stream, where)
        problem = chain.header_problem(m, set_id)
        found: Manifest | str = problem if problem is not None else m
    except UnicodeDecodeError:
        found = f"{MANIFEST} is not UTF-8 text"
    except BackupError as e:
        if isinstance(e, StorageError):
            raise  # the store failed, not the manifest: the run fails, nothing is decided
        found = e.message.removeprefix(f"{where}: ")
    _HEADERS[cache_key] = found
    return found


def _group(objects: Iterable[RemoteObject]) -> tuple[dict[str, dict[str, RemoteObject]], list[str]]:
    """Objects by set id (the first key segment); keys that are not ``<id>/<name>``, apart."""
    sets: dict[str, dict[str, RemoteObject]] = {}
    foreign: list[str] = []
    for o in objects:
        head, sep, rest = o.key.partition("/")
        if sep and BackupId.is_valid(head) and remote_sets.safe_name(rest):  # as `list --remote` sees it
            sets.setdefault(head, {})[rest] = o
        else:
            foreign.append(o.key)
    return sets, foreign


def _modified(o: RemoteObject) -> float | None:
    return o.modified.timestamp() if isinstance(o.modified, datetime) else None


def _incomplete(sid: str, objs: dict[str, RemoteObject], grace: timedelta) -> Leftover:
    times = [t for t in map(_modified, objs.values()) if t is not None]
    basis = "its newest object" if times else "its id (the store gives no object times)"
    age = _age(max(times) if times else BackupId(sid).timestamp.timestamp())
    if age > grace:
        return Leftover(sid, True, f"incomplete upload (no {MANIFEST}), {basis} {_hours(age)} old > grace "
                                   f"{_hours(grace)}: removed")
    return Leftover(sid, False, f"incomplete upload (no {MANIFEST}), {basis} {_hours(age)} old <= grace "
                                f"{_hours(grace)}: kept (an upload may be running)")


def plan_remote(store: RemoteStore, settings: Settings, *, now: datetime
                ) -> tuple[PrunePlan, dict[str, dict[str, RemoteObject]], list[str]]:
    """The remote plan at ``now`` (reads only), the objects of each set, and foreign keys."""
    sets, foreign = _group(store.list())
    bad = verdicts.failed(settings.storage.local_dir, REMOTE)
    refs: list[SetRef] = []
    unreadable: list[Unreadable] = []
    leftovers: list[Leftover] = []
    for sid, objs in sorted(sets.items()):
        man = objs.get(MANIFEST)
        if man is None:
            leftovers.append(_incomplete(sid, objs, _grace(settings)))
            continue
        found = remote_header(store, sid, man.size)
        if isinstance(found, str):
            unreadable.append(Unreadable(sid, found))
            continue
        missing = [a.name for a in found.artifacts if a.name not in objs]
        why = bad.get(found.id)
        if missing:
            why = f"{missing[0]} is missing remotely"
        refs.append(SetRef.from_manifest(found, valid=why is None))
    plan = plan_prune(refs, policy_of(settings.retention.remote), now, where=REMOTE, unreadable=unreadable,
                      leftovers=leftovers)
    return plan, sets, foreign


def prune_remote(store: RemoteStore, settings: Settings, *, now: datetime | None = None, dry_run: bool = False,
                 progress: Progress = _quiet) -> PruneReport:
    """Apply ``[retention.remote]`` to ``store``: each removed set loses its manifest first."""
    plan, sets, foreign = plan_remote(store, settings, now=now or datetime.now(UTC))
    warnings = list(plan.notes)
    if foreign:
        warnings.append(f"{len(foreign)} object(s) in {store.describe()} are not part of a backup set "
                        f"(e.g. {foreign[0]}): left alone")
    if dry_run:
        return PruneReport(REMOTE, plan, True, warnings=tuple(warnings), store=store.describe())
    removed: list[str] = []
    for bid in plan.order:
        objs = sets[bid.value]
        store.delete([f"{bid}/{MANIFEST}"])  # first: from now on the set no longer lists as complete
        progress("manifest-removed", bid.value)
        store.delete(sorted(f"{bid}/{name}" for name in objs if name != MANIFEST))
        verdicts.forget(settings.storage.local_dir, bid.value, REMOTE)
        removed.append(bid.value)
        progress("removed", bid.value)
    gone: list[str] = []
    for x in plan.leftovers:
        if x.remove:
            store.delete(sorted(f"{x.name}/{name}" for name in sets[x.name]))
            gone.append(x.name)
            progress("leftover-removed", x.name)
    return PruneReport(REMOTE, plan, False, tuple(removed), tuple(gone), tuple(warnings), store.describe())


# ----------------------------------------------------------------------------- wiring


def open_remote(settings: Settings) -> RemoteStore | None:
    """The configured remote store (``[remote]``: its block loaded from Prefect), or None when there
    is no ``[remote]``."""
    if settings.remote is None:
        return None
    from erp_backup.remote_store import open_store

    return open_store(settings)


def _need_remote(settings: Settings) -> RemoteStore:
    store = open_remote(settings)
    if store is None:
        raise ConfigError("no remote store is configured", hint="add a [remote] section, or prune local sets only "
                          "(leave out --remote/--all)")
    return store


def check_request(settings: Settings, where: str, *, dry_run: bool, now: datetime | None,
                  store: RemoteStore | None = None) -> RemoteStore | None:
    """Refuse a bad prune request before anything runs; the remote store it needs, if any."""
    if where not in WHERE:
        raise ConfigError(f"prune where={where!r} is not one of local, remote, all", hint="use local, remote or all")
    if now is not None and not dry_run:
        raise ConfigError("--now is only allowed with --dry-run",
                          hint="a real prune judges ages at the present time; add --dry-run to ask "
                               "what a later prune would do")
    if now is not None and now.tzinfo is None:
        raise ConfigError("--now has no time zone", hint="e.g. 2026-12-06T02:00:00Z or ...+08:00")
    if where != REMOTE and not LocalRepository(settings.storage.local_dir).root.is_dir():
        raise ConfigError(f"backup directory {settings.storage.local_dir} does not exist",
                          hint="check [storage] local_dir (nothing to prune before the first backup)")
    if where == LOCAL:
        return None
    if where == ALL:  # the remote one when configured, opened after the local prune (see run_prune)
        return store
    return store or _need_remote(settings)


def run_prune(settings: Settings, where: str = LOCAL, *, now: datetime | None = None, dry_run: bool = False,
              progress: Progress = _quiet, store: RemoteStore | None = None) -> list[PruneReport]:
    """``erp-backup prune`` without Prefect: ``where`` is local, remote or all."""
    remote = check_request(settings, where, dry_run=dry_run, now=now, store=store)
    out: list[PruneReport] = []
    if where != REMOTE:
        out.append(prune_local(settings, now=now, dry_run=dry_run, progress=progress))
    if where == ALL and remote is None:  # a broken remote (a missing block) fails the run after the local prune
        remote = open_remote(settings)
    if remote is not None:
        out.append(prune_remote(remote, settings, now=now, dry_run=dry_run, progress=progress))
    return out


def rows_of(reports: Iterable[PruneReport]) -> list[dict[str, str]]:
    return [r.as_dict() for rep in reports for r in rep.rows()]


def plain_prune(settings: Settings, where: str = LOCAL, dry_run: bool = False, now: datetime | None = None
                ) -> list[dict[str, str]]:
    """The CLI's prune without Prefect (``erp_backup.runner.run``'s plain variant of the prune flow)."""
    return rows_of(run_prune(settings, where, now=now, dry_run=dry_run))


def prune_stage(settings: Settings, committed: CommittedSet, uploaded: UploadResult | None,
                store: RemoteStore | None = None) -> PruneResult | None:
    """Apply the local (and, with a remote, the remote) retention policy after a backup, at the
    time the set finished (a backup run with a fixed clock prunes on that clock). A failure here
    never fails the backup (its set is committed): it becomes a warning of the run's report; if
    another run holds the repository lock, the local prune is left to the next run."""
    if not settings.retention.after_backup:
        return None
    now = committed.manifest.finished_at
    reports: list[PruneReport] = []
    warnings: list[str] = []
    try:
        reports.append(prune_local(settings, now=now, lock_wait_s=0))
    except LockError:
        warnings.append("prune skipped: another erp-backup run holds the repository lock (the next run prunes)")
    except BackupError as e:
        warnings.append(f"local prune failed: {e}")
    remote = store
    if remote is None and uploaded is not None:
        try:
            remote = open_remote(settings)
        except BackupError as e:
            warnings.append(f"remote prune skipped: {e}")
    if remote is not None:
        try:
            reports.append(prune_remote(remote, settings, now=now))
        except BackupError as e:
            warnings.append(f"remote prune failed: {e}")
    for rep in reports:
        warnings.extend(rep.warnings)
    return PruneResult(
        removed_local=tuple(x for r in reports if r.where == LOCAL for x in r.removed),
        removed_remote=tuple(x for r in reports if r.where == REMOTE for x in r.removed),
        kept=sum(r.plan.kept for r in reports), warnings=tuple(warnings), reports=tuple(reports))

