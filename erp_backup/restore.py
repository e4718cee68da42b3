"""Restore a committed set (files and database) into a target.

The snapshot index of the chosen set says which set holds each file's bytes;
each holder's archive is read once, in one pass, and only the members the index
wants are written. Nothing is written outside the target directory:

* every index path is validated (relative, no ``..``, no NUL, no empty part);
* parent directories are created by us and never followed if they are links;
* files are opened with ``O_NOFOLLOW``; symlinks are created last, so no write
  ever goes through one;
* the tar member names themselves are only used as lookup keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from erp_backup import verify as verifier
from erp_backup.adapters import archive
from erp_backup.adapters.databases.base import adapter_for
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core import chain
from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.errors import ChainError, ConfigError, IntegrityError, RestoreError, UnsafeArchiveError
from erp_backup.core.models import BackupId, EntryType, FileEntry, Manifest

IS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class RestoreRequest:
    """What an operator asks for (CLI flags, the restore deployment's parameters). No secret."""

    target_dir: str | None = None
    backup_id: str | None = None
    at: datetime | None = None
    target_database: str | None = None  # a URL without password
    force: bool = False
    yes: bool = False
    jobs: int = 1


@dataclass(frozen=True)
class RestorePlan:
    """A checked restore: which set, into what. No secret (it may travel as a flow parameter)."""

    set_id: str
    target_dir: str | None
    target_database: str | None  # URL without password (credentials are resolved where the restore runs)
    replace: bool  # write over an existing database (--force, or --yes for the live one)
    into_live: bool
    jobs: int = 1
    notes: tuple[str, ...] = ()  # warnings of the choice (newer sets skipped, and why): into the report


@dataclass(frozen=True)
class FilesRestored:
    sets_read: tuple[str, ...]
    files: int
    dirs: int
    symlinks: int
    bytes: int


@dataclass(frozen=True)
class RestoreReport:
    set_id: str
    target_dir: str
    sets_read: tuple[str, ...] = ()
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    database: str | None = None
    db_tables: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    notes: tuple[str, ...] = ()

    def row(self) -> dict[str, object]:
        return {
            "set": self.set_id, "sets read": ", ".join(self.sets_read), "target": self.target_dir,
            "files": self.files, "dirs": self.dirs, "symlinks": self.symlinks, "bytes": self.bytes,
            "database": self.database or "-", "tables": len(self.db_tables), "duration s": round(self.duration_s, 2),
        }


@dataclass
class _Counts:
    sets_read: list[str] = field(default_factory=list)
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0


_BAD = "the backup set is damaged or malicious; restore from another set"


def check_rel(path: str) -> str:
    """Validate a path from an index or archive: relative, inside, normalised."""
    if not path or "\x00" in path:
        raise UnsafeArchiveError(f"refusing empty or NUL-containing path {path!r}", hint=_BAD)
    parts = path.split("/")
    if path.startswith("/") or ".." in parts:
        raise UnsafeArchiveError(f"refusing path {path!r}: it would leave the restore target", hint=_BAD)
    if "" in parts or "." in parts:
        raise UnsafeArchiveError(f"refusing non-normalised path {path!r}", hint=_BAD)
    return path


class SafeTarget:
    """Creates things under ``root`` without ever following a link.

    Paths given to it must have passed ``check_rel``. Directories it has made or checked
    are remembered while files are written (no link can appear meanwhile: links come
    last); ``links_phase()`` drops that memory so every parent is checked again."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.abspath(root)
        self._dirs: set[str] = set()
        self._cache = True

    def links_phase(self) -> None:
        self._dirs.clear()
        self._cache = False

    def _ensure_dirs(self, rel: str) -> None:
        """Make every directory of ``rel``'s parent, replacing (never following) links."""
        parent = rel.rpartition("/")[0]
        if not parent or (self._cache and parent in self._dirs):
            return
        cur_rel = ""
        for part in parent.split("/"):
            cur_rel = f"{cur_rel}/{part}" if cur_rel else part
            if self._cache and cur_rel in self._dirs:
                continue
            cur = os.path.join(self.root, cur_rel)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o700)
            else:
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(cur)  # a link or file where a directory must be: replace it, never follow
                    os.mkdir(cur, 0o700)
            if self._cache:
                self._dirs.add(cur_rel)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def mkdir(self, rel: str) -> None:
        self._ensure_dirs(rel)
        full = self.path(rel)
        try:
            os.mkdir(full, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(full).st_mode):
                os.unlink(full)
                os.mkdir(full, 0o700)
        self._dirs.add(rel)

    def open_file(self, rel: str) -> int:
        self._ensure_dirs(rel)
        full = self.path(rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(full, flags | os.O_EXCL, 0o600)
        except FileExistsError:
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                raise RestoreError(f"{full} is a directory; cannot restore a file there",
                                   hint="restore into an empty directory") from None
            os.unlink(full)  # a file or a link: replace it, never write through it
            return os.open(full, flags | os.O_EXCL, 0o600)

    def symlink(self, rel: str, target: str) -> None:
        self._ensure_dirs(rel)
        full = self.path(rel)
        if os.path.lexists(full):
            if os.path.isdir(full) and not os.path.islink(full):
                raise RestoreError(f"{full} is a directory; cannot restore a link there",
                                   hint="restore into an empty directory")
            os.unlink(full)
        os.symlink(target, full)


def _apply_meta(full: str, e: FileEntry) -> None:
    if IS_ROOT:
        os.lchown(full, e.uid, e.gid)
    if e.type is not EntryType.SYMLINK:
        os.chmod(full, e.mode, follow_symlinks=False)
    os.utime(full, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)


def _apply_meta_fd(fd: int, e: FileEntry) -> None:
    if IS_ROOT:
        os.fchown(fd, e.uid, e.gid)
    os.fchmod(fd, e.mode)  # after chown, which would clear set-id bits
    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))


def restore_files(repo: LocalRepository, m: Manifest, target: Path) -> FilesRestored:
    """Write the set's snapshot into ``target`` (checked by ``preflight``: empty, or ``force``)."""
    rep = _Counts()
    missing = [d for d in m.depends_on if not repo.exists(d)]
    if missing:
        raise ChainError(f"set {m.id} needs set {missing[0]}, which is not in {repo.root}",
                         hint="pick another set (`erp-backup list`) or fetch the missing set from remote storage")
    types = {}
    for e in m.files:
        types[check_rel(e.path)] = e.type
    for path in types:
        parent = path.rpartition("/")[0]
        if parent and types.get(parent, EntryType.DIR) is not EntryType.DIR:
            kind = types[parent].value
            raise UnsafeArchiveError(f"refusing {path!r}: its parent {parent!r} is a {kind} in the index", hint=_BAD)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    safe = SafeTarget(target)
    dirs = [e for e in m.files if e.type is EntryType.DIR]
    for d in dirs:
        safe.mkdir(d.path)
    groups = chain.files_by_holder(m.files)
    for holder in sorted(groups):
        wanted = {e.path: e for e in groups[holder]}
        hm = m if holder == m.id.value else repo.read_header(BackupId(holder))
        art = hm.artifact("files")
        if art is None:
            raise IntegrityError(f"set {holder} has no files archive but holds {len(wanted)} files",
                                 hint="verify the chain; restore from another set")
        apath = repo.set_dir(holder) / art.name
        rep.sets_read.append(holder)
        where = f"{holder}/{art.name}"
        with archive.open_decompressed(apath) as r:
            tar = archive.TarStream(r, where)
            for member in tar.members():
                if member.name not in wanted:
                    continue
                e = wanted.pop(member.name)
                if not member.isfile():
                    raise IntegrityError(f"{where}: {member.name} is not a regular file", hint="verify the set")
                fd = safe.open_file(e.path)
                h = hashlib.sha256()
                try:
                    while chunk := tar.read(archive.CHUNK):
                        h.update(chunk)
                        _write_all(fd, chunk)
                    if e.sha256 and h.hexdigest() != e.sha256:
                        raise IntegrityError(f"{where}: {e.path} does not match its checksum",
                                             hint="verify the set; restore from another one")
                    _apply_meta_fd(fd, e)
                finally:
                    os.close(fd)
                rep.files += 1
                rep.bytes += e.size
                if not wanted:
                    break
        if wanted:
            first = next(iter(wanted))
            raise IntegrityError(f"{holder}/{art.name} lacks {len(wanted)} file(s) of the index, e.g. {first}",
                                 hint="verify the set; restore from another one")
    safe.links_phase()
    for e in m.files:
        if e.type is EntryType.SYMLINK:
            safe.symlink(e.path, e.target or "")
            _apply_meta(safe.path(e.path), e)
            rep.symlinks += 1
    for d in sorted(dirs, key=lambda e: e.path.count("/"), reverse=True):
        _apply_meta(safe.path(d.path), d)
        rep.dirs += 1
    return FilesRestored(tuple(rep.sets_read), rep.files, rep.dirs, rep.symlinks, rep.bytes)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def restore_database(repo: LocalRepository, m: Manifest, target_db: DatabaseUrl, *, replace: bool,
                     jobs: int = 1) -> dict[str, int]:
    """Restore the set's dump into ``target_db`` (checked by ``preflight``: engine, live guard)."""
    art = m.artifact("database")
    if m.database is None or art is None:
        raise RestoreError(f"set {m.id} has no database dump", hint="pick another set")
    adapter = adapter_for(target_db)
    with repo.scratch("restore") as work:  # removed on exit; by the next run if this one is killed
        chunks: Iterable[bytes] = archive.iter_decompressed(repo.set_dir(m.id) / art.name)
        counts = adapter.restore(chunks, m.database, target_db, replace=replace, workdir=work, jobs=jobs)
    diff = {t: (n, counts.get(t)) for t, n in m.database.tables.items() if counts.get(t) != n}
    if diff:
        t, (want, got) = next(iter(diff.items()))
        raise IntegrityError(f"restored database differs from the manifest: {t} has {got} rows, expected {want}",
                             hint="the dump may be damaged; verify the set")
    return counts


# ----------------------------------------------------------------------------- preflight and the whole restore


def resolve_target_database(target: str | None, live: DatabaseUrl | None) -> DatabaseUrl | None:
    """The restore target with its credentials. Passwords never travel in flow parameters or argv:
    a target on the live database's server (same engine and user) reuses its password; otherwise
    ``$ERP_BACKUP_TARGET_DB_PASSWORD``. A target without a user takes the live database's user."""
    if not target:
        return None
    url = parse_database_url(target, key="target_database")
    if url.password:
        raise ConfigError("target_database contains a password",
                          hint="leave it out: it is taken from the configured database (same server and "
                          "user) or from $ERP_BACKUP_TARGET_DB_PASSWORD")
    pw = os.environ.get("ERP_BACKUP_TARGET_DB_PASSWORD", "")
    if not pw and live is not None and live.engine == url.engine and live.user == (url.user or live.user) \
            and live.with_name(url.name).same_database(url):
        pw = live.password
    user = url.user or (live.user if url.engine != "sqlite" and live is not None else "")
    return dataclasses.replace(url, user=user, password=pw)


def _target_empty(target: Path) -> bool:
    return not target.exists() or (target.is_dir() and not any(target.iterdir()))


def _pick_named(repo: LocalRepository, backup_id: str) -> Manifest:
    """``--backup ID``: that set, intact, with every set its restore reads present and intact."""
    bid = BackupId(backup_id)
    found = repo.inspect(bid)
    if found is None:
        raise RestoreError(f"backup set {backup_id} not found in {repo.root}", hint="see `erp-backup list`")
    hint = "pick another set (`erp-backup list`); `erp-backup verify ID` says more"
    if isinstance(found, chain.Damaged):
        raise RestoreError(f"backup set {bid} is damaged: {found.reason}", hint=hint)
    deps = {d: repo.inspect(d) for d in found.depends_on}
    problem = chain.chain_problem(found, [d for d, x in deps.items() if isinstance(x, Manifest)],
                                  [x for x in deps.values() if isinstance(x, chain.Damaged)])
    if problem is not None:
        raise ChainError(f"backup set {bid} cannot be restored: it {problem}",
                         hint=hint + ", or fetch the set it needs from remote storage")
    return found


_NEEDS_ALL = None
_NEEDS_FILES = frozenset({"files"})


def _pick_newest(repo: LocalRepository, at: datetime | None) -> tuple[Manifest, tuple[str, ...]]:
    """The newest set finished at or before ``at`` (None: the newest) that a restore can read whole:
    intact manifests (``scan``), every set it needs present, and — the quick level — the artifacts
    the restore reads matching their checksums (its own; the files archive of each set it needs).
    Every newer set passed over is named, with why: in the error when none is left, else as notes."""
    found = repo.scan()
    if not found.committed and not found.damaged:
        raise ChainError(f"there is no committed backup set in {repo.root}",
                         hint="check [storage] local_dir, or run a backup first")
    by_id = {m.id: m for m in found.committed}
    invalid: dict[BackupId, str] = {}
    checked: dict[tuple[BackupId, bool], str | None] = {}
    while True:
        sel = chain.select_for_time(found.committed, at, damaged=found.damaged, invalid=invalid)
        bad = None
        for member, whole in ((sel.chosen, True), *((by_id[d], False) for d in sel.chosen.depends_on)):
            key = (member.id, whole)
            if key not in checked:
                checked[key] = verifier.artifacts_problem(repo, member, _NEEDS_ALL if whole else _NEEDS_FILES)
            if checked[key] is not None:
                bad = (member.id, checked[key])
                break
        if bad is None:
            break
        invalid[bad[0]] = bad[1] or ""
    notes = tuple(f"skipped {s.id}: it {s.reason}" for s in sel.skipped)
    if notes:
        notes += (f"restoring {sel.chosen.id} (finished {sel.chosen.finished_at:%Y-%m-%dT%H:%M:%SZ}), "
                  f"the newest set that can be restored whole",)
    return sel.chosen, notes


def _pick_set(repo: LocalRepository, backup_id: str | None, at: datetime | None) -> tuple[Manifest, tuple[str, ...]]:
    """(the set to restore, notes for the operator: the newer sets skipped and why)."""
    if backup_id:
        return _pick_named(repo, backup_id), ()
    return _pick_newest(repo, at)


def preflight(repo: LocalRepository, req: RestoreRequest, *, live: DatabaseUrl | None,
              target_db: DatabaseUrl | None = None) -> RestorePlan:
    """Every check of a restore, before anything is written (and, from the CLI, before Prefect
    starts): something to restore into, the set, the target directory, the target database
    (engine, no password in it, the live-database guard), the jobs."""
    if req.target_dir is None and not req.target_database and target_db is None:
        raise ConfigError("nothing to restore into", hint="give --target-dir and/or --target-database")
    if req.jobs < 1:
        raise ConfigError(f"--jobs {req.jobs}: must be 1 or more", hint="e.g. --jobs 2")
    m, notes = _pick_set(repo, req.backup_id, req.at)
    target_dir = os.path.abspath(req.target_dir) if req.target_dir is not None else None
    if target_dir is not None:
        t = Path(target_dir)
        if t.exists() and not t.is_dir():
            raise RestoreError(f"target {t} is a file, not a directory", hint="give a directory for --target-dir")
        if not _target_empty(t) and not req.force:
            raise RestoreError(f"target directory {t} is not empty",
                               hint="restore into a new directory, or pass --force to write over it")
    if target_db is None:
        target_db = resolve_target_database(req.target_database, live)
    if target_db is None and m.database is not None and m.database.engine == "sqlite" and target_dir is not None \
            and not os.path.isabs(m.database.database):
        target_db = DatabaseUrl("sqlite", os.path.join(target_dir, check_rel(m.database.database)))
    into_live = False
    if target_db is not None:
        if m.database is None or m.artifact("database") is None:
            raise RestoreError(f"set {m.id} has no database dump", hint="pick another set, or leave out the target "
                               "database")
        if target_db.engine != m.database.engine:
            raise RestoreError(f"set {m.id} holds a {m.database.engine} dump; cannot restore it into "
                               f"{target_db.engine}", hint="give a --target-database of the same engine")
        into_live = live is not None and target_db.same_database(live)
        if into_live and not req.yes:
            raise RestoreError(f"{target_db.redacted()} is the live database",
                               hint="pass --yes to overwrite the live database, or restore into another one")
    if target_db is None:
        target_text = None
    elif req.target_database:
        target_text = req.target_database  # as given: no password (checked), options kept
    else:
        target_text = dataclasses.replace(target_db, password="").redacted()
    return RestorePlan(set_id=m.id.value, target_dir=target_dir, target_database=target_text,
                       replace=req.force or req.yes, into_live=into_live, jobs=req.jobs, notes=notes)


def execute(repo: LocalRepository, plan: RestorePlan, target_db: DatabaseUrl | None) -> RestoreReport:
    """Restore what ``plan`` says; ``target_db`` is its database with credentials
    (``resolve_target_database``)."""
    t0 = time.monotonic()
    repo.clean_leftovers()  # scratch directories of killed runs
    m = repo.read_manifest(BackupId(plan.set_id))
    files = restore_files(repo, m, Path(plan.target_dir)) if plan.target_dir is not None else None
    tables: dict[str, int] = {}
    notes: tuple[str, ...] = ()
    if target_db is not None:
        tables = restore_database(repo, m, target_db, replace=plan.replace, jobs=plan.jobs)
    elif m.database is not None:
        notes = ("database not restored: pass --target-database URL",)
    counts = files or FilesRestored((), 0, 0, 0, 0)
    return RestoreReport(set_id=m.id.value, target_dir=plan.target_dir or "", sets_read=counts.sets_read,
                         files=counts.files, dirs=counts.dirs, symlinks=counts.symlinks, bytes=counts.bytes,
                         database=plan.target_database if target_db is not None else None, db_tables=tables,
                         duration_s=time.monotonic() - t0, notes=plan.notes + notes)


def target_database_of(plan: RestorePlan, live: DatabaseUrl | None) -> DatabaseUrl | None:
    """The plan's target database with its credentials (resolved again where the restore runs)."""
    if plan.target_database is None:
        return None
    if plan.target_database.startswith("sqlite:"):
        return parse_database_url(plan.target_database, key="target_database")
    return resolve_target_database(plan.target_database, live)


def restore(repo: LocalRepository, *, target_dir: Path | None, backup_id: str | None = None,
            at: datetime | None = None, target_db: DatabaseUrl | None = None, live_db: DatabaseUrl | None = None,
            force: bool = False, yes: bool = False, jobs: int = 1) -> RestoreReport:
    """Preflight, then restore: the engine without Prefect (tests, the demo's checks)."""
    req = RestoreRequest(target_dir=str(target_dir) if target_dir is not None else None, backup_id=backup_id,
                         at=at, target_database=None, force=force, yes=yes, jobs=jobs)
    plan = preflight(repo, req, live=live_db, target_db=target_db)
    if target_db is None and plan.target_database is not None:  # the SQLite file inside target_dir
        target_db = parse_database_url(plan.target_database, key="target_database")
    return execute(repo, plan, target_db)
