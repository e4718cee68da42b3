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

Credentials: mariadb-dump reads them from ``--defaults-extra-file=/dev/fd/N`` (always the
first argument), an anonymous in-memory file (memfd, 0600) inherited by the child only: never
argv, never the environment, never a named file that a crash could leave behind. PyMySQL gets
the password as a keyword argument.

Restore never feeds the dump to a ``mariadb``/``mysql`` client: a client runs the client commands
a crafted dump holds (``\\!`` shell escapes, ``source``, ``tee``…) even with ``--batch``, and
MariaDB's ``/*M!999999\\- enable the sandbox mode */`` line only protects an honest dump. The
statements are split while streaming (``mysql_script``: quotes, comments, ``DELIMITER`` for
triggers and routines, the session's ``NO_BACKSLASH_ESCAPES``/``ANSI_QUOTES``) and executed
through our own server connection (``LOAD DATA LOCAL`` off, one statement per query); a dump
holding a client command is refused at that statement, and by the verification. That connection
logs in as a temporary account with the rights of the target database only, and ``DEFINER``
clauses become ``CURRENT_ROLE``, the database's owner role (``mysql_confine``). By hand, a
trusted dump still restores with ``zstd -d < db.mysql.sql.zst | mariadb --sandbox
--database=<new db>``.

Table data loads in parallel (``_ParallelLoader``, default DEFAULT_RESTORE_SESSIONS data sessions,
``restore --jobs N`` or ``$ERP_BACKUP_MYSQL_RESTORE_JOBS``; 1: serial): the checked statement
stream is cut into mariadb-dump's per-table sections (``mysql_sections``); each table's data runs on
a data session that first replays the dump's session settings, everything else on one control
session in dump order, behind a barrier where the statement is not table-local. Every session logs
in as the same confined account and runs the same checked, rewritten statements.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql
import pymysql.cursors
import pymysql.err
from pymysql.constants import SERVER_STATUS

from erp_backup.adapters import proc
from erp_backup.adapters.databases.base import Write
from erp_backup.adapters.databases.common import (
    Background,
    connect_timeout,
    log,
    one_line,
    reraise_background,
    secret_fd,
)
from erp_backup.adapters.databases.mysql_confine import confined_login
from erp_backup.adapters.databases.mysql_script import (
    UNSAFE_CHARSETS,
    CharsetGuard,
    DumpRejected,
    SessionModeTracker,
    Statement,
    StatementSplitter,
    check_confined,
    confine_definers,
    splitter_statements,
)
from erp_backup.adapters.databases.mysql_sections import Kind, SectionPlanner, table_key
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import BackupError, ConfigError, DatabaseError, RestoreError, ToolMissingError
from erp_backup.core.models import DatabaseInfo

DUMP_FORMAT = "sql"
DUMP_BINARIES = ("mariadb-dump", "mysqldump")
LOCK_WAIT_TIMEOUT = 10  # seconds FTWRL may wait for running statements
MAX_LOCK_SECONDS = 30  # never block writers longer than this, even without a sign of the dump's snapshot
SERVER_STATUS_ANSI_QUOTES = 1 << 15  # MariaDB only
MAX_PACKET = 1 << 30  # as --max-allowed-packet=1G of the dump
TRAILER = b"-- Dump completed"
RESTORE_JOBS_ENV = "ERP_BACKUP_MYSQL_RESTORE_JOBS"
DEFAULT_RESTORE_SESSIONS = 2  # data sessions of a restore (this machine has 2 cores); 1: the serial restore

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
ER_COLUMNACCESS_DENIED = 1143
ER_PROCACCESS_DENIED = 1370
_DENIED = (ER_DBACCESS_DENIED, ER_TABLEACCESS_DENIED, ER_SPECIFIC_ACCESS_DENIED, ER_COLUMNACCESS_DENIED,
           ER_PROCACCESS_DENIED)


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
        with _connect(self.url, self.timeout, database=self.url.name) as conn:
            _check_readable(conn, self.url)

    # ---- dump ---------------------------------------------------------------------------------

    def dump(self, write: Write, workdir: Path) -> DatabaseInfo:
        dump_bin = _binary(DUMP_BINARIES)
        tool = _version(dump_bin)
        with secret_fd(_option_text(self.url).encode("utf-8")) as cnf_fd, \
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

            argv = [dump_bin, f"--defaults-extra-file=/dev/fd/{cnf_fd}", "--single-transaction", "--quick",
                    "--routines", "--triggers", "--events", "--hex-blob", "--default-character-set=utf8mb4",
                    "--max-allowed-packet=1G", "--", self.url.name]
            try:
                result = self._stream_dump(argv, guarded, dump_bin, cnf_fd)
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

    def _stream_dump(self, argv: list[str], write: Write, dump_bin: str, cnf_fd: int) -> proc.ProcResult:
        name = os.path.basename(dump_bin)
        try:
            return proc.stream_out(argv, write, secrets=_secrets(self.url), timeout=self.timeout, what=name,
                                   pass_fds=(cnf_fd,))
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
        problems: list[str] = []
        # read as a client would (its SQL mode followed through the dump's SET statements): a client
        # command anywhere makes the dump unsafe to restore by hand, whatever else is right with it
        splitter: StatementSplitter | None = StatementSplitter()
        tracker = SessionModeTracker()
        charset = CharsetGuard()
        for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            buf = carry + chunk
            for m in _CREATE_TABLE.finditer(buf):
                found.add(m.group(1).replace(b"``", b"`").decode("utf-8", "replace"))
            carry = buf[-_CREATE_CARRY:]
            tail = (tail + chunk)[-512:]
            if splitter is not None:
                splitter = _scan(splitter, tracker, chunk, problems, charset)
        if size == 0:
            return ["the dump is empty"]
        if splitter is not None:
            _scan(splitter, tracker, None, problems, charset)
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
        sessions = restore_sessions(jobs)  # a wrong setting fails before the target is touched
        # the dump runs as a temporary account with the rights of the target database only
        with _connect(target, self.timeout, database=None) as admin, confined_login(admin, target) as login:
            _prepare_target(target, replace=replace, timeout=self.timeout)
            with _connect(login.url, self.timeout, database=target.name, restore=True) as conn:
                if sessions <= 1:
                    _execute_dump(conn, chunks, target, self.timeout, definer=login.definer)
                else:
                    _ParallelLoader(conn, login.url, target, self.timeout, login.definer, sessions,
                                    workdir).run(chunks)
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


def _open(url: DatabaseUrl, timeout: float | None, database: str | None,
          restore: bool = False) -> pymysql.connections.Connection:
    kwargs: dict[str, object] = {
        "user": url.user or None,
        "password": url.password.encode("utf-8"),  # as the CLI clients send it (PyMySQL: latin-1)
        "database": database,
        "connect_timeout": connect_timeout(timeout),
        "charset": "utf8mb4",
        "autocommit": True,
        "local_infile": False,  # a dump's LOAD DATA LOCAL INFILE must not read our files
        # a connection that waits (the lock-holding admin session, a data session while one big table
        # loads elsewhere) must outlive the server's wait_timeout (often 60-600 s): a review had idle
        # sessions "gone away" and the account's lock released under a running restore
        "init_command": "SET SESSION wait_timeout = 604800",
    }
    if restore:  # statements of a dump: as large as the dump tool's packets; one statement per query
        kwargs["max_allowed_packet"] = MAX_PACKET
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
def _connect(url: DatabaseUrl, timeout: float | None, database: str | None, restore: bool = False
             ) -> Iterator[pymysql.connections.Connection]:
    conn = _open(url, timeout, database, restore)
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
    args: tuple[object, ...] = getattr(e, "args", ())
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
    return url.secrets()


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


# ---- restore: the dump's statements through our own connection -------------------------------------


def _session_mode(conn: pymysql.connections.Connection) -> dict[str, bool]:
    status = int(conn.server_status or 0)
    return {"no_backslash_escapes": bool(status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES),
            "ansi_quotes": bool(status & SERVER_STATUS_ANSI_QUOTES)}


def _execute_dump(conn: pymysql.connections.Connection, chunks: Iterable[bytes], target: DatabaseUrl,
                  timeout: float | None, definer: bytes = b"CURRENT_USER") -> None:
    """Execute every statement of the dump in order, stopping at the first error. The splitter reads
    strings with the session's SQL mode as the server reports it after each statement, as the
    clients do; it never yields a client command (DumpRejected)."""
    splitter = StatementSplitter()
    splitter.set_mode(**_session_mode(conn))
    charset = CharsetGuard()
    deadline = time.monotonic() + timeout if timeout else None
    try:
        for st in splitter_statements(splitter, chunks):
            if deadline is not None and time.monotonic() > deadline:
                raise RestoreError(f"restore into database '{target.name}' timed out at line {st.line} of "
                                   "the dump", hint="raise the timeout in the config or look at why the server "
                                   "is slow; the database is left partly restored")
            check_confined(st)  # a first line; the account it runs as can reach nothing else anyway
            charset.check(st)  # the splitter reads what the server reads: no charset that can hide a quote
            _run_statement(conn, st, confine_definers(st.sql, definer, nbe=st.nbe, ansi=st.ansi), target)
            splitter.set_mode(**_session_mode(conn))
    except DumpRejected as e:
        raise _rejected(e, target) from None


def _rejected(e: DumpRejected, target: DatabaseUrl) -> RestoreError:
    return RestoreError(f"refusing to restore the rest of the dump into database '{target.name}': it holds "
                        f"{e.problem} at line {e.line}, which no dump tool writes",
                        hint="the backup set is damaged or was tampered with: the statements before "
                        "it ran, nothing from it on; restore from another set (the database is left "
                        "partly restored)")


def _run_statement(conn: pymysql.connections.Connection, st: Statement, sql: bytes, target: DatabaseUrl,
                   table: str | None = None) -> None:
    """Execute one checked statement (``sql``: its DEFINER clauses confined); RestoreError on an error
    (naming ``table``, the data section it belongs to), DumpRejected on an unsafe character set."""
    try:
        with conn.cursor(pymysql.cursors.SSCursor) as cur:  # unbuffered: results are drained, not kept
            cur.execute(sql)
            if _SET_STATEMENT.match(st.sql):  # the server's word, whatever the guard made of it
                cur.execute("SELECT @@SESSION.character_set_client")
                now = str((cur.fetchone() or ("",))[0]).lower()
                if now in UNSAFE_CHARSETS:
                    raise DumpRejected(f"a change of the client character set to {now} (statements "
                                       "cannot be split safely in it)", st.line)
    except (pymysql.err.Error, RuntimeError) as e:
        where = f" (data of table `{table}`)" if table is not None else ""
        raise RestoreError(f"restore into database '{target.name}' failed: {_statement_error(e, st.line)}{where}",
                           hint=_restore_hint(e)) from None


MAX_RESTORE_SESSIONS = 16


def restore_sessions(jobs: int) -> int:
    """How many sessions load table data: ``jobs`` when more than 1 (``restore --jobs N``), else
    ``$ERP_BACKUP_MYSQL_RESTORE_JOBS``, else DEFAULT_RESTORE_SESSIONS; 1 is the serial restore."""
    if jobs > 1:
        if jobs > MAX_RESTORE_SESSIONS:
            raise ConfigError(f"--jobs {jobs}: at most {MAX_RESTORE_SESSIONS} sessions load a MySQL/MariaDB "
                              "database", hint="2 fits a small server; each session is a connection")
        return jobs
    raw = os.environ.get(RESTORE_JOBS_ENV, "").strip()
    if not raw:
        return DEFAULT_RESTORE_SESSIONS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_RESTORE_SESSIONS:
        raise ConfigError(f"{RESTORE_JOBS_ENV}={raw!r}: must be a whole number from 1 to {MAX_RESTORE_SESSIONS}",
                          hint="e.g. 2 (parallel data sessions) or 1 (serial restore)")
    return n


# ---- restore: table data in parallel sessions ---------------------------------------------------


class _Spool:
    """One data section's statements, from the reader of the dump (which never waits for it) to its
    session (which follows): an unlinked file in the restore's scratch directory, records
    ``line, length, sql``. Memory: one statement at a time on each side."""

    _HEAD = struct.Struct("<QQ")

    def __init__(self, workdir: Path, cond: threading.Condition) -> None:
        fd, path = tempfile.mkstemp(prefix="mysql-section-", dir=workdir)
        os.unlink(path)
        self.fd = fd
        self.cond = cond
        self.size = 0  # bytes written (guarded by cond)
        self.closed = False  # no more records will come
        self.reader_done = False  # its session will not read it any more
        self.pos = 0  # reader's offset

    def append(self, st: Statement, sql: bytes) -> None:
        data = self._HEAD.pack(st.line, len(sql)) + sql
        view = memoryview(data)
        at = self.size
        while view:
            k = os.pwrite(self.fd, view, at)
            view, at = view[k:], at + k
        with self.cond:
            self.size = at
            self.cond.notify_all()

    def close(self) -> None:
        """The writer's end: no more records. The file goes once both sides are done with it (a
        session that stopped early must not close it under the reader of the dump, which may
        still be appending: a review saw EBADF replace the real error)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            if self.reader_done:
                self.dispose()

    def reader_finished(self) -> None:
        with self.cond:
            self.reader_done = True
            if self.closed:
                self.dispose()

    def read(self, stopped: Callable[[], bool]) -> tuple[Statement, bytes] | None:
        """The next statement; None at the end (or once ``stopped``)."""
        with self.cond:
            while self.pos >= self.size and not self.closed and not stopped():
                self.cond.wait(0.5)
            if self.pos >= self.size or stopped():
                return None
        line, n = self._HEAD.unpack(self._pread(self._HEAD.size))
        sql = self._pread(n)
        return Statement(sql, line), sql

    def _pread(self, n: int) -> bytes:
        parts = []
        while n:
            b = os.pread(self.fd, n, self.pos)
            if not b:
                raise RestoreError("a spooled data section of the restore is short",
                                   hint="check the free space of the scratch directory, then restore again")
            parts.append(b)
            self.pos += len(b)
            n -= len(b)
        return b"".join(parts)

    def dispose(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class _Begin:
    """A data section for a session: replay the session log up to ``log_len``, expect ``mode``, then
    run what ``spool`` holds."""

    def __init__(self, table: str, log_len: int, mode: dict[str, bool], spool: _Spool) -> None:
        self.table, self.log_len, self.mode, self.spool = table, log_len, mode, spool


_STOP = object()


class _Session:
    """A data session: a connection of the restoring account and the thread that feeds it."""

    def __init__(self, loader: _ParallelLoader, index: int, conn: pymysql.connections.Connection) -> None:
        self.loader = loader
        self.conn = conn
        self.q: queue.Queue[object] = queue.Queue()  # _Begin (one at a time: given to a free session) or _STOP
        self.replayed = 0  # entries of the loader's session log this session ran
        self.table: str | None = None  # the section it runs (guarded by loader.cond)
        self.mode: dict[str, bool] = {}
        self.thread = threading.Thread(target=self._loop, name=f"mysql-restore-{index}", daemon=True)

    def _loop(self) -> None:
        loader = self.loader
        while True:
            item = self.q.get()
            if not isinstance(item, _Begin):
                return
            try:
                if not loader.failed:
                    self._section(item)
            except BaseException as e:  # handed to the main thread, which raises the first
                loader.fail(e, self.table)
            finally:
                item.spool.reader_finished()
                with loader.cond:
                    self.table = None
                    loader.cond.notify_all()

    def _section(self, job: _Begin) -> None:
        loader = self.loader
        for st, sql in loader.log[self.replayed:job.log_len]:
            _run_statement(self.conn, st, sql, loader.target)
        self.replayed = job.log_len
        self.mode = job.mode
        self._same_mode(None)
        while (item := job.spool.read(lambda: loader.failed)) is not None:
            st, sql = item
            _run_statement(self.conn, st, sql, loader.target, job.table)
            self._same_mode(st)

    def _same_mode(self, st: Statement | None) -> None:
        if _session_mode(self.conn) != self.mode:
            where = f"at line {st.line}" if st is not None else "after replaying the session settings"
            raise RestoreError(f"restore into database '{self.loader.target.name}' failed: the session loading "
                               f"table `{self.table}` reads strings differently from the dump's {where}",
                               hint="restore with ERP_BACKUP_MYSQL_RESTORE_JOBS=1 (serial); the database is "
                               "left partly restored")


class _ParallelLoader:
    """The dump's statements, checked and rewritten as by the serial restore (``_execute_dump``),
    run where ``mysql_sections.SectionPlanner`` says: table data in ``sessions`` data sessions,
    everything else on the control session ``control``, in dump order. Every session logs in as
    the restoring (confined) account. The dump is read as fast as it is checked: a data section
    waits for its session in a spool file (``_Spool``), so the next table can start on another
    session meanwhile. The first error stops every session and fails the restore."""

    def __init__(self, control: pymysql.connections.Connection, login: DatabaseUrl, target: DatabaseUrl,
                 timeout: float | None, definer: bytes, sessions: int, workdir: Path) -> None:
        self.control = control
        self.login = login
        self.target = target
        self.timeout = timeout
        self.definer = definer
        self.n = sessions
        self.workdir = workdir
        self.log: list[tuple[Statement, bytes]] = []  # the session settings run on the control session
        self.cond = threading.Condition()
        self.failed = False
        self.error: BaseException | None = None
        self.sessions: list[_Session] = []
        self.spools: list[_Spool] = []  # closed (writer side) at the end, whatever happened
        self.deadline = time.monotonic() + timeout if timeout else None

    def fail(self, e: BaseException, table: str | None) -> None:
        with self.cond:
            if self.error is None:
                if isinstance(e, DumpRejected):
                    e = _rejected(e, self.target)
                elif not isinstance(e, RestoreError):
                    e = RestoreError(f"restore into database '{self.target.name}' failed in the session loading "
                                     f"table `{table}`: {one_line(str(e))}",
                                     hint="the database is left partly restored: fix the cause, then restore "
                                     "again with --force")
                self.error = e
            self.failed = True
            self.cond.notify_all()

    def run(self, chunks: Iterable[bytes]) -> None:
        try:
            for i in range(self.n):
                try:
                    conn = _open(self.login, self.timeout, self.target.name, True)
                except BackupError as e:
                    raise RestoreError(f"restore into database '{self.target.name}' could not open data session "
                                       f"{i + 1} of {self.n}: {e.message}",
                                       hint=f"lower the number of sessions (restore --jobs, {RESTORE_JOBS_ENV}; "
                                       "1 restores serially) or raise the server's max_connections; the "
                                       "database is left partly restored") from None
                self.sessions.append(_Session(self, i, conn))
            for w in self.sessions:
                w.thread.start()
            self._feed(chunks)
            self._wait_all("the last tables")
        except DumpRejected as e:
            self.fail(e, None)
            raise self.error from None  # type: ignore[misc]
        except BaseException as e:
            first = self.error
            self.fail(e, None)
            if first is not None and isinstance(e, Exception):
                raise first from e  # a session failed first: that is the cause, this the consequence
            raise
        finally:
            self._stop()
        if self.error is not None:
            raise self.error

    def _feed(self, chunks: Iterable[bytes]) -> None:
        splitter = StatementSplitter()
        splitter.set_mode(**_session_mode(self.control))
        charset = CharsetGuard()
        planner = SectionPlanner()
        serial: pymysql.connections.Connection | None = None  # the one session of a serial restore from here
        section: _Session | None = None
        spool: _Spool | None = None
        exclusive = False
        for st in splitter_statements(splitter, chunks):
            self._check_time(st.line)
            self._raise_failed()
            check_confined(st)
            charset.check(st)
            step = planner.step(st)
            sql = confine_definers(st.sql, self.definer, nbe=st.nbe, ansi=st.ansi)
            kind = step.kind
            if kind is Kind.DATA:
                spool.append(st, sql)  # type: ignore[union-attr]
                continue
            if kind is Kind.SERIAL:
                assert serial is not None
                _run_statement(serial, st, sql, self.target)
                splitter.set_mode(**_session_mode(serial))
            elif kind is Kind.SESSION:
                self._control(st, sql, splitter)
                self.log.append((st, sql))
            elif kind is Kind.LOCAL:
                self._wait_tables(step.waits)
                self._control(st, sql, splitter)
            elif kind is Kind.BEGIN:
                assert step.table is not None
                exclusive = step.exclusive
                if exclusive:
                    self._wait_all(f"table `{step.table}`")
                self._wait_tables((table_key(step.table),))
                section = self._free_session(step.table)
                spool = _Spool(self.workdir, self.cond)
                self.spools.append(spool)
                spool.append(st, sql)
                section.q.put(_Begin(step.table, len(self.log), _session_mode(self.control), spool))
            elif kind is Kind.END:
                assert section is not None and spool is not None
                spool.append(st, sql)
                spool.close()
                section = spool = None
                if exclusive:
                    self._wait_all(f"table `{step.table}`")
            elif kind is Kind.BARRIER:
                self._wait_all(f"line {st.line}")
                self._control(st, sql, splitter)
                if step.serial:
                    serial = self.control
            else:  # ADOPT: that section's session holds its locks: it runs the rest, in order
                assert kind is Kind.ADOPT and section is not None and spool is not None
                spool.close()
                self._wait_all(f"line {st.line}")
                serial = section.conn
                _run_statement(serial, st, sql, self.target)
                splitter.set_mode(**_session_mode(serial))
                section = spool = None
        if spool is not None:  # the dump ended inside a data section (the serial restore stops there too)
            spool.close()

    def _control(self, st: Statement, sql: bytes, splitter: StatementSplitter) -> None:
        _run_statement(self.control, st, sql, self.target)
        splitter.set_mode(**_session_mode(self.control))

    def _free_session(self, table: str) -> _Session:
        found: list[_Session] = []

        def free() -> bool:
            found[:] = [w for w in self.sessions if w.table is None]
            if found:
                found[0].table = table  # under cond: taken
            return bool(found)

        self._wait(free, f"a free session for table `{table}`")
        return found[0]

    def _wait_all(self, what: str) -> None:
        self._wait(lambda: all(w.table is None for w in self.sessions), what)

    def _wait_tables(self, keys: tuple[str, ...]) -> None:
        """Until no session loads one of these tables (``table_key``)."""
        self._wait(lambda: all(w.table is None or table_key(w.table) not in keys for w in self.sessions),
                   f"table(s) {', '.join(f'`{k}`' for k in keys)}")

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        with self.cond:
            while not ready():
                self._raise_failed()
                self._check_time(None, what)
                self.cond.wait(0.5)
        self._raise_failed()

    def _raise_failed(self) -> None:
        if self.failed and self.error is not None:
            raise self.error

    def _check_time(self, line: int | None, what: str = "") -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            at = f"at line {line} of the dump" if line is not None else f"waiting for {what}"
            raise RestoreError(f"restore into database '{self.target.name}' timed out {at}",
                               hint="raise the timeout in the config or look at why the server is slow; the "
                               "database is left partly restored")

    def _stop(self) -> None:
        """Stop every data session (a busy one stops after its statement: ``failed`` is set when the
        restore did not finish) and close their connections."""
        for w in self.sessions:
            w.q.put(_STOP)
        for w in self.sessions:
            if w.thread.ident is not None:  # started (opening the sessions may have failed part way)
                w.thread.join(30)
            if not w.thread.is_alive():
                try:
                    w.conn.close()
                except pymysql.err.Error:
                    pass
            else:
                log.warning("a MySQL restore session did not stop within 30 s: its connection closes with "
                            "this process")
        for sp in self.spools:  # an interrupted feed leaves its last spool open on the writer side
            sp.close()
            if sp.reader_done or not any(w.thread.is_alive() for w in self.sessions):
                sp.dispose()
        self.spools.clear()


_SET_STATEMENT = re.compile(rb"\s*(?:/\*M?!\d*\s*)?set\b", re.I)


def _restore_hint(e: BaseException) -> str:
    if _code(e) in _DENIED:
        return ("the dump reaches past the target database (restore runs with the rights of that database "
                "only): the set is damaged or was tampered with; restore from another set (the database is "
                "left partly restored)")
    return "the database is left partly restored: fix the cause, then restore again with --force"


def _statement_error(e: BaseException, line: int) -> str:
    code = _code(e)
    args: tuple[object, ...] = getattr(e, "args", ())
    text = str(args[1]) if code is not None and len(args) > 1 else str(e)
    prefix = f"ERROR {code}" if code is not None else "error"
    return one_line(f"{prefix} at line {line}: {text}")


def _scan(splitter: StatementSplitter, tracker: SessionModeTracker, chunk: bytes | None,
          problems: list[str], charset: CharsetGuard | None = None) -> StatementSplitter | None:
    """Verification: feed ``chunk`` (None: the end) to the splitter, following the SQL mode;
    None once it found a problem (recorded in ``problems``)."""
    try:
        if chunk is None:
            splitter.close()
        else:
            splitter.feed(chunk)
        while (st := splitter.next()) is not None:
            check_confined(st)
            if charset is not None:
                charset.check(st)
            nbe, ansi = tracker.after(st)
            splitter.set_mode(no_backslash_escapes=nbe, ansi_quotes=ansi)
    except DumpRejected as e:
        if "truncated" not in e.problem:  # a truncated dump is reported by the trailer check
            problems.append(f"the dump holds {e.problem} at line {e.line}, which no dump tool writes: it is "
                            "damaged or was tampered with (never feed it to a mysql/mariadb client)")
        return None
    return splitter
