"""Fixtures for tests against the real PostgreSQL and MariaDB servers of this machine.

Servers that are down make the tests FAIL (never skip): start them with ./dev.sh test.
Every database a test creates has a unique name and is dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import psycopg2
import pymysql
import pytest

from erp_backup.adapters.databases.mysql_confine import owner_role as my_owner_role
from erp_backup.adapters.databases.postgres_confine import owner_role as pg_owner_role
from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.models import DatabaseInfo

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
MY_HOST, MY_PORT, MY_USER = "127.0.0.1", 3306, "root"
CHUNK = 1 << 16
SECRET = "pw-Secret-4711"  # a password that must never appear in a message


def unique(prefix: str) -> str:
    return f"erpb_{prefix}_{uuid.uuid4().hex[:10]}"


# ---- PostgreSQL -----------------------------------------------------------------------------------


def pg_connect(dbname: str = "postgres", **kw: object) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=kw.pop("user", PG_USER), dbname=dbname,
                            connect_timeout=5, **kw)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def pg_sql(pg_server: None) -> Callable[..., list[tuple[object, ...]]]:
    """``pg_sql(url, sql)``: run SQL as the superuser in ``url``'s database, return its rows (if any)."""

    def run(url: DatabaseUrl, statement: str, args: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
        with closing(pg_connect(url.name)) as conn, conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall()) if cur.description else []

    return run


@pytest.fixture(scope="session")
def pg_server() -> None:
    try:
        pg_connect().close()
    except psycopg2.Error as e:
        pytest.fail(f"PostgreSQL is not running at {PG_HOST}:{PG_PORT} ({e}); start it (./dev.sh test does)")


@pytest.fixture
def pg_db(pg_server: None) -> Iterator[Callable[[str], DatabaseUrl]]:
    """Factory: ``pg_db("src")`` creates a fresh empty database and returns its URL."""
    names: list[str] = []

    def make(prefix: str = "db", create: bool = True) -> DatabaseUrl:
        name = unique(prefix)
        names.append(name)
        if create:
            with closing(pg_connect()) as conn, conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        return parse_database_url(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}")

    yield make
    conn = pg_connect()
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{pg_owner_role(name)}"')  # made by a restore into it
    conn.close()


@pytest.fixture
def pg_role(pg_server: None) -> Iterator[Callable[[], str]]:
    """Factory for throw-away LOGIN roles; dropped (with their grants) afterwards."""
    roles: list[tuple[str, list[str]]] = []

    def make(*databases: str) -> str:
        role = unique("role")
        with closing(pg_connect()) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN')
        roles.append((role, list(databases)))
        return role

    yield make
    for role, databases in roles:
        for db in databases:
            try:
                with closing(pg_connect(db)) as conn, conn.cursor() as cur:
                    cur.execute(f'DROP OWNED BY "{role}"')
            except psycopg2.Error:
                pass
        conn = pg_connect()
        with conn.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.close()


# ---- MariaDB -------------------------------------------------------------------------------------


def my_connect(database: str | None = None, **kw: object) -> pymysql.connections.Connection:
    params: dict[str, object] = {"host": MY_HOST, "port": MY_PORT, "user": MY_USER, "password": "",
                                 "database": database, "autocommit": True, "charset": "utf8mb4",
                                 "connect_timeout": 5}
    params.update(kw)
    return pymysql.connect(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def my_sql(my_server: None) -> Callable[..., list[tuple[object, ...]]]:
    """``my_sql(url, sql)``: run SQL as root in ``url``'s database, return its rows (if any)."""

    def run(url: DatabaseUrl | None, statement: str,
            args: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
        with my_connect(url.name if url else None) as conn, conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall()) if cur.description else []

    return run


@pytest.fixture
def my_connect_fn(my_server: None) -> Callable[..., pymysql.connections.Connection]:
    return my_connect


@pytest.fixture
def pg_connect_fn(pg_server: None) -> Callable[..., psycopg2.extensions.connection]:
    return pg_connect


@pytest.fixture(scope="session")
def my_server() -> None:
    try:
        my_connect().close()
    except pymysql.err.MySQLError as e:
        pytest.fail(f"MariaDB is not running at {MY_HOST}:{MY_PORT} ({e}); start it (./dev.sh test does)")


@pytest.fixture
def my_db(my_server: None) -> Iterator[Callable[[str], DatabaseUrl]]:
    names: list[str] = []

    def make(prefix: str = "db", create: bool = True) -> DatabaseUrl:
        name = unique(prefix)
        names.append(name)
        if create:
            with my_connect() as conn, conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return parse_database_url(f"mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/{name}")

    yield make
    with my_connect() as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"DROP ROLE IF EXISTS {my_owner_role(name)}")  # made by a restore into it


@pytest.fixture
def my_user(my_server: None) -> Iterator[Callable[[str], str]]:
    """Factory for throw-away users identified by ``password``; dropped afterwards."""
    users: list[str] = []

    def make(password: str) -> str:
        user = unique("u")[:32]
        with my_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        users.append(user)
        return user

    yield make
    with my_connect() as conn, conn.cursor() as cur:
        for user in users:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


# ---- dumps on disk (the engine compresses; these tests keep the raw dump) ------------------------


class DumpFile:
    def __init__(self, path: Path, info: DatabaseInfo) -> None:
        self.path = path
        self.info = info

    def chunks(self, size: int = CHUNK, limit: int | None = None) -> Iterator[bytes]:
        left = self.path.stat().st_size if limit is None else limit
        with self.path.open("rb") as f:
            while left > 0:
                chunk = f.read(min(size, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk


@pytest.fixture
def dump_to_file(tmp_path: Path) -> Callable[[object], DumpFile]:
    """``dump_to_file(adapter)`` streams the adapter's raw dump into a file via ``write``."""
    counter = [0]

    def run(adapter: object) -> DumpFile:
        counter[0] += 1
        workdir = tmp_path / f"work{counter[0]}"
        workdir.mkdir(mode=0o700)
        path = tmp_path / f"dump{counter[0]}.raw"
        with path.open("wb") as f:
            info = adapter.dump(f.write, workdir)  # type: ignore[attr-defined]
        assert info.raw_size == path.stat().st_size
        assert list(workdir.iterdir()) == [], "the adapter left files in its workdir"
        return DumpFile(path, info)

    return run


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "restore-work"
    d.mkdir(mode=0o700)
    return d


# ---- messages ---------------------------------------------------------------------------------------

def assert_actionable(err: BaseException, *fragments: str, secrets: tuple[str, ...] = (SECRET,)) -> str:
    text = str(err)
    assert "\n" not in text, text
    assert " — " in text, f"no hint for the operator: {text}"
    for s in secrets:
        assert s not in text, text
    for f in fragments:
        assert f in text, text
    return text


# ---- off-site: moto_server S3 endpoint and GPG keys (tests/integration/offsite_fixtures.py) --------
from tests.integration.offsite_fixtures import (  # noqa: E402, F401
    ftp_server,
    gpg_keys,
    moto_factory,
    moto_s3,
    moto_server,
)
