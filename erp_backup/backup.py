"""The backup job, stage by stage, without Prefect.

Flows wrap each stage in a task; tests and benchmarks call ``run_backup``.
Stages: scan -> dump database -> archive files -> seal (manifest + SHA256SUMS
in the ``.partial`` directory) -> verify (the sealed, still invisible set) ->
commit (rename). A set that fails verification never becomes visible.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from erp_backup import __version__
from erp_backup.adapters import archive, scan
from erp_backup.adapters.databases.base import DatabaseAdapter, adapter_for
from erp_backup.adapters.storage.local import (
    MANIFEST,
    SUMS,
    LocalRepository,
    write_private_stream,
)
from erp_backup.config import Settings
from erp_backup.core import chain
from erp_backup.core import manifest as mf
from erp_backup.core.changes import ChangePlan, merge_index, plan_changes
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import BackupError, ChainError, SourceError
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


@dataclass
class BackupRun:
    settings: Settings
    repo: LocalRepository
    kind: BackupKind
    tags: tuple[str, ...]
    id: BackupId
    started_at: datetime
    partial: Path
    parent: Manifest | None
    base: BackupId | None
    db_url: DatabaseUrl | None
    cleaned_partials: list[str] = field(default_factory=list)
    promoted: bool = False
    t0: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    plan: ChangePlan | None = None
    scanned: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    archived: list[FileEntry] = field(default_factory=list)
    files_artifact: Artifact | None = None
    files_bytes_in: int = 0
    db_artifact: Artifact | None = None
    db_info: DatabaseInfo | None = None
    manifest: Manifest | None = None
    verify_report: VerifyReport | None = None
    committed_path: Path | None = None

    @property
    def threads(self) -> int:
        t = self.settings.backup.threads
        return t if t > 0 else -1

    def db_adapter(self) -> DatabaseAdapter | None:
        return adapter_for(self.db_url, timeout=self.settings.database.timeout_s) if self.db_url else None


@contextlib.contextmanager
def _timed(run: BackupRun, stage: str) -> Iterator[None]:
    t = time.monotonic()
    try:
        yield
    finally:
        run.timings[stage] = round(time.monotonic() - t, 3)


def _auto_excludes(settings: Settings, db_url: DatabaseUrl | None) -> list[Path]:
    out = [settings.storage.local_dir]
    if db_url is not None and db_url.engine == "sqlite":
        p = Path(db_url.name)
        out += [p, *(Path(str(p) + s) for s in ("-wal", "-shm", "-journal"))]
    return out


def prepare(settings: Settings, kind: BackupKind, tags: tuple[str, ...] = (), *,
            now: datetime | None = None, repo: LocalRepository | None = None) -> BackupRun:
    """Resolve parent and id, clean crash leftovers, create the ``.partial`` dir.

    The caller holds the repository lock."""
    repo = repo or LocalRepository(settings.storage.local_dir)
    repo.ensure()
    cleaned = repo.clean_partials()
    db_url = settings.database_url()
    adapter = adapter_for(db_url, timeout=settings.database.timeout_s)
    adapter.check_available()  # fail fast, before anything is written
    headers = repo.headers()
    parent_head = chain.parent_for(kind, headers)
    promoted = False
    if kind is not BackupKind.FULL and parent_head is None:
        if settings.backup.missing_parent == "full":
            kind, promoted = BackupKind.FULL, True
        else:
            raise ChainError(
                f"cannot run a {kind.value} backup: there is no full backup in {repo.root} to build on",
                hint="run `erp-backup backup full` first, or set [backup] missing_parent = \"full\"",
            )
    parent = repo.read_manifest(parent_head.id) if parent_head else None
    if parent is not None:
        missing = chain.missing_dependencies(parent, [h.id for h in headers])
        if missing:
            raise ChainError(f"the parent set {parent.id} needs {missing[0]}, which is gone",
                             hint="run a full backup to start a new chain")
    started = now or datetime.now(UTC)
    backup_id = BackupId.make(started, kind, tags)
    while repo.set_dir(backup_id).exists():  # two runs within one second
        time.sleep(0.2)
        started = datetime.now(UTC)
        backup_id = BackupId.make(started, kind, tags)
    base = None if parent is None else chain.base_of(parent)
    partial = repo.begin(backup_id)
    return BackupRun(settings=settings, repo=repo, kind=kind, tags=tuple(tags) + (("promoted",) if promoted else ()),
                     id=backup_id, started_at=started, partial=partial, parent=parent, base=base or backup_id,
                     db_url=db_url, cleaned_partials=cleaned, promoted=promoted)


def stage_scan(run: BackupRun) -> ChangePlan:
    with _timed(run, "scan"):
        p = run.settings.project
        result = scan.scan_tree(p.root, p.include, p.exclude, _auto_excludes(run.settings, run.db_url))
        reference = {e.path: e for e in run.parent.files} if run.parent else None
        run.plan = plan_changes(result.entries, reference)
        run.skipped.extend(result.skipped)
        run.scanned = run.plan.scanned
        del result, reference
        if run.parent is not None:  # its index has served; keep only the header (memory)
            run.parent = replace(run.parent, files=())
    return run.plan


def _fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)  # a retried stage starts over
    return path


def stage_dump(run: BackupRun) -> DatabaseInfo | None:
    adapter = run.db_adapter()
    if adapter is None:
        return None
    with _timed(run, "dump"):
        path = _fresh(run.partial / adapter.artifact_name)
        work = run.partial / ".work"
        work.mkdir(mode=0o700, exist_ok=True)
        writer = archive.ArtifactWriter(path, level=run.settings.backup.compression_level, threads=run.threads)
        try:
            info = adapter.dump(writer.write, work)
            written = writer.close()
        except BaseException:
            writer.abort()
            path.unlink(missing_ok=True)
            raise
        if info.engine == "sqlite" and run.db_url is not None:
            try:
                rel = Path(run.db_url.name).resolve().relative_to(run.settings.project.root.resolve())
                info = replace(info, database=rel.as_posix())
            except ValueError:
                info = replace(info, database=run.db_url.name)
        if getattr(adapter, "counts_consistent", True) is False:
            run.warnings.append("database row counts are best effort (not taken in the dump's snapshot): "
                                "grant the backup user RELOAD for strictly consistent counts")
        run.db_info = replace(info, raw_size=written.raw_size)
        run.db_artifact = Artifact(name=adapter.artifact_name, role="database", size=written.size,
                                   sha256=written.sha256)
    return run.db_info


def stage_archive(run: BackupRun) -> Artifact:
    assert run.plan is not None, "scan first"
    with _timed(run, "archive"):
        path = _fresh(run.partial / FILES_ARTIFACT)
        writer = archive.ArtifactWriter(path, level=run.settings.backup.compression_level, threads=run.threads)
        try:
            res = archive.write_tar(run.settings.project.root, run.plan.archive, writer.write, run.id.value)
            written = writer.close()
        except BaseException:
            writer.abort()
            path.unlink(missing_ok=True)
            raise
        run.archived = res.entries
        run.plan = replace(run.plan, archive=())  # the archived entries replace the scanned ones (memory)
        run.skipped.extend(res.skipped)
        run.warnings.extend(res.warnings)
        run.files_bytes_in = res.bytes_in
        run.files_artifact = Artifact(name=FILES_ARTIFACT, role="files", size=written.size, sha256=written.sha256)
    return run.files_artifact


def stage_seal(run: BackupRun, *, now: datetime | None = None) -> Manifest:
    """Write manifest.json (with the snapshot index) and SHA256SUMS into the partial set."""
    assert run.plan is not None and run.files_artifact is not None
    with _timed(run, "seal"):
        index = merge_index(run.archived, run.plan.carried)
        artifacts = tuple(a for a in (run.files_artifact, run.db_artifact) if a is not None)
        finished = now or datetime.now(UTC)
        stats = BackupStats(
            files_scanned=run.scanned,
            files_changed=sum(1 for e in run.archived if e.type is EntryType.FILE),
            files_deleted=len(run.plan.deleted),
            bytes_in=run.files_bytes_in + (run.db_info.raw_size if run.db_info else 0),
            bytes_out=sum(a.size for a in artifacts),
            duration_s=time.monotonic() - run.t0,
        )
        m = Manifest(
            id=run.id, kind=run.kind, tags=run.tags,
            parent=run.parent.id if run.parent else None, base=run.base,
            started_at=run.started_at, finished_at=finished,
            host=socket.gethostname(), tool_version=__version__,
            source_root=str(run.settings.project.root),
            database=run.db_info, artifacts=artifacts, files=index,
            deleted=run.plan.deleted, skipped=tuple(run.skipped), stats=stats,
            depends_on=chain.holders_of(index, run.id),
        )
        size, digest = write_private_stream(run.partial / MANIFEST, mf.dump_lines(m))
        # SHA256SUMS covers the manifest too: a damaged index (modes, times, holders) is caught
        covered = [*artifacts, Artifact(name=MANIFEST, role="manifest", size=size, sha256=digest)]
        write_private_stream(run.partial / SUMS, [mf.sha256sums(covered)])
        run.manifest = m
    return m


def stage_verify(run: BackupRun, level: str | None = None) -> VerifyReport:
    assert run.manifest is not None
    with _timed(run, "verify"):
        rep = verify_dir(run.partial, run.manifest, level=level or run.settings.backup.verify,
                         key_files=run.settings.project.key_files, repo=run.repo)
        run.verify_report = rep
    rep.raise_if_bad()
    return rep


def stage_commit(run: BackupRun) -> Path:
    with _timed(run, "commit"):
        work = run.partial / ".work"
        if work.exists():
            for p in work.iterdir():
                p.unlink()
            work.rmdir()
        run.committed_path = run.repo.commit(run.id)
    return run.committed_path


@contextlib.contextmanager
def backup_session(settings: Settings, kind: BackupKind, tags: tuple[str, ...] = (), *,
                   now: datetime | None = None, lock_wait_s: float | None = None) -> Iterator[BackupRun]:
    """Hold the repository lock for the whole run; on any failure remove the partial set."""
    repo = LocalRepository(settings.storage.local_dir)
    wait = settings.backup.lock_wait_s if lock_wait_s is None else lock_wait_s
    with repo.lock(wait, purpose=f"{kind.value} backup"):
        run = prepare(settings, kind, tags, now=now, repo=repo)
        try:
            yield run
        except BaseException:
            repo.discard(run.id)
            raise
        if run.committed_path is None:
            repo.discard(run.id)


@dataclass
class BackupResult:
    manifest: Manifest
    path: Path
    timings: dict[str, float]
    warnings: list[str]
    verify: VerifyReport | None
    promoted: bool = False

    def summary_row(self) -> dict[str, object]:
        m = self.manifest
        dur = max(m.stats.duration_s, 1e-6)
        return {
            "id": m.id.value,
            "kind": m.kind.value + (" (monthly)" if "monthly" in m.tags else ""),
            "parent": m.parent.value if m.parent else "",
            "files scanned": m.stats.files_scanned,
            "files changed": m.stats.files_changed,
            "files deleted": m.stats.files_deleted,
            "bytes in": m.stats.bytes_in,
            "bytes out": m.stats.bytes_out,
            "duration s": round(dur, 2),
            "throughput MB/s": round(m.stats.bytes_in / dur / 1e6, 1),
            "verification": "passed" if self.verify and self.verify.ok else (self.verify.level if self.verify
                                                                            else "skipped"),
        }


def result_of(run: BackupRun) -> BackupResult:
    assert run.manifest is not None and run.committed_path is not None
    return BackupResult(run.manifest, run.committed_path, dict(run.timings), list(run.warnings),
                        run.verify_report, run.promoted)


def run_backup(settings: Settings, kind: BackupKind, tags: tuple[str, ...] = (), *,
               now: datetime | None = None) -> BackupResult:
    """All stages in order, no Prefect. Used by tests and benchmarks."""
    with backup_session(settings, kind, tags, now=now) as run:
        stage_scan(run)
        stage_dump(run)
        stage_archive(run)
        finished = None if now is None else now + timedelta(seconds=time.monotonic() - run.t0)
        stage_seal(run, now=finished)
        stage_verify(run)
        stage_commit(run)
    return result_of(run)


def kind_from_cli(name: str) -> tuple[BackupKind, tuple[str, ...]]:
    name = name.lower()
    if name == "monthly":
        return BackupKind.FULL, ("monthly",)
    aliases = {"full": BackupKind.FULL, "incremental": BackupKind.INCREMENTAL, "incr": BackupKind.INCREMENTAL,
               "differential": BackupKind.DIFFERENTIAL, "diff": BackupKind.DIFFERENTIAL}
    if name not in aliases:
        raise BackupError(f"unknown backup kind {name!r}", hint="use full, incremental, differential or monthly")
    return aliases[name], ()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def preflight(settings: Settings, kind: BackupKind) -> None:
    """Checks that need no lock and write nothing: bad input fails here, in one line,
    before Prefect starts (~13 s) and before any directory is created."""
    root = settings.project.root
    if not root.exists():
        raise SourceError(f"project root {root} does not exist",
                          hint="set [project] root in the config to the Django project directory")
    if not os.access(root, os.R_OK | os.X_OK) or not root.is_dir():
        raise SourceError(f"project root {root} is not readable",
                          hint="run the backup as root or give the backup user read access")
    db_url = settings.database_url()
    adapter_for(db_url, timeout=settings.database.timeout_s).check_available()
    if kind is not BackupKind.FULL and settings.backup.missing_parent == "fail":
        repo = LocalRepository(settings.storage.local_dir)
        heads = repo.headers()
        if chain.parent_for(kind, heads) is None:
            raise ChainError(
                f"cannot run a {kind.value} backup: there is no full backup in {repo.root} to build on",
                hint="run `erp-backup backup full` first, or set [backup] missing_parent = \"full\"",
            )
