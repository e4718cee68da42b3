"""Scratch databases of the restore test: list them by prefix, drop them, render their URL."""

from __future__ import annotations

import os
from urllib.parse import quote

from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import DatabaseError


def url_text(url: DatabaseUrl) -> str:
    """The URL with its password (for ``DATABASE_URL`` in a smoke check's environment only)."""
    if url.engine == "sqlite":
        return f"sqlite:///{url.name}"
    auth = quote(url.user, safe="") + (":" + quote(url.password, safe="") if url.password else "")
    port = f":{url.port}" if url.port else ""
    return f"{url.engine}://{auth}{'@' if auth else ''}{url.host or 'localhost'}{port}/{quote(url.name, safe='')}"


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"


def list_databases(server: DatabaseUrl, prefix: str, timeout: float | None = 30) -> list[str]:
    """Names of the databases on ``server`` starting with ``prefix``."""
    if server.engine == "postgresql":
        from erp_backup.adapters.databases import postgres

        conn = postgres._admin_connection(server, timeout)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (_like(prefix),))
                return sorted(r[0] for r in cur.fetchall())
        finally:
            postgres._close(conn)
    if server.engine == "mysql":
        from erp_backup.adapters.databases import mysql

        with mysql._connect(server, timeout, None) as c:
            rows = mysql._rows(c, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
                               (_like(prefix),))
            return sorted(str(r[0]) for r in rows)
    return []


def drop_database(url: DatabaseUrl, timeout: float | None = 60) -> None:
    """Drop ``url``'s database (a SQLite file: delete it and its companions); nothing if it is gone."""
    try:
        if url.engine == "postgresql":
            from psycopg2 import sql

            from erp_backup.adapters.databases import postgres

            conn = postgres._admin_connection(url, timeout)
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(url.name)))
            finally:
                postgres._close(conn)
        elif url.engine == "mysql":
            from erp_backup.adapters.databases import mysql

            with mysql._connect(url, timeout, None) as c:
                mysql._execute(c, f"DROP DATABASE IF EXISTS {mysql.quote(url.name)}")
        elif url.engine == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    os.unlink(url.name + suffix)
                except FileNotFoundError:
                    pass
    except DatabaseError:
        raise
    except Exception as e:  # a driver error: one line, no secret
        text = str(e)
        for s in url.secrets():
            text = text.replace(s, "***")
        last = (text.strip().splitlines() or [type(e).__name__])[-1]
        raise DatabaseError(f"cannot drop scratch database {url.redacted()}: {last}",
                            hint="drop it by hand; the next restore test tries again") from None
