"""The backup stages, without Prefect: each is a function from values to a value.

preflight -> prepare -> scan -> dump -> archive -> seal -> verify -> commit -> report

Every stage returns a frozen result that carries its own warnings; nothing is
shared by mutation, so a stage that is retried starts from exactly the inputs of
its first attempt. The order lives in one place, ``erp_backup.pipeline``.
A set that fails verification never becomes visible: verify runs on the sealed
``.partial`` directory and commit is the rename.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from erp_backup import __version__
from erp_backup import encryption as enc
from erp_backup.adapters import archive, scan
from erp_backup.adapters.archive.selfcheck import InlineCheck
from erp_backup.adapters.databases.base import DatabaseAdapter, adapter_for
from erp_backup.adapters.databases.sqlite import COMPANIONS as SQLITE_COMPANIONS
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository, write_private_stream
from erp_backup.config import Settings
from erp_backup.core import chain
from erp_backup.core import manifest as mf
from erp_backup.core.anomaly import SizeVerdict, size_anomaly
from erp_backup.core.changes import ChangePlan, merge_index, plan_changes
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import ChainError, SourceError
from erp_backup.core.models import (
    Artifact,
    BackupId,
    BackupKind,
    BackupStats,
    DatabaseInfo,
    EntryType,
    FileEntry,
    Manifest,
)
from erp_backup.verify import VerifyReport, verify_dir

FILES_ARTIFACT = "files.tar.zst"
WORK_DIR = ".work"  # private scratch directory inside the partial set (removed before commit)


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Preflight:
    """What was checked before anything was written (and before Prefect starts, from the CLI).
    Holds no secret: it may travel as a flow-run parameter."""

    kind: BackupKind
    tags: tuple[str, ...]
    root: str
    database: str  # redacted URL
    parent: str | None  # the set the run would build on, as seen without the lock


@dataclass(frozen=True)
class BackupPlan:
    """Decided under the repository lock: the set's id, its parent, its ``.partial`` directory."""

    settings: Settings
    kind: BackupKind
    tags: tuple[str, ...]
    id: BackupId
    started_at: datetime
    partial: Path
    parent: Manifest | None  # header only (no snapshot index): the scan reads the index itself
    base: BackupId
    database: DatabaseUrl | None
    cleaned_partials: tuple[str, ...]
    promoted: bool
    t0: float  # time.monotonic() at prepare, for the duration
    passed_over: tuple[str, ...] = ()  # newer sets not built on (damaged, broken chain), as warnings

    @property
    def repo(self) -> LocalRepository:
        return LocalRepository(self.settings.storage.local_dir)

    @property
    def threads(self) -> int:
        t = self.settings.backup.threads
        return t if t > 0 else -1

    def adapter(self) -> DatabaseAdapter | None:
        return adapter_for(self.database, timeout=self.settings.database.timeout_s) if self.database else None


@dataclass(frozen=True)
class ScanResult:
    """The change plan against the parent's snapshot index, and what the walk could not take."""

    changes: ChangePlan
    skipped: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class DumpResult:
    artifact: Artifact
    info: DatabaseInfo
    counts_consistent: bool
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class FilesResult:
    artifact: Artifact
    entries: tuple[FileEntry, ...]  # what was archived, with sha256 and holder
    bytes_in: int
    skipped: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]
    checked_inline: str = ""  # read back while written (adapters/archive/selfcheck.py): "disk" (from the
    # file itself, which also gave the artifact's SHA-256), "stream" (the bytes on their way to the encryptor)


@dataclass(frozen=True)
class SealedSet:
    """manifest.json and SHA256SUMS written into the still invisible ``.partial`` directory."""

    manifest: Manifest
    partial: Path
    files_read_back: str = ""  # FilesResult.checked_inline


@dataclass(frozen=True)
class CommittedSet:
    manifest: Manifest
    path: Path
    verify: VerifyReport


@dataclass(frozen=True)
class BackupReport:
    """The run as an operator sees it: one table row, the size check, every warning."""

    row: dict[str, object]
    size: SizeVerdict
    warnings: tuple[str, ...]
    timings: dict[str, float]  # seconds per stage, up to the commit


@dataclass(frozen=True)
class BackupResult:
    """What ``run_pipeline`` returns: the committed set and the report of the run."""

    manifest: Manifest
    path: Path
    verify: VerifyReport
    report: BackupReport
    timings: dict[str, float]
    plan: BackupPlan


# ----------------------------------------------------------------------------- stages


def _auto_excludes(settings: Settings, db_url: DatabaseUrl | None) -> list[Path]:
    out = [settings.storage.local_dir]
    if db_url is not None and db_url.engine == "sqlite":
        p = Path(db_url.name)
        out += [p, *(Path(str(p) + s) for s in SQLITE_COMPANIONS)]
    return out


def _no_parent(kind: BackupKind, repo: LocalRepository, passed: tuple[chain.Skipped, ...] = ()) -> ChainError:
    why = f" ({'; '.join(map(str, passed))})" if passed else ""
    return ChainError(f"cannot run a {kind.value} backup: there is no full backup in {repo.root} to build on{why}",
                      hint="run `erp-backup backup full` first, or set [backup] missing_parent = \"full\"")


def choose_parent(settings: Settings, kind: BackupKind, repo: LocalRepository
                  ) -> tuple[Manifest | None, BackupKind, bool]:
    """(parent header, kind to run, promoted). The one place that decides a run's chain: preflight
    asks it without the lock (to fail before anything starts), prepare under the lock (to decide).
    A damaged set, or one whose chain is broken, is never built on (``chain.parent_selection``)."""
    parent, kind, promoted, _ = parent_choice(settings, kind, repo)
    return parent, kind, promoted


def parent_choice(settings: Settings, kind: BackupKind, repo: LocalRepository
                  ) -> tuple[Manifest | None, BackupKind, bool, tuple[chain.Skipped, ...]]:
    """``choose_parent`` plus the newer sets passed over (damaged, or needing a set that is not
    intact), for the run's warnings."""
    if kind is BackupKind.FULL:
        return None, kind, False, ()
    found = repo.scan()
    parent, passed = chain.parent_selection(kind, found.committed, found.damaged)
    if parent is not None:
        return parent, kind, False, passed
    if settings.backup.missing_parent == "full":
        return None, BackupKind.FULL, True, passed
    raise _no_parent(kind, repo, passed)


def preflight(settings: Settings, kind: BackupKind, tags: tuple[str, ...] = ()) -> Preflight:
    """Checks that need no lock and write nothing: bad input fails here, in one line, before
    Prefect starts (~10 s) and before any directory is created. The database's reachability,
    credentials and client tools are checked here and nowhere else in a run."""
    root = settings.project.root
    if not root.exists():
        raise SourceError(f"project root {root} does not exist",
                          hint="set [project] root in the config to the Django project directory")
    if not root.is_dir():
        raise SourceError(f"project root {root} is a file, not a directory",
                          hint="set [project] root to the Django project directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SourceError(f"project root {root} is not readable",
                          hint="run the backup as root or give the backup user read access")
    db_url = settings.database_url()
    adapter_for(db_url, timeout=settings.database.timeout_s).check_available()
    enc.preflight(settings)  # keys, recipients, signing key and passphrase: before anything is written
    repo = LocalRepository(settings.storage.local_dir)
    parent = None
    if not repo.busy():  # a running backup (the 02:00 full) may create the parent this run waits for
        parent, _, _ = choose_parent(settings, kind, repo)
    return Preflight(kind, tuple(tags), str(root), db_url.redacted(), parent.id.value if parent else None)


def prepare(settings: Settings, checked: Preflight, *, now: datetime | None = None) -> BackupPlan:
    """Under the repository lock: clean crash leftovers, choose the parent, create ``.partial``."""
    repo = LocalRepository(settings.storage.local_dir)
    repo.ensure()
    cleaned = repo.clean_partials()
    parent, kind, promoted, passed = parent_choice(settings, checked.kind, repo)
    tags = checked.tags + (("promoted",) if promoted else ())
    started = now or datetime.now(UTC)
    backup_id = BackupId.make(started, kind, tags)
    while repo.set_dir(backup_id).exists():  # two runs within one second
        time.sleep(0.2)
        started = datetime.now(UTC)
        backup_id = BackupId.make(started, kind, tags)
    partial = repo.begin(backup_id)
    return BackupPlan(settings=settings, kind=kind, tags=tags, id=backup_id, started_at=started, partial=partial,
                      parent=parent, base=chain.base_of(parent) if parent else backup_id,
                      database=settings.database_url(), cleaned_partials=tuple(cleaned), promoted=promoted,
                      t0=time.monotonic(),
                      passed_over=tuple(f"not building on {p.id}: it {p.reason}" for p in passed))


def scan_changes(plan: BackupPlan) -> ScanResult:
    p = plan.settings.project
    skipped: list[tuple[str, str]] = []
    # the walk is consumed by the change plan entry by entry: an unchanged file's fresh entry is
    # dropped at once (the parent's stands), so the whole scan is never held next to the index
    found = scan.iter_tree(p.root, p.include, p.exclude, _auto_excludes(plan.settings, plan.database), skipped)
    reference = None
    if plan.parent is not None:  # the parent's index is read here and dropped with this frame (memory)
        reference = {e.path: e for e in plan.repo.read_manifest(plan.parent.id).files}
    return ScanResult(plan_changes(found, reference), tuple(skipped))


def _fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)  # a retried stage starts over
    return path


def _clear_work(plan: BackupPlan) -> None:
    work = plan.partial / WORK_DIR
    if work.exists():
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


def dump_database(plan: BackupPlan) -> DumpResult | None:
    adapter = plan.adapter()
    if adapter is None or plan.database is None:
        return None
    encrypted = enc.encrypts_local(plan.settings)
    name = enc.encrypted_name(adapter.artifact_name) if encrypted else adapter.artifact_name
    path = _fresh(plan.partial / name)
    _clear_work(plan)
    work = plan.partial / WORK_DIR
    work.mkdir(mode=0o700)
    try:
        with enc.local_encryptor(plan.settings) as encryptor:
            writer = archive.ArtifactWriter(path, level=plan.settings.backup.compression_level,
                                            threads=plan.threads, encryptor=encryptor)
            try:
                info = adapter.dump(writer.write, work)
                written = writer.close()
            except BaseException:
                writer.abort()
                raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        _clear_work(plan)
    if info.engine == "sqlite":
        try:
            rel = Path(plan.database.name).resolve().relative_to(plan.settings.project.root.resolve())
            info = replace(info, database=rel.as_posix())
        except ValueError:
            info = replace(info, database=plan.database.name)
    warnings: tuple[str, ...] = ()
    if not adapter.counts_consistent:
        warnings = ("database row counts are best effort (not taken in the dump's snapshot): "
                    "grant the backup user RELOAD for strictly consistent counts",)
    return DumpResult(
        artifact=Artifact(name=name, role="database", size=written.size, sha256=written.sha256,
                          encryption=enc.METHOD if encrypted else None),
        info=replace(info, raw_size=written.raw_size), counts_consistent=adapter.counts_consistent,
        warnings=warnings)


def archive_files(plan: BackupPlan, scanned: ScanResult) -> FilesResult:
    encrypted = enc.encrypts_local(plan.settings)
    name = enc.encrypted_name(FILES_ARTIFACT) if encrypted else FILES_ARTIFACT
    path = _fresh(plan.partial / name)
    # the default (full) verification: the archive is read back as it is written (selfcheck); from the
    # file itself when it is not encrypted (that read also gives SHA256SUMS its hash), else the
    # compressed bytes on their way to gpg
    where = f"{plan.id}/{FILES_ARTIFACT}"
    full = plan.settings.backup.verify == "full"
    check: InlineCheck | None = InlineCheck(where) if full and encrypted else None
    mode = "" if not full else "stream" if encrypted else "disk"
    try:
        with enc.local_encryptor(plan.settings) as encryptor:
            writer = archive.ArtifactWriter(
                path, level=plan.settings.backup.compression_level, threads=plan.threads, encryptor=encryptor,
                inspector=check, readback=(lambda p: InlineCheck(where, p)) if mode == "disk" else None)
            if writer.readback is not None:
                check = cast(InlineCheck, writer.readback)
            try:
                res = archive.write_tar(plan.settings.project.root, scanned.changes.archive, writer.write,
                                        plan.id.value)
                written = writer.close()
                if check is not None:
                    check.result(written.raw_size, res.entries)
            except BaseException:
                writer.abort()
                raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FilesResult(artifact=Artifact(name=name, role="files", size=written.size, sha256=written.sha256,
                                         encryption=enc.METHOD if encrypted else None),
                       entries=res.entries, bytes_in=res.bytes_in, skipped=res.skipped, warnings=res.warnings,
                       checked_inline=mode)


def seal(plan: BackupPlan, scanned: ScanResult, files: FilesResult, dumped: DumpResult | None,
         finished: datetime | None = None) -> SealedSet:
    """Write manifest.json (with the snapshot index) and SHA256SUMS into the partial set."""
    index = merge_index(files.entries, scanned.changes.carried)
    artifacts = tuple(a.artifact for a in (files, dumped) if a is not None)
    stats = BackupStats(
        files_scanned=scanned.changes.scanned,
        files_changed=sum(1 for e in files.entries if e.type is EntryType.FILE),
        files_deleted=len(scanned.changes.deleted),
        bytes_in=files.bytes_in + (dumped.info.raw_size if dumped else 0),
        bytes_out=sum(a.size for a in artifacts),
        duration_s=time.monotonic() - plan.t0,
    )
    m = Manifest(
        id=plan.id, kind=plan.kind, tags=plan.tags,
        parent=plan.parent.id if plan.parent else None, base=plan.base,
        started_at=plan.started_at, finished_at=finished or datetime.now(UTC),
        host=socket.gethostname(), tool_version=__version__,
        source_root=str(plan.settings.project.root),
        database=dumped.info if dumped else None, artifacts=artifacts, files=index,
        deleted=scanned.changes.deleted, skipped=scanned.skipped + files.skipped, stats=stats,
        depends_on=chain.holders_of(index, plan.id),
        recipients=enc.recipients(plan.settings) if any(a.encryption for a in artifacts) else (),
    )
    size, digest = write_private_stream(plan.partial / MANIFEST, mf.dump_lines(m))
    # SHA256SUMS covers the manifest too: a damaged index (modes, times, holders) is caught
    covered = [*artifacts, Artifact(name=MANIFEST, role="manifest", size=size, sha256=digest)]
    write_private_stream(plan.partial / SUMS, [mf.sha256sums(covered)])
    enc.sign_set(plan.settings, plan.partial)  # SHA256SUMS.sig, when [encryption] sign = true
    return SealedSet(m, plan.partial, files.checked_inline)


def verify_sealed(plan: BackupPlan, sealed: SealedSet) -> VerifyReport:
    rep = verify_dir(sealed.partial, sealed.manifest, level=plan.settings.backup.verify,
                     key_files=plan.settings.project.key_files, repo=plan.repo, settings=plan.settings,
                     files_read_back=sealed.files_read_back)
    rep.raise_if_bad()
    return rep


def commit(plan: BackupPlan, sealed: SealedSet, verified: VerifyReport) -> CommittedSet:
    verified.raise_if_bad()  # never commit what did not verify, whoever calls this
    _clear_work(plan)
    committed = CommittedSet(sealed.manifest, plan.repo.commit(plan.id), verified)
    _release_safety_copies(plan.repo.root)
    return committed


def _release_safety_copies(root: Path) -> None:
    """A successful backup ends the life of the safety copies of finished in-place restores."""
    import logging

    from erp_backup import safety

    for msg in safety.release(root)[1]:
        logging.getLogger("erp_backup").warning(msg)


def report(plan: BackupPlan, committed: CommittedSet, warnings: tuple[str, ...],
           timings: dict[str, float]) -> BackupReport:
    """The summary row and the size check against the last ``[monitoring] size_history`` sets of the
    same kind (a monthly archive is a full and is compared with the fulls)."""
    m = committed.manifest
    dur = max(m.stats.duration_s, 1e-6)
    row: dict[str, object] = {
        "id": m.id.value,
        "status": "committed",
        "kind": m.kind.value + (" (monthly)" if m.is_monthly else ""),
        "parent": m.parent.value if m.parent else "",
        "files scanned": m.stats.files_scanned,
        "files changed": m.stats.files_changed,
        "files deleted": m.stats.files_deleted,
        "bytes in": m.stats.bytes_in,
        "bytes out": m.stats.bytes_out,
        "database rows": sum(m.database.tables.values()) if m.database else 0,
        "duration s": round(dur, 2),
        "throughput MB/s": round(m.stats.bytes_in / dur / 1e6, 1),
        "verification": "skipped" if committed.verify.level == "none" else "passed"
        + ("" if committed.verify.level in ("full", "quick") else f" ({committed.verify.level})"),
    }
    mon = plan.settings.monitoring
    history = [h.size_bytes for h in plan.repo.headers() if h.kind is m.kind and h.id != m.id][-mon.size_history:]
    verdict = size_anomaly(m.size_bytes, history, factor=mon.size_factor, min_history=mon.size_min_history)
    row["size check"] = verdict.reason
    return BackupReport(row, verdict, warnings, dict(timings))
