"""The backup stages, without Prefect: each is a function from values to a value.

preflight -> prepare -> scan -> dump -> archive -> seal -> verify -> commit -> report

Every stage returns a frozen result that carries its own warnings; nothing is
shared by mutation, so a stage that is retried starts from exactly the inputs of
its first attempt. The order lives in one place, ``erp_backup.pipeline``.
A set that fails verification never becomes visible: verify runs on the sealed
``.partial`` directory and commit is the rename.
"""

from __future__ import annotations

import heapq
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from erp_backup import __version__
from erp_backup import encryption as enc
from erp_backup.adapters import archive, scan
from erp_backup.adapters.archive.selfcheck import InlineCheck, MemberDigest
from erp_backup.adapters.databases.base import DatabaseAdapter, adapter_for
from erp_backup.adapters.databases.sqlite import COMPANIONS as SQLITE_COMPANIONS
from erp_backup.adapters.index_file import IndexFile
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository, write_private_stream
from erp_backup.config import Settings
from erp_backup.core import chain
from erp_backup.core import manifest as mf
from erp_backup.core.anomaly import SizeVerdict, size_anomaly
from erp_backup.core.changes import (
    ARCHIVE,
    CARRY,
    DELETED,
    ChangePlan,
    plan_changes,
    stream_changes,
)
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import ChainError, IntegrityError, SourceError, StorageError
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
class PlannedChanges:
    """The change plan against the parent's snapshot index, as the scan wrote it to ``path`` (in
    the partial set's ``.index`` directory, removed at the commit): one line per entry of the new
    index, in path order, ``A`` + the entry to archive or ``C`` + the index line carried over (both
    ``manifest.entry_line`` texts). Only counts and the few whole-set facts stay in memory."""

    path: Path
    archive_count: int  # entries to archive (files, dirs, links)
    changed_files: int
    changed_bytes: int
    carried: int  # entries carried over
    deleted: tuple[str, ...]  # paths of the parent's index that are gone
    holders: tuple[str, ...]  # the other sets holding bytes of carried files
    key_files: tuple[str, ...] = ()  # the configured key files the scan found

    @property
    def scanned(self) -> int:
        return self.archive_count + self.carried


@dataclass(frozen=True)
class ScanResult:
    """The change plan against the parent's snapshot index, and what the walk could not take."""

    changes: PlannedChanges
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
    index: Path  # spill file: per ``A`` line of the plan, the archived entry's ``entry_line`` or VANISHED
    index_count: int  # its entries
    files_archived: int  # regular files archived (with sha256 and this set as holder)
    bytes_in: int
    skipped: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]
    checked_inline: str = ""  # read back while written (adapters/archive/selfcheck.py): "disk" (from the
    # file itself, which also gave the artifact's SHA-256), "stream" (the bytes on their way to the encryptor)
    key_files: tuple[str, ...] = ()  # the configured key files in the index
    read_back_stamp: tuple[int, int, int, int] | None = None  # "disk": the file as its SHA-256 was taken


@dataclass(frozen=True)
class SealedSet:
    """manifest.json and SHA256SUMS written into the still invisible ``.partial`` directory. The
    manifest's index is an ``IndexFile`` view of that file (not held in memory)."""

    manifest: Manifest
    partial: Path
    files_read_back: str = ""  # FilesResult.checked_inline
    key_files: tuple[str, ...] = ()  # FilesResult.key_files: verify need not read the index for them
    files_stamp: tuple[int, int, int, int] | None = None  # FilesResult.read_back_stamp


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


SPILL_DIR = ".index"  # inside the partial set: the change plan and the new index (removed at the commit)
PLAN_FILE = "plan.idx"
ARCHIVED_FILE = "archived.idx"
VANISHED = "-"  # archived.idx: the plan's entry was not archived (it vanished, or is no longer a file)
_LINES = 4096  # spill lines per write


def _spill_dir(plan: BackupPlan) -> Path:
    d = plan.partial / SPILL_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _clear_spill(plan: BackupPlan) -> None:
    _remove_flat_dir(plan.partial / SPILL_DIR)


def _remove_flat_dir(d: Path) -> None:
    """Remove ``d`` and the files in it (a scratch directory of the partial set), if it exists."""
    if d.exists():
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def scan_changes(plan: BackupPlan) -> ScanResult:
    """Walk the tree in path order and merge it with the parent's index (read line by line, also in
    path order): the plan goes to a spill file as it is made, so neither the scan nor the index is
    ever held whole. A parent index that is not a sorted, line-per-entry one (another layout, a
    crafted order) is read whole instead, as before."""
    p = plan.settings.project
    excludes = _auto_excludes(plan.settings, plan.database)
    path = _fresh(_spill_dir(plan) / PLAN_FILE)
    keys = {k.strip("/") for k in p.key_files}
    skipped: list[tuple[str, str]] = []
    found = scan.iter_sorted(p.root, p.include, p.exclude, excludes, skipped)
    if plan.parent is None:
        planned = _write_plan(path, stream_changes(found, (), _no_path, _no_carry), keys)
        return ScanResult(planned, tuple(skipped))
    pid = plan.parent.id
    where = f"{pid}/{MANIFEST}"
    try:
        with open(plan.repo.set_dir(pid) / MANIFEST, encoding="utf-8", newline="") as f:
            header, lines = mf.open_index(f, where=where)
            if header.id != pid:
                raise IntegrityError(f"{where} describes set {header.id}", hint="verify it")
            planned = _write_plan(path, stream_changes(found, lines, mf.line_path, _carrier(header)), keys)
        return ScanResult(planned, tuple(skipped))
    except (IntegrityError, UnicodeDecodeError, OSError):
        pass  # read it the general way below (which raises what is really wrong with it)
    skipped = []
    found = scan.iter_sorted(p.root, p.include, p.exclude, excludes, skipped)
    # the parent's index is read whole here and dropped with this frame (memory)
    parent = plan.repo.read_manifest(pid)
    held = _holders(parent)
    reference = {e.path: e for e in parent.files if e.holder is None or e.holder in held}
    planned = _write_plan(path, _plan_events(plan_changes(found, reference)), keys)
    return ScanResult(planned, tuple(skipped))


def _holders(parent: Manifest) -> frozenset[str]:
    """The sets a file of ``parent``'s index may be held by: itself and the sets it depends on. A
    carried entry naming any other set (a crafted or damaged parent) is archived again instead: its
    holder may not hold it (a review had an incremental commit, verify clean and only its restore
    fail)."""
    return frozenset({parent.id.value, *(d.value for d in parent.depends_on)})


def _carrier(parent: Manifest) -> Callable[[FileEntry, str], tuple[str, str | None, str] | None]:
    held = _holders(parent)

    def carry(current: FileEntry, text: str) -> tuple[str, str | None, str] | None:
        got = mf.carry_line(current, text)
        return None if got is None or (got[1] is not None and got[1] not in held) else got

    return carry


def _no_path(_r: object) -> str:
    return ""


def _no_carry(_e: FileEntry, _r: object) -> None:
    return None


def _plan_events(cp: ChangePlan) -> Iterator[tuple[str, object]]:
    """A whole ``ChangePlan`` as ``stream_changes`` events, in path order (carried: (line, holder))."""
    merged = heapq.merge(((e.path, ARCHIVE, e) for e in cp.archive), ((e.path, CARRY, e) for e in cp.carried))
    for _, kind, e in merged:
        yield kind, (mf.entry_line(e), e.holder if e.type is EntryType.FILE else None, e.path) if kind == CARRY else e
    for d in cp.deleted:
        yield DELETED, d


class _Spill:
    """A spill file of the partial set, written in batches of lines; a write error (a full disk)
    is a StorageError that says so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._buf: list[str] = []
        try:
            self._f = open(path, "w", encoding="utf-8", newline="")
        except OSError as e:
            raise self._error(e) from e

    def _error(self, e: OSError) -> StorageError:
        return StorageError(f"writing {self.path} failed: {e.strerror}",
                            hint="free space in the backup directory, then run the backup again")

    def add(self, line: str) -> None:
        self._buf.append(line)
        if len(self._buf) >= _LINES:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            try:
                self._f.write("\n".join(self._buf) + "\n")
            except OSError as e:
                raise self._error(e) from e
            self._buf = []

    def close(self) -> None:
        try:
            self.flush()
        finally:
            try:
                self._f.close()
            except OSError as e:
                raise self._error(e) from e

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            try:
                self._f.close()
            except OSError:
                pass


def _write_plan(path: Path, events: Iterable[tuple[str, object]], keys: set[str]) -> PlannedChanges:
    archive_count = files = size = carried = 0
    deleted: list[str] = []
    holders: set[str] = set()
    found_keys: list[str] = []
    line = mf.entry_line
    with _Spill(path) as out:
        add = out.add
        for kind, x in events:
            if kind == DELETED:
                deleted.append(x)  # type: ignore[arg-type]
                continue
            if kind == CARRY:
                text, holder, cpath = cast("tuple[str, str | None, str]", x)
                add("C" + text)
                carried += 1
                if holder:
                    holders.add(holder)
                if keys and cpath in keys:
                    found_keys.append(cpath)
                continue
            e: FileEntry = x  # type: ignore[assignment]
            add("A" + line(e))
            archive_count += 1
            if e.type is EntryType.FILE:
                files += 1
                size += e.size
            if keys and e.path in keys:
                found_keys.append(e.path)
    return PlannedChanges(path, archive_count, files, size, carried, tuple(deleted), tuple(sorted(holders)),
                          tuple(found_keys))


def _fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)  # a retried stage starts over
    return path


def _clear_work(plan: BackupPlan) -> None:
    _remove_flat_dir(plan.partial / WORK_DIR)


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
    """Archive what the plan says. Each archived entry (with its sha256 and this set as holder)
    goes to a spill file as the tar writer finishes it, one line per ``A`` line of the plan
    (``-`` for a file that vanished meanwhile): the seal merges the two into the new index. The
    carried lines are not touched here."""
    encrypted = enc.encrypts_local(plan.settings)
    name = enc.encrypted_name(FILES_ARTIFACT) if encrypted else FILES_ARTIFACT
    path = _fresh(plan.partial / name)
    out = _fresh(_spill_dir(plan) / ARCHIVED_FILE)
    # the default (full) verification: the archive is read back as it is written (selfcheck); from the
    # file itself when it is not encrypted (that read also gives SHA256SUMS its hash), else the
    # compressed bytes on their way to gpg
    where = f"{plan.id}/{FILES_ARTIFACT}"
    full = plan.settings.backup.verify == "full"
    check: InlineCheck | None = InlineCheck(where) if full and encrypted else None
    mode = "" if not full else "stream" if encrypted else "disk"
    members = MemberDigest()
    count = files = 0
    pending = False  # an entry handed to the tar writer and not archived (yet)
    try:
        with open(scanned.changes.path, encoding="utf-8", newline="") as src, _Spill(out) as dst:
            def wanted() -> Iterator[FileEntry]:
                nonlocal pending
                if not scanned.changes.archive_count:
                    return
                for text in src:
                    if text[0] == "A":
                        if pending:
                            dst.add(VANISHED)
                        pending = True
                        yield mf.entry_from_dict(json.loads(text[1:]))

            def done(e: FileEntry) -> None:
                nonlocal count, files, pending
                dst.add(mf.entry_line(e))
                pending = False
                members.add(e)
                count += 1
                files += e.type is EntryType.FILE

            with enc.local_encryptor(plan.settings) as encryptor:
                writer = archive.ArtifactWriter(
                    path, level=plan.settings.backup.compression_level, threads=plan.threads, encryptor=encryptor,
                    inspector=check, readback=(lambda p: InlineCheck(where, p)) if mode == "disk" else None)
                if writer.readback is not None:
                    check = cast(InlineCheck, writer.readback)
                try:
                    res = archive.write_tar(plan.settings.project.root, wanted(), writer.write, plan.id.value,
                                            on_done=done)
                    if pending:
                        dst.add(VANISHED)
                    written = writer.close()
                    if check is not None:
                        check.result(written.raw_size, members)
                except BaseException:
                    writer.abort()
                    raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    gone = {p for p, _ in res.skipped}
    return FilesResult(artifact=Artifact(name=name, role="files", size=written.size, sha256=written.sha256,
                                         encryption=enc.METHOD if encrypted else None),
                       index=out, index_count=scanned.changes.carried + count, files_archived=files,
                       bytes_in=res.bytes_in, skipped=res.skipped, warnings=res.warnings,
                       checked_inline=mode, read_back_stamp=written.stamp,
                       key_files=tuple(k for k in scanned.changes.key_files if k not in gone))


def _index_lines(planned: Path, archived: Path) -> Iterator[str]:
    """The new index, in path order: the plan's carried lines and, for each of its ``A`` lines,
    what the archive stage wrote (nothing for a file that vanished)."""
    with open(planned, encoding="utf-8", newline="") as p, open(archived, encoding="utf-8", newline="") as a:
        for text in p:
            if text[0] == "C":
                yield text[1:-1]
            else:
                got = a.readline()
                if not got.endswith("\n"):
                    raise IntegrityError(f"{archived} ends before the plan {planned}", hint="run the backup again")
                if got != VANISHED + "\n":
                    yield got[:-1]


def seal(plan: BackupPlan, scanned: ScanResult, files: FilesResult, dumped: DumpResult | None,
         finished: datetime | None = None) -> SealedSet:
    """Write manifest.json (with the snapshot index, streamed from the archive stage's spill file)
    and SHA256SUMS into the partial set."""
    artifacts = tuple(a.artifact for a in (files, dumped) if a is not None)
    stats = BackupStats(
        files_scanned=scanned.changes.scanned,
        files_changed=files.files_archived,
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
        database=dumped.info if dumped else None, artifacts=artifacts,
        deleted=scanned.changes.deleted, skipped=scanned.skipped + files.skipped, stats=stats,
        # the archived files name this set; the carried ones the sets the scan found
        depends_on=tuple(sorted(BackupId(h) for h in scanned.changes.holders if h != plan.id.value)),
        recipients=enc.recipients(plan.settings) if any(a.encryption for a in artifacts) else (),
    )
    size, digest = write_private_stream(plan.partial / MANIFEST,
                                        mf.dump_with_index(m, _index_lines(scanned.changes.path, files.index)))
    # SHA256SUMS covers the manifest too: a damaged index (modes, times, holders) is caught
    covered = [*artifacts, Artifact(name=MANIFEST, role="manifest", size=size, sha256=digest)]
    write_private_stream(plan.partial / SUMS, [mf.sha256sums(covered)])
    enc.sign_set(plan.settings, plan.partial)  # SHA256SUMS.sig, when [encryption] sign = true
    m = replace(m, files=IndexFile(plan.partial / MANIFEST, files.index_count))
    return SealedSet(m, plan.partial, files.checked_inline, files.key_files, files.read_back_stamp)


def verify_sealed(plan: BackupPlan, sealed: SealedSet) -> VerifyReport:
    rep = verify_dir(sealed.partial, sealed.manifest, level=plan.settings.backup.verify,
                     key_files=plan.settings.project.key_files, repo=plan.repo, settings=plan.settings,
                     files_read_back=sealed.files_read_back, key_files_found=sealed.key_files,
                     files_stamp=sealed.files_stamp)
    rep.raise_if_bad()
    return rep


def commit(plan: BackupPlan, sealed: SealedSet, verified: VerifyReport) -> CommittedSet:
    verified.raise_if_bad()  # never commit what did not verify, whoever calls this
    _clear_work(plan)
    _clear_spill(plan)
    final = plan.repo.commit(plan.id)
    m = sealed.manifest
    if isinstance(m.files, IndexFile):  # the index view follows the set to its committed place
        m = replace(m, files=m.files.moved(final / MANIFEST))
    committed = CommittedSet(m, final, verified)
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
