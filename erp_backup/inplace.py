"""Emergency restore in place: stop → safety copy → restore files → restore database → start → smoke.

``plan`` checks everything before anything is stopped (the set and its chain, the live tree and
database, the disk space for the safety copy, ``--yes``); ``run`` does the steps under the repository
lock (no backup runs meanwhile), each timed. On a failure after the first stop command it puts the
safety copy back (files and database), runs the start commands, and raises one ``RestoreError`` naming
the failed step. Only what differs is written: a live file whose stat (type, size, mtime, mode,
owner) matches the set's index is left alone; a live path the set does not hold is deleted (excluded
paths, the backup directory and the live SQLite database never are).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from erp_backup import commands, encryption, safety
from erp_backup import restore as restorer
from erp_backup.adapters import scan
from erp_backup.adapters.archive import CHUNK
from erp_backup.adapters.databases.base import adapter_for
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import Settings
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import BackupError, ConfigError, RestoreError, StorageError
from erp_backup.core.models import BackupId, EntryType, FileEntry, Manifest

Log = Callable[[str], object]


@dataclass(frozen=True)
class InPlaceRequest:
    """What the operator asks for (CLI flags, the restore deployment's parameters). No secret."""

    backup_id: str | None = None
    at: datetime | None = None
    files: bool = True
    database: bool = True
    yes: bool = False
    verify: str = "quick"
    allow_old: bool = False


@dataclass(frozen=True)
class InPlacePlan:
    restore: restorer.RestorePlan  # target_dir: the project root (None: database only)
    files: bool
    database: bool
    root: str


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    duration_s: float
    detail: str = ""

    def row(self) -> dict[str, object]:
        return {"step": self.name, "result": "ok" if self.ok else "FAILED", "duration s": round(self.duration_s, 2),
                "detail": self.detail or "-"}


@dataclass(frozen=True)
class InPlaceReport:
    set_id: str
    steps: tuple[Step, ...]
    safety_copy: str
    files_written: int = 0
    paths_deleted: int = 0
    tables: int = 0
    notes: tuple[str, ...] = ()

    def rows(self) -> list[dict[str, object]]:
        return [s.row() for s in self.steps]

    def row(self) -> dict[str, object]:
        return {"set": self.set_id, "in place": "yes", "files written": self.files_written,
                "paths deleted": self.paths_deleted, "tables": self.tables, "safety copy": self.safety_copy,
                "duration s": round(sum(s.duration_s for s in self.steps), 2)}


class InPlaceFailed(RestoreError):
    """An in-place restore failed; ``steps`` holds every step so far (the CLI prints them)."""

    def __init__(self, message: str, *, hint: str, steps: tuple[Step, ...] = ()) -> None:
        super().__init__(message, hint=hint)
        self.steps = steps

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.message, self.hint or "", self.steps))


def _rebuild(message: str, hint: str, steps: tuple[Step, ...]) -> InPlaceFailed:
    return InPlaceFailed(message, hint=hint, steps=steps)


# ----------------------------------------------------------------------------- plan


def plan(settings: Settings, req: InPlaceRequest, *, now: datetime | None = None) -> InPlacePlan:
    """Every check before anything is stopped or written."""
    if not req.yes:
        raise RestoreError("an in-place restore overwrites the live project and database",
                           hint="pass --yes to confirm (services are stopped, a safety copy is kept)")
    if not req.files and not req.database:
        raise ConfigError("--files-only and --database-only together leave nothing to restore",
                          hint="give at most one of them")
    # a root that is a link (a release directory behind /srv/app/current) is restored where it points
    root = Path(os.path.realpath(settings.project.root))
    if req.files and not root.is_dir():
        raise RestoreError(f"project root {root} is not a directory",
                           hint="fix [project] root, or restore into an empty directory with --target-dir")
    live = settings.live_database() if req.database else None
    if req.database and live is None:
        settings.database_url()  # raises the configuration's own error
    repo = LocalRepository(settings.storage.local_dir)
    rreq = restorer.RestoreRequest(target_dir=str(root) if req.files else None, backup_id=req.backup_id,
                                   at=req.at, force=True, yes=True, keep_setid=True, verify=req.verify,
                                   allow_old=req.allow_old)
    rplan = restorer.preflight(repo, rreq, live=live, target_db=live, settings=settings,
                               max_age_s=settings.restore.max_age, now=now)
    if not req.database:
        rplan = dataclasses.replace(rplan, target_database=None, database_rel=None, into_live=False)
    elif live is not None and live.engine == "sqlite" and rplan.database_rel is None and req.files:
        pass  # the live SQLite file lies outside the project: restored where the configuration says
    m = repo.read_header(BackupId(rplan.set_id))
    if req.database and (m.database is None or m.artifact("database") is None):
        raise RestoreError(f"set {m.id} has no database dump", hint="pass --files-only, or pick another set")
    if req.database and live is not None:  # the safety dump and the restore need it: fail before the stop
        adapter_for(live, timeout=settings.database.timeout_s).check_available()
    return InPlacePlan(rplan, req.files, req.database, str(root))


# ----------------------------------------------------------------------------- what changes


@dataclass(frozen=True)
class Changes:
    write: tuple[FileEntry, ...]  # index entries (files, links) to write: new or different
    saved: tuple[FileEntry, ...]  # live entries replaced or deleted: copied first
    delete: tuple[FileEntry, ...]  # live entries the set does not hold (subtrees of type clashes included)
    dirs: tuple[FileEntry, ...]  # live directories the set also holds (their metadata is set)
    created: tuple[str, ...]  # index paths that do not exist live


def _differs(live: FileEntry, want: FileEntry) -> bool:
    if live.type is not want.type:
        return True
    if want.type is EntryType.SYMLINK:
        return live.target != want.target or (os.geteuid() == 0 and (live.uid, live.gid) != (want.uid, want.gid))
    if want.type is EntryType.FILE:
        owner = os.geteuid() == 0 and (live.uid, live.gid) != (want.uid, want.gid)
        return live.size != want.size or live.mtime_ns != want.mtime_ns or live.mode != want.mode or owner
    return False


def changes(m: Manifest, live_entries: Iterable[FileEntry]) -> Changes:
    index = {e.path: e for e in m.files}
    live = {e.path: e for e in live_entries}
    clash_dirs = [p for p, e in live.items() if e.type is EntryType.DIR and p in index
                  and index[p].type is not EntryType.DIR]
    under_clash = tuple(c + "/" for c in clash_dirs)
    write, saved, delete, dirs = [], [], [], []
    for p, e in live.items():
        want = index.get(p)
        if want is None or p in clash_dirs or p.startswith(under_clash):
            delete.append(e)
            if e.type is not EntryType.DIR:
                saved.append(e)
        elif e.type is EntryType.DIR and want.type is EntryType.DIR:
            dirs.append(e)
        elif _differs(e, want):
            saved.append(e)
    for p, want in index.items():
        if want.type is EntryType.DIR:
            continue
        have = live.get(p)
        if have is None or p in clash_dirs or _differs(have, want):
            write.append(want)
    created = tuple(p for p in index if p not in live or p in clash_dirs)
    deleted_dirs = [e for e in delete if e.type is EntryType.DIR]
    return Changes(tuple(write), tuple(saved + deleted_dirs), tuple(delete), tuple(dirs), created)


def _live_scan(settings: Settings, live: DatabaseUrl | None) -> list[FileEntry]:
    from erp_backup.backup import _auto_excludes

    p = settings.project
    return scan.scan_tree(p.root, p.include, p.exclude, _auto_excludes(settings, live)).entries


# ----------------------------------------------------------------------------- run


class _Steps:
    def __init__(self, log: Log) -> None:
        self.done: list[Step] = []
        self.log = log

    def add(self, name: str, ok: bool, t0: float, detail: str = "") -> None:
        step = Step(name, ok, time.monotonic() - t0, detail)
        self.done.append(step)
        self.log(f"{name}: {'ok' if ok else 'FAILED'} ({step.duration_s:.2f} s){' — ' + detail if detail else ''}")

    def commands(self, results: list[commands.CommandResult]) -> commands.CommandResult | None:
        failed = None
        for r in results:
            self.done.append(Step(r.label, r.ok, r.duration_s, r.output if r.ok else f"{r.error}\n{r.output}".strip()))
            self.log(f"{r.label}: {'ok' if r.ok else 'FAILED: ' + r.error} ({r.duration_s:.2f} s)")
            if not r.ok and failed is None:
                failed = r
        return failed


class _StepFailed(Exception):
    def __init__(self, step: str, cause: str) -> None:
        super().__init__(f"{step}: {cause}")
        self.step = step
        self.cause = cause


def run(settings: Settings, plan: InPlacePlan, *, log: Log = print, now: datetime | None = None) -> InPlaceReport:
    """The emergency restore (see the module doc). ``plan`` comes from ``plan()``."""
    repo = LocalRepository(settings.storage.local_dir)
    rplan = plan.restore
    live = settings.live_database() if plan.database else None
    cfg = settings.restore
    sec = _secrets(settings)
    steps = _Steps(log)
    if repo.busy():
        log(f"another erp-backup run holds the lock on {repo.root}: waiting for it (up to "
            f"{settings.backup.lock_wait_s:.0f} s, [backup] lock_wait_s) before anything is stopped")
    with repo.lock(settings.backup.lock_wait_s, purpose="in-place restore"), contextlib.ExitStack() as stack:
        m = restorer.manifest_to_restore(repo, BackupId(rplan.set_id), settings)
        # signatures checked again and a GPG session for encrypted sets, before anything is stopped
        decryptor_for = stack.enter_context(encryption.restore_decryptor(settings, repo, m, files=plan.files))
        rel = rplan.database_rel if plan.files and live is not None else None
        t0 = time.monotonic()
        diff = changes(m, _live_scan(settings, live)) if plan.files else Changes((), (), (), (), ())
        if plan.files:
            restorer.check_set(repo, m, rel)
        _check_space(repo, settings, m, diff, plan)
        steps.add("plan", True, t0, f"{len(diff.write)} path(s) to write, {len(diff.delete)} to delete")
        copy = safety.SafetyCopy(safety.create_dir(repo.root, m.id.value, now or datetime.now(UTC)), m.id.value,
                                 plan.root, diff.saved, diff.dirs, diff.created,
                                 database_url=live.redacted() if live else None)
        copy = copy.write()
        stage = "stop"
        started = False
        db_touched = False
        tree_touched = False
        failure: _StepFailed | None = None
        stats = {"written": 0, "deleted": 0, "tables": 0}
        notes: list[str] = list(rplan.notes)
        try:
            bad = steps.commands(commands.run_all("stop", cfg.stop, timeout=cfg.command_timeout, secrets=sec))
            if bad:
                raise _StepFailed(bad.label, bad.error)
            stage = "safety copy"
            t0 = time.monotonic()
            try:
                copy = _make_copy(copy, settings, live, plan)
            except (BackupError, OSError) as e:
                steps.add(stage, False, t0, _why(e))
                raise _StepFailed(stage, _why(e)) from e
            steps.add(stage, True, t0, f"{len(diff.saved)} path(s) and "
                      f"{'the database' if copy.database else 'no database'} in {copy.path}")
            if plan.files:
                stage = "restore files"
                t0 = time.monotonic()
                tree_touched = True
                try:
                    stats["deleted"], left = _delete(Path(plan.root), diff.delete)
                    files = _write(repo, m, diff, Path(plan.root), decryptor_for)
                except (BackupError, OSError) as e:
                    steps.add(stage, False, t0, _why(e))
                    raise _StepFailed(stage, _why(e)) from e
                stats["written"] = files.files + files.symlinks
                if left:
                    notes.append(f"kept {len(left)} directory(ies) the set does not hold because they contain "
                                 f"excluded paths: {', '.join(left[:5])}")
                steps.add(stage, True, t0, f"{stats['written']} written, {stats['deleted']} deleted")
            if plan.database and live is not None:
                stage = "restore database"
                t0 = time.monotonic()
                db_touched = True
                try:
                    tables = _restore_db(repo, m, live, plan, rel, decryptor_for)
                except (BackupError, OSError) as e:
                    steps.add(stage, False, t0, _why(e))
                    raise _StepFailed(stage, _why(e)) from e
                stats["tables"] = len(tables)
                steps.add(stage, True, t0, f"{len(tables)} table(s), row counts as recorded")
            started = True
            bad = steps.commands(commands.run_all("start", cfg.start, timeout=cfg.command_timeout, secrets=sec))
            if bad:
                raise _StepFailed(bad.label, bad.error)
            bad = steps.commands(commands.run_all("smoke", cfg.smoke, timeout=cfg.command_timeout, secrets=sec,
                                                  cwd=plan.root))
            if bad:
                raise _StepFailed(bad.label, bad.error)
        except _StepFailed as e:
            failure = e
        except BaseException as e:  # interrupted (Ctrl-C, a flow cancelled): put back what we can, then re-raise
            failure = _StepFailed(stage, _why(e) or type(e).__name__)
            _put_back_all(settings, repo, copy, steps, live, plan, started=started, tree=tree_touched,
                          db=db_touched)
            raise
        if failure is not None:
            ok = _put_back_all(settings, repo, copy, steps, live, plan, started=started, tree=tree_touched,
                               db=db_touched)
            done = ("the live files and database were put back from the safety copy" if tree_touched or db_touched
                    else "nothing had been changed")
            if ok:
                raise InPlaceFailed(
                    f"in-place restore of {m.id} failed at step '{failure.step}': {failure.cause}; {done} and "
                    "the start commands were run",
                    hint="fix the cause and run the restore again (the report lists every step)",
                    steps=tuple(steps.done))
            raise InPlaceFailed(
                f"in-place restore of {m.id} failed at step '{failure.step}': {failure.cause}; putting the safety "
                f"copy back failed too",
                hint=f"the pre-restore state is in {copy.path}: fix the cause, then `erp-backup restore --put-back "
                f"{copy.path} --yes`",
                steps=tuple(steps.done))
        copy.write("completed")
    return InPlaceReport(m.id.value, tuple(steps.done), str(copy.path), stats["written"], stats["deleted"],
                         stats["tables"], tuple(notes))


def _secrets(settings: Settings) -> tuple[str, ...]:
    """What the commands' output must not show in the report and the artifact: the live database's
    credentials (a smoke check that prints its connection string, a start script that echoes them)."""
    live = settings.live_database()
    return live.secrets() if live is not None else ()


def _why(e: BaseException) -> str:
    if isinstance(e, BackupError):
        return e.message
    if isinstance(e, OSError):
        return f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}"
    return str(e)


def _check_space(repo: LocalRepository, settings: Settings, m: Manifest, diff: Changes, plan: InPlacePlan) -> None:
    need = sum(e.size for e in diff.saved if e.type is EntryType.FILE)
    if plan.database and m.database is not None:
        need += m.database.raw_size  # the live database is about as large as its last dump
    try:
        st = os.statvfs(repo.root)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if need * 1.1 + (64 << 20) > free:
        raise StorageError(f"the safety copy needs about {need >> 20} MiB but {repo.root} has {free >> 20} MiB free",
                           hint="free space in the backup directory (nothing was stopped or changed)")


def _make_copy(copy: safety.SafetyCopy, settings: Settings, live: DatabaseUrl | None,
               plan: InPlacePlan) -> safety.SafetyCopy:
    root = Path(plan.root)
    for e in copy.saved:
        if e.type is EntryType.FILE:
            safety.copy_out(root, e, copy.files_dir)
    info = None
    if plan.database and live is not None:
        adapter = adapter_for(live, timeout=settings.database.timeout_s)
        fd = os.open(copy.dump_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, LocalRepository(settings.storage.local_dir).scratch("safety") as work:
            info = adapter.dump(out.write, work)
            out.flush()
            os.fsync(out.fileno())
    return dataclasses.replace(copy, database=info).write("restoring")


def _delete(root: Path, entries: Iterable[FileEntry]) -> tuple[int, list[str]]:
    """Delete live paths the set does not hold (deepest first, through directory descriptors, never
    following a link). Directories still holding excluded paths stay: (deleted, kept)."""
    target = restorer.SafeTarget(root)
    n, kept = 0, []
    try:
        for e in sorted(entries, key=lambda x: (x.path.count("/"), x.path), reverse=True):
            if _remove(target, e.path):
                n += 1
            else:
                kept.append(e.path)
    finally:
        target.close()
    return n, kept


def _write(repo: LocalRepository, m: Manifest, diff: Changes, root: Path,
           decryptor_for: restorer.DecryptorFor) -> restorer.FilesRestored:
    """Write the set's differing entries (and every directory's metadata) into the live root, as
    recorded (owners when root, set-id bits: it is the original place)."""
    wanted = {e.path for e in diff.write}
    sub = dataclasses.replace(m, files=tuple(e for e in m.files if e.type is EntryType.DIR or e.path in wanted))
    target = restorer.SafeTarget(root)
    try:
        return restorer.restore_files(repo, sub, target, keep_setid=True, decryptor_for=decryptor_for)
    finally:
        target.close()


def _restore_db(repo: LocalRepository, m: Manifest, live: DatabaseUrl, plan: InPlacePlan, rel: str | None,
                decryptor_for: restorer.DecryptorFor) -> dict[str, int]:
    if rel is not None:
        target = restorer.SafeTarget(Path(plan.root))
        try:
            return restorer.restore_database(repo, m, live, replace=True, safe=target, rel=rel,
                                             decryptor_for=decryptor_for)
        finally:
            target.close()
    return restorer.restore_database(repo, m, live, replace=True, decryptor_for=decryptor_for)


# ----------------------------------------------------------------------------- putting the safety copy back


def _put_back_all(settings: Settings, repo: LocalRepository, copy: safety.SafetyCopy, steps: _Steps,
                  live: DatabaseUrl | None, plan: InPlacePlan, *, started: bool, tree: bool, db: bool) -> bool:
    cfg = settings.restore
    sec = _secrets(settings)
    ok = True
    if started:  # the services run on the restored state: stop them before putting the old one back
        steps.commands(commands.run_all("stop (rollback)", cfg.stop, timeout=cfg.command_timeout, secrets=sec,
                                        keep_going=True))
    if tree:
        t0 = time.monotonic()
        try:
            put_back_files(copy)
            steps.add("rollback: put back files", True, t0, f"{len(copy.saved)} path(s) from {copy.path}")
        except (BackupError, OSError) as e:
            ok = False
            steps.add("rollback: put back files", False, t0, _why(e))
    if db and live is not None:
        t0 = time.monotonic()
        try:
            put_back_database(copy, live, repo, timeout=settings.database.timeout_s)
            steps.add("rollback: put back database", True, t0, f"from {copy.dump_path}")
        except (BackupError, OSError) as e:
            ok = False
            steps.add("rollback: put back database", False, t0, _why(e))
    steps.commands(commands.run_all("start (rollback)", cfg.start, timeout=cfg.command_timeout, secrets=sec,
                                    keep_going=True))
    copy.write("rolled-back" if ok else "rollback-failed")
    return ok


def put_back_files(copy: safety.SafetyCopy) -> None:
    """The live tree as it was: what the restore created removed, every saved path written back
    from the copy with its recorded metadata, directories' metadata as recorded."""
    root = Path(copy.root)
    target = restorer.SafeTarget(root)
    try:
        saved = {e.path for e in copy.saved}
        for p in sorted(copy.created, key=lambda x: x.count("/"), reverse=True):
            if p in saved:
                continue
            _remove(target, p)
        for e in sorted(copy.saved, key=lambda x: (x.path.count("/"), x.path)):
            if e.type is EntryType.DIR:
                _remove(target, e.path, "keep")
                target.mkdir(e.path)
            elif e.type is EntryType.SYMLINK:
                _remove(target, e.path, "tree")
                target.symlink(e.path, e.target or "", e)
            else:
                _remove(target, e.path, "tree")
                fd = target.open_file(e.path)
                try:
                    with os.fdopen(safety.open_saved(copy, e.path), "rb") as src:
                        while chunk := src.read(CHUNK):
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view):]
                    restorer._apply_meta_fd(fd, e, e.mode)
                finally:
                    os.close(fd)
        dirs = [e for e in (*copy.saved, *copy.dirs) if e.type is EntryType.DIR]
        for e in sorted(dirs, key=lambda x: x.path.count("/"), reverse=True):
            fd = target.dir_fd(e.path)
            restorer._apply_meta_fd(fd, e, e.mode)
    finally:
        target.close()


def _remove(target: restorer.SafeTarget, rel: str, dirs: str = "empty") -> bool:
    """Remove what is at ``rel`` (never through a link). A directory: ``empty`` removes it only if it is
    empty (False when kept), ``tree`` with its contents, ``keep`` leaves it."""
    parent, _, name = rel.rpartition("/")
    try:
        pfd = target.dir_fd(parent, create=dirs != "empty")
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return True
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=pfd)
    elif dirs == "tree":
        shutil.rmtree(name, dir_fd=pfd)
    elif dirs == "empty":
        try:
            os.rmdir(name, dir_fd=pfd)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False
    return True


def put_back_database(copy: safety.SafetyCopy, live: DatabaseUrl, repo: LocalRepository, *,
                      timeout: float | None = None) -> dict[str, int]:
    if copy.database is None:
        raise RestoreError(f"the safety copy {copy.path} holds no database dump",
                           hint="the dump was not finished before the failure; restore the database from a set")
    adapter = adapter_for(live, timeout=timeout)

    def chunks() -> Iterable[bytes]:
        with open(copy.dump_path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    with repo.scratch("safety") as work:
        counts = adapter.restore(chunks(), copy.database, live, replace=True, workdir=work)
    diff = {t: n for t, n in copy.database.tables.items() if counts.get(t) != n}
    if diff:
        t = next(iter(diff))
        raise RestoreError(f"the database put back from the safety copy differs: {t} has {counts.get(t)} rows, "
                           f"expected {diff[t]}", hint=f"restore it by hand from {copy.dump_path}")
    return counts



# ----------------------------------------------------------------------------- put back by request


def check_put_back(settings: Settings, path: str, *, yes: bool) -> safety.SafetyCopy:
    """``restore --put-back DIR --yes``: a safety copy of this project, complete, to put back."""
    if not yes:
        raise RestoreError("putting a safety copy back overwrites the live project and database",
                           hint="pass --yes to confirm")
    p = Path(path)
    local = settings.storage.local_dir
    if p.parent.resolve() != local.resolve() or not p.name.startswith(safety.PREFIX) or p.is_symlink():
        raise ConfigError(f"{path} is not a safety copy in {local}",
                          hint=f"give one of the {safety.PREFIX}* directories there (`erp-backup status` names them)")
    problem = safety.not_ours(p)
    if problem:
        raise RestoreError(f"{p} is not a safety copy erp-backup made: {problem}",
                           hint="do not put it back; find out who made it (the backup directory is writable by "
                           "someone else?) and remove it")
    try:
        copy = safety.load(p)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # not our record's shape
        raise RestoreError(f"cannot read the safety copy {p}: {e}", hint="put it back by hand (README)") from e
    for saved in copy.saved:  # every saved file readable as what it claims to be, before anything is stopped
        if saved.type is EntryType.FILE:
            try:
                os.close(safety.open_saved(copy, saved.path))
            except OSError as err:
                raise RestoreError(f"the safety copy {p} is incomplete or was changed: {copy.files_dir / saved.path}: "
                                   f"{err.strerror}", hint="put it back by hand (README), or restore a set") from err
    if copy.state == "copying":
        raise RestoreError(f"the safety copy {p} was never finished: the restore that made it changed nothing",
                           hint="nothing to put back; remove it, or let the next backup remove it")
    # the in-place restore records the root as it resolves (a link /srv/app/current is restored where
    # it points): compare the same way
    live_root = os.path.realpath(settings.project.root)
    if os.path.realpath(copy.root) != live_root:
        where = f" (which now resolves to {live_root})" if live_root != os.path.abspath(settings.project.root) else ""
        raise ConfigError(f"the safety copy {p} is of {copy.root}, not of [project] root "
                          f"{settings.project.root}{where}", hint="use the config of that project")
    return copy


def put_back(settings: Settings, copy: safety.SafetyCopy, *, log: Log = print) -> tuple[Step, ...]:
    """Stop commands, the copy's files and database put back, start commands; every step timed.
    Raises ``InPlaceFailed`` naming the first failed step (the start commands run anyway)."""
    cfg = settings.restore
    sec = _secrets(settings)
    steps = _Steps(log)
    repo = LocalRepository(settings.storage.local_dir)
    live = settings.live_database() if copy.database is not None else None
    failed: str | None = None
    with repo.lock(settings.backup.lock_wait_s, purpose="put back a safety copy"):
        bad = steps.commands(commands.run_all("stop", cfg.stop, timeout=cfg.command_timeout, secrets=sec))
        if bad is None:
            # from here the live project is half the copy's until the end: a put-back that fails or is
            # killed must keep the copy (the next backup would remove a `completed` one) and be flagged
            copy = copy.write("putting-back")
            t0 = time.monotonic()
            try:
                put_back_files(copy)
                steps.add("put back files", True, t0, f"{len(copy.saved)} path(s)")
            except (BackupError, OSError) as e:
                steps.add("put back files", False, t0, _why(e))
                failed = failed or f"put back files: {_why(e)}"
            if live is not None and failed is None:
                t0 = time.monotonic()
                try:
                    put_back_database(copy, live, repo, timeout=settings.database.timeout_s)
                    steps.add("put back database", True, t0, live.redacted())
                except (BackupError, OSError) as e:
                    steps.add("put back database", False, t0, _why(e))
                    failed = f"put back database: {_why(e)}"
        else:
            failed = f"{bad.label}: {bad.error}"
        started = steps.commands(commands.run_all("start", cfg.start, timeout=cfg.command_timeout, secrets=sec,
                                                  keep_going=True))
        if failed is None and started is not None:
            failed = f"{started.label}: {started.error}"
        if failed is not None:
            raise InPlaceFailed(f"putting back {copy.path} failed at {failed}",
                                hint="fix the cause and run it again; the safety copy is kept",
                                steps=tuple(steps.done))
        copy.write("put-back")
    return tuple(steps.done)
