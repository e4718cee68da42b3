"""PostgreSQL: ``pg_dump --format=custom --compress=0``; the engine compresses with zstd.

Consistency
-----------
The row counts recorded in the manifest are those of the very snapshot pg_dump
dumps: we open a REPEATABLE READ, read-only transaction with psycopg2, export
its snapshot (``pg_export_snapshot()``) and start ``pg_dump --snapshot=<id>``
while that transaction stays open (until pg_dump has ended).

Row counts
----------
Two methods, chosen with ``ERP_BACKUP_PG_ROW_COUNTS``; both give exactly the
counts of the dumped snapshot (``counts_consistent``), with ``SELECT count(*)``'s
meaning (an inheritance parent's count includes its descendants' rows):

* ``count`` (the default): ``SELECT count(*)`` of every table in the same
  transaction, in a thread while pg_dump streams.
* ``stream``: read from the dump stream itself as it passes to the compressor
  (``pgdump_rows``: the rows of each ``TABLE DATA`` block), so the tables are
  not scanned a second time. A table the stream has no data for (e.g. the
  parent of a foreign table) is counted with ``SELECT count(*)`` after the
  dump, in the still open snapshot; if the stream cannot be read (an archive
  version the parser does not know, an unexpected layout) every table is, in a
  thread while pg_dump goes on, and a warning says why.

Measured here (data in the page cache, 2 loaded cores), reading the stream costs
the backup process ~1.5 CPU-s per GB of dump for short rows (pgbench), about
twice what the count(*) scans cost the server, in the thread that feeds the
compressor: pgbench scale 40, stream 5.4-5.6 s wall against count(*) 4.3-4.7 s.
The stream spares the server the second scan (and its disk reads when the
database does not fit in memory). ``row_counts()`` (after a restore) uses
``SELECT count(*)``.

By hand
-------
``zstd -d < db.postgresql.pgdump.zst | pg_restore --exit-on-error --no-owner
--no-acl -d <new database>`` (``--exit-on-error``: otherwise errors pass silently).

Restore: ``pg_restore`` logs in as a temporary role and works as the target database's owner role
(``--role``), with the rights of that database only (``postgres_confine``).

Secrets: the password goes to libpq through ``PGPASSWORD`` in the child's
environment (never argv) and to psycopg2 as a keyword argument; every message
is scrubbed of it.
"""

from __future__ import annotations

import os
import queue
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from erp_backup.adapters import proc
from erp_backup.adapters.databases.base import Write
from erp_backup.adapters.databases.common import (
    Background,
    Tee,
    connect_timeout,
    log,
    one_line,
    reraise_background,
    version_tuple,
)
from erp_backup.adapters.databases.pgdump_rows import RowCounter
from erp_backup.adapters.databases.postgres_confine import OWNER_PREFIX, TEMP_PREFIX, confined_role, owner_role
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import ConfigError, DatabaseError, RestoreError
from erp_backup.core.models import DatabaseInfo

DUMP_FORMAT = "pg_dump-custom"
# how dump() counts rows: "count" (the default: SELECT count(*) of every table in the dump's snapshot, in a
# thread while pg_dump runs) or "stream" (read from pg_dump's output: no second scan of the tables)
ROW_COUNTS_ENV = "ERP_BACKUP_PG_ROW_COUNTS"

# URL query options passed on to libpq (psycopg2 keywords; PG* variables for the clients)
_LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "options": "PGOPTIONS",
}

# every ordinary table (partitions included, partitioned parents excluded: their
# rows live in the partitions) outside the system schemas, not owned by an extension
_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

# legacy inheritance between the tables above (a partitioned parent is not one of them): SELECT count(*)
# of a parent counts its descendants' rows too, pg_dump's COPY of it holds its own rows only
_INHERITS_SQL = """
SELECT pn.nspname, p.relname, cn.nspname, c.relname
FROM pg_inherits i
JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
WHERE p.relkind = 'r'
"""

# relations the dump needs to read that the current user cannot
_UNREADABLE_SQL = """
SELECT n.nspname, c.relname,
       CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND (NOT has_schema_privilege(n.oid, 'USAGE')
       OR NOT has_table_privilege(c.oid, 'SELECT'))
ORDER BY 1, 2
"""


class PostgresAdapter:
    engine = "postgresql"
    artifact_name = "db.postgresql.pgdump.zst"
    counts_consistent = True  # the counts are those of the dumped snapshot

    def __init__(self, url: DatabaseUrl, *, timeout: float | None = None) -> None:
        if url.engine != "postgresql":
            raise ConfigError(f"PostgresAdapter got a {url.engine} URL", hint="use adapter_for(url)")
        self.url = url
        self.timeout = timeout

    # ---- checks -------------------------------------------------------------------------------

    def check_available(self) -> None:
        for binary in ("pg_dump", "pg_restore"):
            proc.which(binary)
        client = self._pg_dump_version()
        with _connect(self.url, self.timeout) as conn:
            _check_client_version(client, conn.server_version)
            _check_readable(conn, self.url)

    def _pg_dump_version(self) -> str:
        out = proc.run(["pg_dump", "--version"], timeout=30, what="pg_dump --version").stdout
        return out.decode("utf-8", "replace").strip()

    # ---- dump ---------------------------------------------------------------------------------

    def dump(self, write: Write, workdir: Path) -> DatabaseInfo:
        proc.which("pg_dump")
        tool = self._pg_dump_version()
        conn = _open(self.url, self.timeout)
        fallback: list[Background[dict[str, int]]] = []  # count(*) of every table, when the stream cannot
        try:
            _check_client_version(tool, conn.server_version)  # the tool it records must fit this server
            conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                             readonly=True)
            with conn.cursor() as cur:
                cur.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
                snapshot, server_version = cur.fetchone()
                cur.execute(_TABLES_SQL)
                tables = [(s, t) for s, t in cur.fetchall()]
                cur.execute(_INHERITS_SQL)
                inherits = [((ps, pt), (cs, ct)) for ps, pt, cs, ct in cur.fetchall()]
            counter = RowCounter()

            def count_all(reason: str | None) -> None:
                if reason:
                    log.warning("row counts of database %s: %s; counting them with SELECT count(*) in the "
                                "dump's snapshot instead", self.url.name, reason)
                fallback.append(Background(lambda: _count(conn, tables, self.url), name="pg-row-counts"))

            if row_counts_method() == "count":
                count_all(None)  # chosen: SELECT count(*) in a thread while pg_dump streams

            def guarded(chunk: bytes) -> None:
                if fallback:
                    reraise_background(fallback[0])  # a count failed (e.g. permission): stop pg_dump now
                elif counter.failed is None:
                    counter.feed(chunk)
                    if counter.failed is not None:
                        count_all(f"cannot read them from the dump stream ({counter.failed})")
                write(chunk)

            argv = ["pg_dump", "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password",
                    *_conn_args(self.url), f"--dbname={_conninfo(self.url.name)}"]
            try:
                result = self._stream_dump(argv, guarded)
            except DatabaseError:
                if fallback:
                    fallback[0].join(5)
                    reraise_background(fallback[0])  # its error is the cause (pg_dump then lost the snapshot)
                raise
            if not fallback:
                counter.finish()
                if counter.failed is not None:
                    count_all(f"cannot read them from the dump stream ({counter.failed})")
            if fallback:
                counts = fallback[0].result()
            else:
                # the transaction (and so the snapshot) is still open: what the stream lacks is counted in it
                counts = _stream_counts(conn, counter, tables, inherits, self.url)
        except BaseException:
            if fallback and not fallback[0].done():
                conn.cancel()
                fallback[0].join(10)
            raise
        finally:
            _close(conn)
        return DatabaseInfo(engine=self.engine, database=self.url.name, server_version=server_version,
                            dump_tool=tool, dump_format=DUMP_FORMAT, tables=counts, raw_size=result.bytes_out)

    def _stream_dump(self, argv: list[str], write: Write) -> proc.ProcResult:
        try:
            return proc.stream_out(argv, write, env_extra=_env(self.url), secrets=_secrets(self.url),
                                   timeout=self.timeout, what="pg_dump")
        except proc.ProcError as e:
            raise DatabaseError(f"pg_dump of database '{self.url.name}' failed: {_cause(e, self.url)}",
                                hint=_dump_hint(e.stderr_tail, self.url)) from e

    # ---- verify -------------------------------------------------------------------------------

    def verify_dump(self, chunks: Iterable[bytes], info: DatabaseInfo, workdir: Path) -> list[str]:
        """Read the whole dump with ``pg_restore --file=/dev/null`` (it decodes every data block:
        ``pg_restore --list`` alone stops after the table of contents and would miss a
        truncated file) and list its table of contents with ``pg_restore --list`` fed from
        the same stream."""
        problems: list[str] = []
        tee = Tee(chunks)
        seen = [0]

        def counted() -> Iterator[bytes]:
            for chunk in tee.main():
                seen[0] += len(chunk)
                yield chunk

        def list_toc() -> bytes:
            try:
                return proc.stream_in(["pg_restore", "--list"], tee.side(), timeout=self.timeout,
                                      capture_stdout=True, what="pg_restore --list").stdout
            finally:
                tee.side_finished()

        lister = Background(list_toc, name="pg-restore-list")
        try:
            proc.stream_in(["pg_restore", "--file=/dev/null"], counted(), timeout=self.timeout,
                           what="pg_restore")
        except proc.ProcError as e:
            problems.append(f"the dump cannot be read to the end (truncated or corrupt): {_cause(e)}")
        finally:
            tee.end()
        try:
            toc = lister.result().decode("utf-8", "replace")
        except proc.ProcError as e:
            problems.append(f"the dump's table of contents cannot be read: {_cause(e)}")
            return problems
        if seen[0] == 0:
            return ["the dump is empty"]
        problems.extend(_missing_tables(toc, info.tables))
        return problems

    # ---- restore ------------------------------------------------------------------------------

    def restore(self, chunks: Iterable[bytes], info: DatabaseInfo, target: DatabaseUrl, *,
                replace: bool, workdir: Path, jobs: int = 1) -> dict[str, int]:
        if target.engine != "postgresql":
            raise RestoreError(f"cannot restore a PostgreSQL dump into a {target.engine} database",
                               hint="give a postgresql:// target URL")
        proc.which("pg_restore")
        admin = _admin_connection(target, self.timeout)
        try:
            admin.autocommit = True
            # the dump runs as a temporary role with the rights of the target database only
            with confined_role(admin, target, lambda db: _open(target, self.timeout, dbname=db)) as confined:
                # who used the database being replaced keeps using it (an in-place restore of the live
                # database: the application's role must still read its tables)
                users = _previous_owners(admin, target, self.timeout) if replace and confined.owner else []
                _prepare_target(target, replace=replace, timeout=self.timeout, owner=confined.owner)
                if users and confined.owner:
                    _grant_owner_role(admin, confined.owner, users, target.name)
                login = confined.login
                role = [f"--role={confined.owner}"] if confined.owner else []
                argv = ["pg_restore", "--exit-on-error", "--no-owner", "--no-acl", "--no-password", *role,
                        *_conn_args(login), f"--dbname={_conninfo(target.name)}"]
                try:
                    if jobs > 1:
                        self._restore_parallel(argv, chunks, login, workdir, jobs)
                    else:
                        proc.stream_in(argv, chunks, env_extra=_env(login), secrets=_secrets(login),
                                       timeout=self.timeout, what="pg_restore")
                except proc.ProcError as e:
                    raise RestoreError(f"pg_restore into database '{target.name}' failed: {_cause(e, login)}",
                                       hint=_restore_hint(e.stderr_tail)) from e
        finally:
            _close(admin)
        return self.row_counts(target)

    def _restore_parallel(self, argv: list[str], chunks: Iterable[bytes], target: DatabaseUrl,
                          workdir: Path, jobs: int) -> None:
        # pg_restore -j needs a seekable file: spool the raw dump (0600) in the private workdir
        fd, path = tempfile.mkstemp(prefix=".restore-", suffix=".pgdump", dir=workdir)
        try:
            try:
                _spool(chunks, fd)
            except OSError as e:
                raise RestoreError(f"cannot spool the dump to {workdir} for a parallel restore: {e.strerror or e}",
                                   hint="free disk space there (it needs the raw dump size) or restore with "
                                   "--jobs 1, which streams") from e
            proc.run([*argv, f"--jobs={jobs}", path], env_extra=_env(target), secrets=_secrets(target),
                     timeout=self.timeout, what="pg_restore")
        finally:
            Path(path).unlink(missing_ok=True)

    # ---- row counts ---------------------------------------------------------------------------

    def row_counts(self, url: DatabaseUrl) -> dict[str, int]:
        with _connect(url, self.timeout) as conn:
            conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                             readonly=True)
            with conn.cursor() as cur:
                cur.execute(_TABLES_SQL)
                tables = [(s, t) for s, t in cur.fetchall()]
            counts = _count(conn, tables, url)
            conn.rollback()
            return counts


def row_counts_method() -> str:
    """``stream`` or ``count`` from ``$ERP_BACKUP_PG_ROW_COUNTS`` (module docstring: Row counts)."""
    value = os.environ.get(ROW_COUNTS_ENV, "count").strip().lower() or "count"
    if value not in ("stream", "count"):
        raise ConfigError(f"{ROW_COUNTS_ENV}={value!r} is not a row count method",
                          hint=f"set {ROW_COUNTS_ENV} to 'count' (the default) or 'stream', or unset it")
    return value


def _spool(chunks: Iterable[bytes], fd: int) -> None:
    """Write ``chunks`` to ``fd`` (closed at the end) from a second thread, so producing the chunks
    (the engine decompresses them) overlaps with the disk writes. Memory: at most 8 chunks queued."""
    q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def writer() -> None:
        with os.fdopen(fd, "wb", buffering=0) as f:
            while (chunk := q.get()) is not None:
                view = memoryview(chunk)
                while view:
                    view = view[f.write(view) or 0:]

    bg: Background[None] = Background(writer, name="pg-restore-spool")
    try:
        for chunk in chunks:
            while True:
                reraise_background(bg)  # disk full: stop at once
                try:
                    q.put(chunk, timeout=0.1)
                    break
                except queue.Full:
                    continue
    finally:
        while bg.failed is None and not bg.done():
            try:
                q.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        bg.result()


# ---- connections ----------------------------------------------------------------------------------


def _open(url: DatabaseUrl, timeout: float | None,
          dbname: str | None = None) -> psycopg2.extensions.connection:
    kwargs: dict[str, object] = {
        "dbname": dbname or url.name,
        "connect_timeout": connect_timeout(timeout),
        "application_name": "erp-backup",
    }
    if url.host:
        kwargs["host"] = url.host
    if url.port:
        kwargs["port"] = url.port
    if url.user:
        kwargs["user"] = url.user
    if url.password:
        kwargs["password"] = url.password
    for key, value in url.options:
        if key in _LIBPQ_ENV:
            kwargs[key] = value
    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.Error as e:
        raise _connect_error(e, url, dbname or url.name) from None
    try:
        # every session of ours reads pg_catalog only, whatever search_path the database's owner (or a
        # restored dump, as that owner) made its default: no operator or function planted in another
        # schema runs as the user we connect as. A statement, not a startup option: PgBouncer refuses those
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)")
        conn.autocommit = False
    except psycopg2.Error as e:
        _close(conn)
        raise _connect_error(e, url, dbname or url.name) from None
    return conn


@contextmanager
def _connect(url: DatabaseUrl, timeout: float | None, dbname: str | None = None
             ) -> Iterator[psycopg2.extensions.connection]:
    conn = _open(url, timeout, dbname)
    try:
        yield conn
    finally:
        _close(conn)


def _close(conn: psycopg2.extensions.connection) -> None:
    try:
        conn.close()
    except psycopg2.Error:
        pass


def _where(url: DatabaseUrl) -> str:
    return f"{url.host or 'local socket'}:{url.port or 5432}"


def _connect_error(e: psycopg2.Error, url: DatabaseUrl, dbname: str) -> DatabaseError:
    text = str(e)
    cause = one_line(text, _secrets(url))
    low = text.lower()
    user = url.user or "(default user)"
    if "does not exist" in low and "database" in low:
        return DatabaseError(f"PostgreSQL database '{dbname}' does not exist on {_where(url)}",
                             hint="create it or fix the database name in the URL")
    if "password" in low or "authentication failed" in low or "role" in low or "pg_hba.conf" in low \
            or "not permitted to log in" in low:
        return DatabaseError(f"PostgreSQL at {_where(url)} refused the login of user '{user}': {cause}",
                             hint="check the user and password of the database connection (block or URL)")
    if "timeout" in low or "could not connect" in low or "connection refused" in low \
            or "could not translate host" in low or "no route" in low or "connection to server" in low:
        return DatabaseError(f"PostgreSQL at {_where(url)} is not reachable: {cause}",
                             hint="start the server or fix host/port in the database URL")
    return DatabaseError(f"cannot connect to PostgreSQL at {_where(url)}: {cause}",
                         hint="check the database URL and that the server accepts connections")


def _conn_args(url: DatabaseUrl) -> list[str]:
    args: list[str] = []
    if url.host:
        args.append(f"--host={url.host}")
    if url.port:
        args.append(f"--port={url.port}")
    if url.user:
        args.append(f"--username={url.user}")
    return args


def _conninfo(dbname: str) -> str:
    """``dbname='…'`` (a conninfo string, so a name with '=' or a leading '-' is safe)."""
    escaped = dbname.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def _env(url: DatabaseUrl) -> dict[str, str]:
    env = {"PGCONNECT_TIMEOUT": str(connect_timeout(None)), "PGAPPNAME": "erp-backup"}
    if url.password:
        env["PGPASSWORD"] = url.password
    for key, value in url.options:
        if key in _LIBPQ_ENV:
            env[_LIBPQ_ENV[key]] = value
    return env


def _secrets(url: DatabaseUrl) -> tuple[str, ...]:
    return url.secrets()


def _cause(e: proc.ProcError, url: DatabaseUrl | None = None) -> str:
    tail = e.stderr_tail
    lines = [ln for ln in tail.splitlines() if "error" in ln.lower()] or tail.splitlines()
    text = lines[-1] if lines else f"exit status {e.returncode}"
    for prefix in ("pg_dump: error: ", "pg_restore: error: "):
        text = text.replace(prefix, "")
    return one_line(text, _secrets(url) if url else ())


def _dump_hint(stderr: str, url: DatabaseUrl) -> str:
    low = stderr.lower()
    if "permission denied" in low:
        return (f"grant SELECT on every table and sequence to '{url.user or 'the backup user'}' "
                "(or make it a member of pg_read_all_data)")
    if "server version" in low and "aborting because of server version mismatch" in low:
        return "install a pg_dump at least as new as the server (postgresql-client-<server major>)"
    return "look at the PostgreSQL server log for the cause and run the backup again"


# ---- checks ---------------------------------------------------------------------------------------


def _check_client_version(pg_dump_version: str, server_version_num: int) -> None:
    client = version_tuple(pg_dump_version.split(")", 1)[-1])
    if not client:
        return
    server_major = server_version_num // 10000
    if server_major >= 10:
        server: tuple[int, ...] = (server_major,)
        client = client[:1]
    else:
        server = (server_major, (server_version_num // 100) % 100)
        client = client[:2]
    if client < server:
        have = ".".join(map(str, client))
        want = ".".join(map(str, server))
        raise DatabaseError(f"local pg_dump {have} is older than server {want}",
                            hint=f"install postgresql-client-{want} (pg_dump must be at least the server's "
                            "major version)")


def _check_readable(conn: psycopg2.extensions.connection, url: DatabaseUrl) -> None:
    with conn.cursor() as cur:
        cur.execute(_UNREADABLE_SQL)
        rows = cur.fetchall()
    conn.rollback()
    if rows:
        names = ", ".join(f"{kind} {s}.{t}" for s, t, kind in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        user = url.user or "the backup user"
        raise DatabaseError(f"user '{user}' cannot read {names}{more} (permission denied)",
                            hint=f"GRANT SELECT (and USAGE on the schema) to '{user}', or make it a "
                            "member of pg_read_all_data")


# ---- row counts ------------------------------------------------------------------------------------


def _stream_counts(conn: psycopg2.extensions.connection, counter: RowCounter, tables: list[tuple[str, str]],
                   inherits: list[tuple[tuple[str, str], tuple[str, str]]], url: DatabaseUrl) -> dict[str, int]:
    """The counts read from the dump stream, keyed like ``_count``'s, with the semantics of
    ``SELECT count(*)``: an inheritance parent's count includes its descendants' rows. A table the
    stream has no data for (or a parent with a descendant it has none for, e.g. a foreign table) is
    counted with ``SELECT count(*)`` in ``conn``'s still open snapshot."""
    codec = psycopg2.extensions.encodings.get(conn.encoding, "utf-8")
    own: dict[tuple[str, str], int] = {}
    for (namespace, tag), rows in counter.counts.items():
        try:
            own[(namespace.decode(codec), tag.decode(codec))] = rows
        except (UnicodeDecodeError, LookupError):
            continue  # counted below
    children: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for parent, child in inherits:
        children.setdefault(parent, []).append(child)

    def total(table: tuple[str, str], seen: frozenset[tuple[str, str]]) -> int | None:
        if table not in own or table in seen:
            return None
        rows = own[table]
        for child in children.get(table, []):
            more = total(child, seen | {table})
            if more is None:
                return None
            rows += more
        return rows

    counts: dict[str, int] = {}
    missing: list[tuple[str, str]] = []
    for table in tables:
        found = total(table, frozenset())
        if found is None:
            missing.append(table)
        else:
            counts[f"{table[0]}.{table[1]}"] = found
    if missing:
        log.info("database %s: %d table(s) without data in the dump stream counted with SELECT count(*): %s",
                 url.name, len(missing), ", ".join(f"{s}.{t}" for s, t in missing[:5]))
        counts.update(_count(conn, missing, url))
    return {f"{s}.{t}": counts[f"{s}.{t}"] for s, t in tables}


def _count(conn: psycopg2.extensions.connection, tables: list[tuple[str, str]],
           url: DatabaseUrl) -> dict[str, int]:
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        for schema, table in tables:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema),
                                                                 sql.Identifier(table))
            try:
                cur.execute(query)
            except psycopg2.errors.InsufficientPrivilege as e:
                user = url.user or "the backup user"
                raise DatabaseError(f"user '{user}' cannot read table {schema}.{table} (permission denied)",
                                    hint=f"GRANT SELECT ON {schema}.{table} to '{user}', or make it a member "
                                    "of pg_read_all_data") from e
            except psycopg2.errors.QueryCanceled as e:
                raise DatabaseError(f"counting rows of {schema}.{table} was cancelled",
                                    hint="the dump failed or timed out; see the error above") from e
            except psycopg2.Error as e:
                raise DatabaseError(f"counting rows of {schema}.{table} failed: {one_line(str(e))}",
                                    hint="look at the PostgreSQL server log") from e
            counts[f"{schema}.{table}"] = int(cur.fetchone()[0])
    return counts


# ---- restore target ------------------------------------------------------------------------------


def _restore_hint(stderr: str) -> str:
    low = stderr.lower()
    if "pg_hba.conf" in low or "authentication failed" in low:
        return ("the restore logs in as a temporary role erpb_restore_… with a password: let pg_hba.conf accept "
                "such roles by password (scram-sha-256) for the configured host or socket (README: Databases)")
    if any(w in low for w in ("permission denied", "must be superuser", "must be owner", "must be member",
                              "must have privileges", "must have admin option", "must be able to set role")):
        return ("the dump reaches past the target database (restore runs as a role with the rights of that "
                "database only): the set is damaged or was tampered with, restore from another set; an "
                "extension that needs a superuser must be created in the empty target database first "
                "(the database is left partly restored)")
    return "the database is left partly restored: fix the cause, then restore again with --force"


def _prepare_target(target: DatabaseUrl, *, replace: bool, timeout: float | None, owner: str | None) -> None:
    """Create ``target`` (from template0) owned by ``owner`` (None: the user we connect as); an existing
    database must hold no table unless ``replace``, which drops (WITH (FORCE)) and recreates it; an empty
    one is handed to ``owner``."""
    owned = sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
    admin = _admin_connection(target, timeout)
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.name,))
            exists = cur.fetchone() is not None
            ident = sql.Identifier(target.name)
            if exists:
                tables = _table_count(target, timeout)
                if tables and not replace:
                    raise RestoreError(
                        f"target database '{target.name}' already exists and holds {tables} table(s)",
                        hint="restore into a new database name, or pass --force to drop and recreate it")
                if not tables:
                    if owner:
                        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, sql.Identifier(owner)))
                    return
                log.warning("dropping database %s to replace it", target.name)
                cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
            cur.execute(sql.SQL("CREATE DATABASE {}{} TEMPLATE template0").format(ident, owned))
    except psycopg2.Error as e:
        raise RestoreError(f"cannot create target database '{target.name}': {one_line(str(e))}",
                           hint="the restore user needs CREATEDB (and ownership to replace a "
                           "database)") from e
    finally:
        _close(admin)


_OWNERS_SQL = """
SELECT DISTINCT r.rolname FROM pg_roles r
WHERE NOT r.rolsuper AND r.rolname NOT LIKE %s AND r.rolname NOT LIKE %s AND r.rolname NOT LIKE 'pg\\_%%'
  AND (r.oid = (SELECT datdba FROM pg_database WHERE datname = current_database())
       OR r.oid IN (SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                      AND n.nspname NOT LIKE 'pg\\_%%')
       OR r.oid IN (SELECT nspowner FROM pg_namespace
                    WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_%%'))
ORDER BY 1
"""


def _previous_owners(admin: psycopg2.extensions.connection, target: DatabaseUrl,
                     timeout: float | None) -> list[str]:
    """The roles (no superuser, none of ours) that own the existing ``target`` or anything in it: the
    application's. The restore recreates every object as the owner role (``postgres_confine``)."""
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.name,))
        if cur.fetchone() is None:
            return []
    try:
        with _connect(target, timeout) as conn, conn.cursor() as cur:
            cur.execute(_OWNERS_SQL, tuple(p.replace("_", "\\_") + "%" for p in (OWNER_PREFIX, TEMP_PREFIX)))
            return [str(r[0]) for r in cur.fetchall()]
    except (psycopg2.Error, DatabaseError) as e:
        log.warning("cannot read who owns database %s before replacing it (%s): its roles may have to be "
                    "granted %s by hand", target.name, one_line(str(e)), owner_role(target.name))
        return []


def _grant_owner_role(admin: psycopg2.extensions.connection, owner: str, users: list[str], database: str) -> None:
    """Make the previous owners members of the owner role: they use the restored objects as they used
    the old ones (the objects stay the owner role's, so stored code still runs with its rights only)."""
    try:
        with admin.cursor() as cur:
            for user in users:
                cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(user)))
    except psycopg2.Error as e:
        raise RestoreError(f"cannot give the previous owners of database '{database}' ({', '.join(users)}) "
                           f"access to the restored objects: {one_line(str(e))}",
                           hint=f"GRANT {owner} TO {', '.join(users)} as a superuser") from e
    log.info("database %s: %s keep their access (members of %s, which owns the restored objects)", database,
             ", ".join(users), owner)


def _admin_connection(target: DatabaseUrl, timeout: float | None) -> psycopg2.extensions.connection:
    try:
        return _open(target, timeout, dbname="postgres")
    except DatabaseError as first:
        if "does not exist" not in str(first):
            raise
        return _open(target, timeout, dbname="template1")


def _table_count(url: DatabaseUrl, timeout: float | None) -> int:
    with _connect(url, timeout) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM ({_TABLES_SQL.replace('ORDER BY 1, 2', '')}) t")
        return int(cur.fetchone()[0])


def _missing_tables(toc: str, tables: dict[str, int]) -> list[str]:
    """Tables recorded in the manifest without a TABLE (or, with rows, TABLE DATA) entry."""
    defs: set[str] = set()
    data: set[str] = set()
    for line in toc.splitlines():
        if line.startswith(";") or "; " not in line:
            continue
        rest = line.split("; ", 1)[1].split(" ", 2)
        if len(rest) < 3:
            continue
        desc_and_names = rest[2]
        if desc_and_names.startswith("TABLE DATA "):
            data.add(desc_and_names[len("TABLE DATA "):])
        elif desc_and_names.startswith("TABLE "):
            defs.add(desc_and_names[len("TABLE "):])
    problems = []
    for key, rows in sorted(tables.items()):
        schema, _, table = key.partition(".")
        prefix = f"{schema} {table} "
        if not any(d.startswith(prefix) for d in defs):
            problems.append(f"table {key} recorded in the manifest is missing from the dump")
        elif rows and not any(d.startswith(prefix) for d in data):
            problems.append(f"table {key} has {rows} rows recorded but no data in the dump")
    return problems
