"""SQLite: a consistent online copy through SQLite's backup API.

Never a raw ``cp`` of a live file: ``Connection.backup()`` copies pages under
SQLite's own locking (restarting if a writer changes the source meanwhile), so
the copy is a consistent database even while Django writes. The copy is made
in the private scratch directory of the set being built, integrity-checked,
row-counted, then streamed (through the engine's zstd) into the set.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

from erp_backup.adapters.databases.base import Write
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import DatabaseError, RestoreError
from erp_backup.core.models import DatabaseInfo

CHUNK = 1 << 20
MAGIC = b"SQLite format 3\x00"
COMPANIONS = ("-wal", "-shm", "-journal")
SQLITE_DONE = 101


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {n: int(conn.execute(f"SELECT COUNT(*) FROM {_quote(n)}").fetchone()[0]) for n in names}


def integrity(conn: sqlite3.Connection) -> str:
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(r[0]) for r in rows[:5])


class SqliteAdapter:
    engine = "sqlite"
    artifact_name = "db.sqlite.sqlite3.zst"
    counts_consistent = True  # one snapshot for the dump and the counts

    def __init__(self, url: DatabaseUrl, *, busy_timeout_s: float = 60.0, timeout: float | None = None) -> None:
        self.url = url
        self.path = Path(url.name)
        # how long a dump waits for a writer that holds the database locked: the configured
        # [database] timeout_s when given (adapter_for), else busy_timeout_s
        self.busy_timeout_s = timeout if timeout else busy_timeout_s

    def check_available(self) -> None:
        if not self.path.exists():
            raise DatabaseError(f"SQLite database {self.path} does not exist",
                                hint="fix [database] url (sqlite:////absolute/path/db.sqlite3)")
        if not os.access(self.path, os.R_OK):
            raise DatabaseError(f"SQLite database {self.path} is not readable",
                                hint="run the backup as root or grant read access")
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head and head != MAGIC:
            raise DatabaseError(f"{self.path} is not an SQLite database",
                                hint="check [database] url; it must point at the Django db.sqlite3 file")

    def _open_ro(self) -> sqlite3.Connection:
        uri = f"file:{self.path}?mode=ro"
        try:
            return sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s)
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open SQLite database {self.path}: {e}",
                                hint="check the path and permissions") from e

    def dump(self, write: Write, workdir: Path) -> DatabaseInfo:
        copy = workdir / "db.sqlite3.tmp"
        src = self._open_ro()
        try:
            dst = sqlite3.connect(copy)
            try:
                # pages=-1: one step; SQLite restarts the copy if the source changes meanwhile. Python
                # retries a locked source forever (every 250 ms): the deadline ends that
                src.backup(dst, pages=-1, progress=_deadline(self.busy_timeout_s, self.path))
                problem = integrity(dst)
                if problem != "ok":
                    raise DatabaseError(f"SQLite integrity check of the copy failed: {problem}",
                                        hint="the live database is damaged: run PRAGMA integrity_check on it")
                counts = table_counts(dst)
                version = sqlite3.sqlite_version
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        except sqlite3.Error as e:
            if "full" in str(e):
                hint = f"free space in {workdir.parent.parent}: the consistent copy is made there first"
            elif "locked" in str(e) or "busy" in str(e):
                hint = "a writer held the database for too long; run the backup again"
            else:
                hint = "check the database file and the backup directory"
            raise DatabaseError(f"SQLite backup of {self.path} failed: {e}", hint=hint) from e
        finally:
            src.close()
        os.chmod(copy, 0o600)
        size = 0
        try:
            with open(copy, "rb") as f:
                while chunk := f.read(CHUNK):
                    write(chunk)
                    size += len(chunk)
        finally:
            copy.unlink(missing_ok=True)
        return DatabaseInfo(engine="sqlite", database=self.path.name, server_version=version,
                            dump_tool=f"python sqlite3 backup API (SQLite {version})", dump_format="sqlite3",
                            tables=counts, raw_size=size)

    def _materialize(self, chunks: Iterable[bytes], dest: Path) -> None:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())

    def verify_dump(self, chunks: Iterable[bytes], info: DatabaseInfo, workdir: Path) -> list[str]:
        tmp = workdir / "verify.sqlite3.tmp"
        try:
            self._materialize(chunks, tmp)
            with open(tmp, "rb") as f:
                if f.read(16) != MAGIC:
                    return ["database dump is not an SQLite database"]
            conn = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
            try:
                problem = integrity(conn)
                if problem != "ok":
                    return [f"database dump fails integrity_check: {problem}"]
                counts = table_counts(conn)
            finally:
                conn.close()
        except sqlite3.Error as e:
            return [f"database dump unreadable: {e}"]
        finally:
            tmp.unlink(missing_ok=True)
        problems = []
        for table, n in info.tables.items():
            if table not in counts:
                problems.append(f"table {table} missing from the dump")
            elif counts[table] != n:
                problems.append(f"table {table} has {counts[table]} rows, manifest says {n}")
        return problems

    def restore(self, chunks: Iterable[bytes], info: DatabaseInfo, target: DatabaseUrl, *, replace: bool,
                workdir: Path, jobs: int = 1) -> dict[str, int]:
        """Restore into the file the operator named (``--target-database sqlite:///…``): its directory
        is the operator's choice (made if missing); inside it, ``restore_at`` follows no link."""
        dest = Path(os.path.abspath(target.name))
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise RestoreError(f"cannot use directory {dest.parent} for the SQLite database: {e.strerror}",
                               hint="choose another --target-database, in a directory you can write to") from e
        try:
            return self.restore_at(chunks, dir_fd, dest.name, replace=replace, where=str(dest))
        finally:
            os.close(dir_fd)

    def restore_at(self, chunks: Iterable[bytes], dir_fd: int, name: str, *, replace: bool,
                   where: str) -> dict[str, int]:
        """Restore the database as ``name`` in the directory ``dir_fd`` (``where`` names it in messages).

        Every step is relative to ``dir_fd`` and follows no link: the temporary file is new
        (``O_EXCL | O_NOFOLLOW``, a random name), it is checked read-only and immutable (SQLite
        creates no ``-wal``/``-shm``/``-journal`` beside it), the old ``-wal``/``-shm``/``-journal``
        are unlinked (a link is removed, not followed), and the temporary file is renamed over
        ``name`` (a link there is replaced). Returns the per-table row counts."""
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise RestoreError(f"target database {where} is a directory",
                               hint="give the SQLite database a file path (--target-database sqlite:////dir/db.sqlite3)")
        if st is not None and (st.st_size > 0 or stat.S_ISLNK(st.st_mode)) and not replace:
            raise RestoreError(f"target database {where} already exists",
                               hint="choose another --target-database, or pass --force to replace it")
        tmp, fd = _new_temp(dir_fd, name)
        done = False
        try:
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    for c in chunks:
                        f.write(c)
                os.fsync(fd)
            except OSError as e:
                raise RestoreError(f"writing the SQLite database beside {where} failed: {e.strerror}",
                                   hint="free space there, then restore again") from e
            problem, counts = _check_copy(dir_fd, tmp, where)
            if problem != "ok":
                raise RestoreError(f"restored SQLite database fails integrity_check: {problem}",
                                   hint="verify the set; restore from another one")
            if _ino(dir_fd, tmp) != os.fstat(fd).st_ino:
                raise RestoreError(f"the temporary file of {where} was replaced while the restore ran",
                                   hint="make sure nobody else writes to that directory, then restore again")
            for comp in COMPANIONS:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name + comp, dir_fd=dir_fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
            done = True
        finally:
            if not done and _ino(dir_fd, tmp) == os.fstat(fd).st_ino:
                os.unlink(tmp, dir_fd=dir_fd)
            os.close(fd)
        return counts

    def row_counts(self, url: DatabaseUrl) -> dict[str, int]:
        conn = sqlite3.connect(f"file:{url.name}?mode=ro", uri=True)
        try:
            return table_counts(conn)
        finally:
            conn.close()


def _deadline(seconds: float, path: Path) -> Callable[[int, int, int], None]:
    """A ``backup(progress=…)`` callback that stops a copy still blocked (source locked or changing
    under it) after ``seconds``."""
    end = time.monotonic() + seconds

    def progress(status: int, remaining: int, total: int) -> None:
        if status != SQLITE_DONE and time.monotonic() > end:
            raise DatabaseError(f"SQLite database {path} stayed locked (or kept changing under the copy) for "
                                f"{seconds:g} s",
                                hint="find the process that holds it (fuser or lsof on the file) and run the "
                                "backup again, or raise [database] timeout_s")

    return progress


def _ino(dir_fd: int, name: str) -> int | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return None


def _new_temp(dir_fd: int, name: str) -> tuple[str, int]:
    """A new, empty 0600 file ``.<name>.restoring-<random>`` in ``dir_fd``: (name, descriptor)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f".{name}.restoring-{secrets.token_hex(4)}"
        try:
            return tmp, os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise RestoreError(f"cannot create a temporary file beside {name}", hint="clean up the target directory")


def _check_copy(dir_fd: int, tmp: str, where: str) -> tuple[str, dict[str, int]]:
    """integrity_check and row counts of the restored copy, opened read-only and immutable
    through the directory descriptor (/proc/self/fd/N/…): SQLite writes nothing beside it."""
    base = f"/proc/self/fd/{dir_fd}"
    if not os.path.isdir(base):
        base = os.path.dirname(where) or "."
    uri = f"file:{quote(os.path.join(base, tmp))}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            return integrity(conn), table_counts(conn)
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise RestoreError(f"restored SQLite database {where} is unreadable: {e}",
                           hint="verify the set; restore from another one") from e
