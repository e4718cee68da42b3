"""MySQL / MariaDB: ``mariadb-dump`` (or ``mysqldump``) SQL text; the engine compresses with zstd.

The dump is taken with ``--single-transaction --quick --routines --triggers
--events --hex-blob`` and *without* ``--databases``, so it restores into any
database name: ``zstd -d < db.mysql.sql.zst | mariadb --database=<new db>``.

Consistent row counts
---------------------
``--single-transaction`` gives the dump an InnoDB consistent snapshot taken on
mariadb-dump's own connection; MySQL/MariaDB cannot share a snapshot between
connections (no ``pg_export_snapshot``). To count rows in *the same* snapshot we
make sure no transaction commits between our snapshot and mariadb-dump's, the
way backup tools such as mydumper do:

1. connection L: ``FLUSH TABLES WITH READ LOCK`` (FTWRL) — waits for running
   commits, then blocks new commits and DDL (reads go on);
2. connection S: ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` (our counts);
3. start mariadb-dump; with ``--single-transaction`` (and no ``--master-data``)
   it does not lock anything itself: it connects and runs
   ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` before writing any table;
4. L: ``UNLOCK TABLES`` as soon as the dump output shows a section written
   after that statement ("-- Table structure for table", "-- Dumping routines"…,
   or the end of the dump). Output only reaches us after mariadb-dump wrote it,
   so its snapshot exists by then;
5. S counts ``COUNT(*)`` of every base table in a thread while the dump streams.

Writes are blocked only from step 1 to step 4 (normally well under a second; for
a tiny database the whole dump; never more than ``MAX_LOCK_SECONDS``: past that
the lock is released and the counts are marked best effort). FTWRL needs the RELOAD privilege and waits for
long-running statements: we give it ``lock_wait_timeout`` seconds. When it cannot
be taken (no RELOAD, or a long query in the way) the dump still goes on — the
dump itself is always consistent — but the counts come from a snapshot taken
just before mariadb-dump's: under concurrent writes they may differ slightly.
A warning is logged and ``counts_consistent`` is set to False.

Only InnoDB (transactional) tables are consistent; MyISAM tables are not under
``--single-transaction``, whatever we do.

Credentials go through a 0600 ``--defaults-extra-file`` (always the first
argument) in the private workdir or a private temp dir, deleted afterwards.

MariaDB >= 10.5.25/10.6.18/10.11.8 dumps start with ``/*M!999999\\- enable the
sandbox mode */``; MySQL's client rejects that line ("Unknown command '\\-'").
On restore we drop it while streaming when the target server or the client is
not MariaDB; MariaDB clients keep it (it forbids shell/file commands in the dump).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql
import pymysql.err

from erp_backup.adapters import proc
from erp_backup.adapters.databases.base import Write
from erp_backup.adapters.databases.common import (
    Background,
    connect_timeout,
    log,
    one_line,
    reraise_background,
)
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import ConfigError, DatabaseError, RestoreError, ToolMissingError
from erp_backup.core.models import DatabaseInfo

DUMP_FORMAT = "sql"
DUMP_BINARIES = ("mariadb-dump", "mysqldump")
CLIENT_BINARIES = ("mariadb", "mysql")
LOCK_WAIT_TIMEOUT = 10  # seconds FTWRL may wait for running statements
MAX_LOCK_SECONDS = 30  # never block writers longer than this, even without a sign of the dump's snapshot
SANDBOX_LINE = b"/*M!999999\\- enable the sandbox mode */"
TRAILER = b"-- Dump completed"

# sections mariadb-dump writes only after START TRANSACTION WITH CONSISTENT SNAPSHOT
_AFTER_SNAPSHOT = (
    b"\n-- Table structure for table",
    b"\n-- Temporary table structure for view",
    b"\n-- Dumping data for table",
    b"\n-- Dumping events for database",
    b"\n-- Dumping routines for database",
    b"\n-- Final view structure",
    b"\n" + TRAILER,
)
_MARKER_CARRY = max(len(m) for m in _AFTER_SNAPSHOT)
_CREATE_TABLE = re.compile(rb"CREATE TABLE `((?:[^`]|``){1,256})`")
_CREATE_CARRY = 1100

_TABLES_SQL = ("SELECT TABLE_NAME FROM information_schema.TABLES "
               "WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME")

# PyMySQL error codes
ER_ACCESS_DENIED = 1045
ER_DBACCESS_DENIED = 1044
ER_BAD_DB = 1049
ER_TABLEACCESS_DENIED = 1142
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_LOCK_WAIT_TIMEOUT = 1205
CR_CONN_HOST_ERROR = 2003
CR_UNKNOWN_HOST = 2005
CR_SERVER_LOST = 2013


class MysqlAdapter:
    engine = "mysql"
    artifact_name = "db.mysql.sql.zst"

    def __init__(self, url: DatabaseUrl, *, timeout: float | None = None) -> None:
        if url.engine != "mysql":
            raise ConfigError(f"MysqlAdapter got a {url.engine} URL", hint="use adapter_for(url)")
        if "\n" in url.password or "\r" in url.password:
            raise ConfigError("the MySQL password contains a line break",
                              hint="MySQL option files cannot hold it: change the password")
        self.url = url
        self.timeout = timeout
        self.counts_consistent = True  # False after a dump whose counts are best effort (no FTWRL)

    # ---- checks -------------------------------------------------------------------------------

    def check_available(self) -> None:
        _binary(DUMP_BINARIES)
        _binary(CLIENT_BINARIES)
        with _connect(self.url, self.timeout, database=self.url.name) as conn:
            _check_readable(conn, self.url)

    # ---- dump ---------------------------------------------------------------------------------

    def dump(self, write: Write, workdir: Path) -> DatabaseInfo:
        dump_bin = _binary(DUMP_BINARIES)
        tool = _version(dump_bin)
        with _defaults_file(self.url, workdir) as cnf, \
                _connect(self.url, self.timeout, database=self.url.name) as snap, \
                _connect(self.url, self.timeout, database=self.url.name) as lock:
            server_version = _scalar(snap, "SELECT VERSION()")
            tables = [r[0] for r in _rows(snap, _TABLES_SQL, (self.url.name,))]
            locked = self._global_read_lock(lock)
            self.counts_consistent = locked
            _execute(snap, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _execute(snap, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
            counter = Background(lambda: _count(snap, tables, self.url), name="mysql-row-counts")
            watch = _SnapshotWatch(lambda: _unlock(lock) if locked else None)
            valve = threading.Timer(MAX_LOCK_SECONDS, self._lock_held_too_long, args=(watch,))
            valve.daemon = True
            valve.start()

            def guarded(chunk: bytes) -> None:
                watch.feed(chunk)
                reraise_background(counter)
                write(chunk)

            argv = [dump_bin, f"--defaults-extra-file={cnf}", "--single-transaction", "--quick",
                    "--routines", "--triggers", "--events", "--hex-blob", "--default-character-set=utf8mb4",
                    "--max-allowed-packet=1G", "--", self.url.name]
            try:
                result = self._stream_dump(argv, guarded, dump_bin)
            except BaseException:
                valve.cancel()
                watch.release()
                if not counter.done():
                    _kill_query(self.url, self.timeout, snap)
                    counter.join(10)
                raise
            valve.cancel()
            watch.release()
            counts = counter.result()
        return DatabaseInfo(engine=self.engine, database=self.url.name, server_version=server_version,
                            dump_tool=tool, dump_format=DUMP_FORMAT, tables=counts, raw_size=result.bytes_out)

    def _stream_dump(self, argv: list[str], write: Write, dump_bin: str) -> proc.ProcResult:
        name = os.path.basename(dump_bin)
        try:
            return proc.stream_out(argv, write, secrets=_secrets(self.url), timeout=self.timeout, what=name)
        except proc.ProcError as e:
            raise DatabaseError(f"{name} of database '{self.url.name}' failed: {_cause(e, self.url)}",
                                hint=_dump_hint(e.stderr_tail, self.url)) from e

    def _lock_held_too_long(self, watch: _SnapshotWatch) -> None:
        if watch.release():
            self.counts_consistent = False
            log.warning("no sign of the dump's snapshot after %d s: released the global read lock so "
                        "writes go on; the row counts of this dump are best effort", MAX_LOCK_SECONDS)

    def _global_read_lock(self, lock: pymysql.connections.Connection) -> bool:
        try:
            _execute(lock, f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")
            _execute(lock, "FLUSH TABLES WITH READ LOCK")
            return True
        except pymysql.err.MySQLError as e:
            log.warning("FLUSH TABLES WITH READ LOCK failed (%s): the row counts of this dump are taken "
                        "just before the dump's snapshot and may differ under concurrent writes; grant "
                        "RELOAD to the backup user for exact counts", one_line(str(e), _secrets(self.url)))
            return False

    # ---- verify -------------------------------------------------------------------------------

    def verify_dump(self, chunks: Iterable[bytes], info: DatabaseInfo, workdir: Path) -> list[str]:
        found: set[str] = set()
        carry = b""
        tail = b""
        size = 0
        for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            buf = carry + chunk
            for m in _CREATE_TABLE.finditer(buf):
                found.add(m.group(1).replace(b"``", b"`").decode("utf-8", "replace"))
            carry = buf[-_CREATE_CARRY:]
            tail = (tail + chunk)[-512:]
        if size == 0:
            return ["the dump is empty"]
        problems: list[str] = []
        last = tail.rstrip().rsplit(b"\n", 1)[-1]
        if not last.startswith(TRAILER):
            problems.append("the dump does not end with the '-- Dump completed' trailer: it is truncated "
                            "or the dump tool did not finish")
        for table in sorted(info.tables):
            if table not in found:
                problems.append(f"table `{table}` recorded in the manifest has no CREATE TABLE in the dump")
        return problems

    # ---- restore ------------------------------------------------------------------------------

    def restore(self, chunks: Iterable[bytes], info: DatabaseInfo, target: DatabaseUrl, *,
                replace: bool, workdir: Path, jobs: int = 1) -> dict[str, int]:
        if target.engine != "mysql":
            raise RestoreError(f"cannot restore a MySQL dump into a {target.engine} database",
                               hint="give a mysql:// target URL")
        client = _binary(CLIENT_BINARIES)
        server_version = _prepare_target(target, replace=replace, timeout=self.timeout)
        strip = "mariadb" not in server_version.lower() or "mariadb" not in _version(client).lower()
        stream = _strip_sandbox(chunks) if strip else chunks
        with _defaults_file(target, workdir) as cnf:
            argv = [client, f"--defaults-extra-file={cnf}", "--batch", "--skip-force",
                    "--max-allowed-packet=1G", f"--database={target.name}"]
            try:
                proc.stream_in(argv, stream, secrets=_secrets(target), timeout=self.timeout,
                               what=os.path.basename(client))
            except proc.ProcError as e:
                raise RestoreError(f"restore into database '{target.name}' failed: {_cause(e, target)}",
                                   hint="the database is left partly restored: fix the cause, then restore "
                                   "again with --force") from e
        return self.row_counts(target)

    # ---- row counts ---------------------------------------------------------------------------

    def row_counts(self, url: DatabaseUrl) -> dict[str, int]:
        with _connect(url, self.timeout, database=url.name) as conn:
            tables = [r[0] for r in _rows(conn, _TABLES_SQL, (url.name,))]
            _execute(conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _execute(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
            counts = _count(conn, tables, url)
            _execute(conn, "ROLLBACK")
            return counts


# ---- snapshot hand-over ----------------------------------------------------------------------------


class _SnapshotWatch:
    """Calls ``release`` once the dump output shows mariadb-dump's snapshot is taken (thread-safe:
    the safety timer may call ``release`` too)."""

    def __init__(self, release: Callable[[], object]) -> None:
        self._release = release
        self._carry = b""
        self._released = False
        self._mutex = threading.Lock()

    def feed(self, chunk: bytes) -> None:
        if self._released:
            return
        buf = self._carry + chunk
        if any(m in buf for m in _AFTER_SNAPSHOT):
            self.release()
        else:
            self._carry = buf[-_MARKER_CARRY:]

    def release(self) -> bool:
        """Release once; True if this call did it."""
        with self._mutex:
            if self._released:
                return False
            self._released = True
            self._release()
            return True


# ---- connections ----------------------------------------------------------------------------------


def _socket(url: DatabaseUrl) -> str | None:
    opts = dict(url.options)
    return opts.get("unix_socket") or opts.get("socket")


def _open(url: DatabaseUrl, timeout: float | None, database: str | None) -> pymysql.connections.Connection:
    kwargs: dict[str, object] = {
        "user": url.user or None,
        "password": url.password.encode("utf-8"),  # as the CLI clients send it (PyMySQL: latin-1)
        "database": database,
        "connect_timeout": connect_timeout(timeout),
        "charset": "utf8mb4",
        "autocommit": True,
    }
    sock = _socket(url)
    if sock:
        kwargs["unix_socket"] = sock
    else:
        kwargs["host"] = url.host or "localhost"
        kwargs["port"] = url.port or 3306
    try:
        return pymysql.connect(**kwargs)
    except pymysql.err.MySQLError as e:
        raise _connect_error(e, url, database) from None


@contextmanager
def _connect(url: DatabaseUrl, timeout: float | None, database: str | None
             ) -> Iterator[pymysql.connections.Connection]:
    conn = _open(url, timeout, database)
    try:
        yield conn
    finally:
        try:
            conn.close()
        except pymysql.err.Error:
            pass


def _where(url: DatabaseUrl) -> str:
    return _socket(url) or f"{url.host or 'localhost'}:{url.port or 3306}"


def _code(e: BaseException) -> int | None:
    args = getattr(e, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _connect_error(e: pymysql.err.MySQLError, url: DatabaseUrl, database: str | None) -> DatabaseError:
    code = _code(e)
    cause = one_line(str(e.args[1]) if len(e.args) > 1 else str(e), _secrets(url))
    user = url.user or "(default user)"
    if code == ER_BAD_DB:
        return DatabaseError(f"MySQL database '{database}' does not exist on {_where(url)}",
                             hint="create it or fix the database name in the URL")
    if code == ER_ACCESS_DENIED:
        return DatabaseError(f"MySQL at {_where(url)} refused the login of user '{user}' (wrong password or "
                             "unknown user)",
                             hint="check the user and password of the database connection (block or URL)")
    if code == ER_DBACCESS_DENIED:
        return DatabaseError(f"MySQL user '{user}' has no access to database '{database}'",
                             hint=f"GRANT the backup privileges on `{database}`.* to '{user}'")
    if code in (CR_CONN_HOST_ERROR, CR_UNKNOWN_HOST, CR_SERVER_LOST):
        return DatabaseError(f"MySQL at {_where(url)} is not reachable: {cause}",
                             hint="start the server or fix host/port in the database URL")
    return DatabaseError(f"cannot connect to MySQL at {_where(url)}: {cause}",
                         hint="check the database URL and that the server accepts connections")


def _execute(conn: pymysql.connections.Connection, query: str,
             args: tuple[object, ...] | None = None) -> None:
    with conn.cursor() as cur:
        cur.execute(query, args)


def _rows(conn: pymysql.connections.Connection, query: str,
          args: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, args)
        return list(cur.fetchall())


def _scalar(conn: pymysql.connections.Connection, query: str, args: tuple[object, ...] | None = None) -> str:
    return str(_rows(conn, query, args)[0][0])


def _unlock(conn: pymysql.connections.Connection) -> None:
    try:
        _execute(conn, "UNLOCK TABLES")
    except pymysql.err.MySQLError as e:  # closing the connection releases the lock anyway
        log.warning("UNLOCK TABLES failed: %s", one_line(str(e)))


def _kill_query(url: DatabaseUrl, timeout: float | None, conn: pymysql.connections.Connection) -> None:
    """Stop a COUNT still running on ``conn`` (the dump failed): KILL QUERY from a new connection."""
    try:
        with _connect(url, timeout, database=None) as killer:
            _execute(killer, f"KILL QUERY {int(conn.thread_id())}")
    except (DatabaseError, pymysql.err.MySQLError) as e:
        log.warning("could not stop the row count query: %s", e)


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _secrets(url: DatabaseUrl) -> tuple[str, ...]:
    return (url.password,) if url.password else ()


# ---- binaries and option file --------------------------------------------------------------------


def _binary(names: tuple[str, ...]) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ToolMissingError(f"neither '{names[0]}' nor '{names[1]}' is installed or on PATH",
                           hint="install it (Debian: apt-get install mariadb-client) or set PATH")


def _version(binary: str) -> str:
    out = proc.run([binary, "--version"], timeout=30, what=f"{os.path.basename(binary)} --version").stdout
    return out.decode("utf-8", "replace").strip()


def _option_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _option_text(url: DatabaseUrl) -> str:
    lines = ["[client]"]
    if url.user:
        lines.append(f"user={_option_value(url.user)}")
    if url.password:
        lines.append(f"password={_option_value(url.password)}")
    sock = _socket(url)
    if sock:
        lines.append(f"socket={_option_value(sock)}")
        lines.append("protocol=SOCKET")
    else:
        # TCP like PyMySQL: "localhost" must not silently switch to the unix socket (other auth rules)
        lines.append(f"host={_option_value(url.host or 'localhost')}")
        lines.append(f"port={url.port or 3306}")
        lines.append("protocol=TCP")
    return "\n".join(lines) + "\n"


@contextmanager
def _defaults_file(url: DatabaseUrl, directory: Path | None) -> Iterator[Path]:
    """A 0600 option file with the credentials, in ``directory`` (or a private temp dir)."""
    private: str | None = None
    if directory is None or not Path(directory).is_dir():
        private = tempfile.mkdtemp(prefix="erp-backup-")
        directory = Path(private)
    fd, path = tempfile.mkstemp(prefix=".mysql-", suffix=".cnf", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_option_text(url))
        yield Path(path)
    finally:
        Path(path).unlink(missing_ok=True)
        if private:
            shutil.rmtree(private, ignore_errors=True)


# ---- checks and counts ---------------------------------------------------------------------------


def _check_readable(conn: pymysql.connections.Connection, url: DatabaseUrl) -> None:
    """Every base table must be readable (``SELECT … LIMIT 0`` per table: cheap)."""
    for (table,) in _rows(conn, _TABLES_SQL, (url.name,)):
        try:
            _execute(conn, f"SELECT 1 FROM {quote(str(table))} LIMIT 0")
        except pymysql.err.MySQLError as e:
            raise _table_error(e, str(table), url) from None


def _table_error(e: pymysql.err.MySQLError, table: str, url: DatabaseUrl) -> DatabaseError:
    user = url.user or "the backup user"
    if _code(e) == ER_TABLEACCESS_DENIED:
        return DatabaseError(f"user '{user}' cannot read table `{table}` (permission denied)",
                             hint=f"GRANT SELECT ON `{url.name}`.* TO '{user}' (plus SHOW VIEW, TRIGGER, "
                             "EVENT and RELOAD for a complete, consistent dump)")
    return DatabaseError(f"reading table `{table}` failed: {one_line(str(e), _secrets(url))}",
                         hint="look at the MySQL server log; if the table changed during the backup, "
                         "run it again")


def _count(conn: pymysql.connections.Connection, tables: list[object], url: DatabaseUrl) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in tables:
        name = str(table)
        try:
            counts[name] = int(_scalar(conn, f"SELECT COUNT(*) FROM {quote(name)}"))
        except pymysql.err.MySQLError as e:
            raise _table_error(e, name, url) from None
    return counts


def _dump_hint(stderr: str, url: DatabaseUrl) -> str:
    low = stderr.lower()
    user = url.user or "the backup user"
    if "denied" in low:
        return (f"grant '{user}' SELECT, SHOW VIEW, TRIGGER, EVENT (and RELOAD, PROCESS) on `{url.name}` "
                "so that every table, view, trigger, routine and event can be dumped")
    return "look at the MySQL server log for the cause and run the backup again"


def _cause(e: proc.ProcError, url: DatabaseUrl) -> str:
    """The client's last error message (it may span lines: the quoted SQL near the error)."""
    lines = [ln for ln in e.stderr_tail.splitlines() if ln.strip() and not ln.startswith("Warning")]
    starts = [i for i, ln in enumerate(lines)
              if ln.startswith(("ERROR", "mariadb-dump:", "mysqldump:", "mariadb:", "mysql:"))]
    text = "\n".join(lines[starts[-1]:]) if starts else (lines[-1] if lines else f"exit status {e.returncode}")
    return one_line(text, _secrets(url))


# ---- restore target ------------------------------------------------------------------------------


def _prepare_target(target: DatabaseUrl, *, replace: bool, timeout: float | None) -> str:
    """Create ``target`` unless it exists empty; refuse a non-empty one unless ``replace``.
    Returns the server version."""
    with _connect(target, timeout, database=None) as conn:
        version = _scalar(conn, "SELECT VERSION()")
        exists = bool(_rows(conn, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                            (target.name,)))
        try:
            if exists:
                objects = int(_scalar(conn, "SELECT COUNT(*) FROM information_schema.TABLES "
                                            "WHERE TABLE_SCHEMA = %s", (target.name,)))
                if objects and not replace:
                    raise RestoreError(
                        f"target database '{target.name}' already exists and holds {objects} "
                        "table(s)/view(s)",
                        hint="restore into a new database name, or pass --force to drop and recreate it")
                if not objects:
                    return version
                log.warning("dropping database %s to replace it", target.name)
                _execute(conn, f"DROP DATABASE {quote(target.name)}")
            _execute(conn, f"CREATE DATABASE {quote(target.name)}")
        except pymysql.err.MySQLError as e:
            raise RestoreError(f"cannot create target database '{target.name}': "
                               f"{one_line(str(e), _secrets(target))}",
                               hint="the restore user needs CREATE and DROP privileges") from e
    return version


def _strip_sandbox(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Drop MariaDB's first line ``/*M!999999\\- enable the sandbox mode */`` (MySQL clients reject it)."""
    head = b""
    it = iter(chunks)
    for chunk in it:
        head += chunk
        if b"\n" in head or len(head) > 4096:
            break
    if head.startswith(SANDBOX_LINE):
        head = head.split(b"\n", 1)[1] if b"\n" in head else b""
    if head:
        yield head
    yield from it
