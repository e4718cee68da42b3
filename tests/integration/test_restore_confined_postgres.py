"""A PostgreSQL restore runs with the rights of the target database only (postgres_confine).

The crafted dumps are real ``pg_dump -Fc -Z0`` dumps of a source database whose table comment is a
filler; the comment's statement in the table of contents is then overwritten, same length, by the
attack: ``pg_restore`` executes that text as it is. Where harmless, each shape is first restored
the old way (plain ``pg_restore`` as the superuser) to show it is a real attack. Then the restore
must fail in one line, and nothing outside the target may change: a marker file never appears,
another database, the server's settings, the roles are as before; no temporary role is left."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

from erp_backup.adapters.databases.postgres import PostgresAdapter
from erp_backup.adapters.databases.postgres_confine import TEMP_PREFIX, owner_role
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import RestoreError
from erp_backup.core.models import DatabaseInfo
from tests.integration.conftest import PG_HOST, PG_PORT, PG_USER, assert_actionable
from tests.integration.test_restore_confined_mysql import killed_inside

pytestmark = pytest.mark.integration

Sql = Callable[..., list[tuple[object, ...]]]
FILLER = "x" * 600
COMMENT = f"COMMENT ON TABLE public.t IS '{FILLER}';".encode()

# name -> (payload: {m} marker file, {v} the other database; whether the old restore as superuser
# shows the attack with the marker file)
SHAPES: dict[str, tuple[str, bool]] = {
    "copy to program": ("COPY (SELECT 1) TO PROGRAM 'touch {m}'", True),
    "copy to a server file": ("COPY (SELECT 1) TO '{m}'", True),
    "set role to the superuser first": ("SET ROLE postgres; COPY (SELECT 1) TO PROGRAM 'touch {m}'", True),
    "reset role first": ("RESET ROLE; COPY (SELECT 1) TO PROGRAM 'touch {m}'", True),
    "session authorization": ("SET SESSION AUTHORIZATION postgres; COPY (SELECT 1) TO PROGRAM 'touch {m}'", True),
    "read a server file": ("CREATE TABLE public.leak AS SELECT pg_read_file('/etc/hostname') AS x", False),
    "alter system": ("ALTER SYSTEM SET work_mem = '77MB'", False),
    "settings of another role": ("ALTER ROLE postgres SET work_mem = '77MB'", False),
    "untrusted extension": ("CREATE EXTENSION file_fdw SCHEMA public", False),
    "dblink into another database": ("CREATE EXTENSION dblink SCHEMA public; SELECT public.dblink_exec("
                                     "'host=127.0.0.1 user=postgres dbname={v}', 'DELETE FROM t')", False),
    "untrusted language": ("CREATE FUNCTION public.evil() RETURNS int LANGUAGE c AS '$libdir/dblink', "
                           "'dblink_exec'", False),
    "create a superuser": ("CREATE ROLE erpb_evil SUPERUSER LOGIN", False),
    "grant a predefined role": ("GRANT pg_execute_server_program TO CURRENT_USER", False),
    "drop another database": ("DROP DATABASE {v}", False),
    "rename another database": ("ALTER DATABASE {v} RENAME TO erpb_evil_db", False),
}


@pytest.fixture(scope="module")
def honest_dump(pg_server: None) -> bytes:
    """A real dump of table t (rows 1, 2) whose comment is the filler the attacks overwrite."""
    name = f"erpb_crafted_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        with psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=name) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
            cur.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
            cur.execute(f"COMMENT ON TABLE t IS '{FILLER}'")
        conn.close()
        raw = subprocess.run(["pg_dump", "-Fc", "-Z0", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, name],
                             capture_output=True, check=True, timeout=60).stdout
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    assert raw.count(COMMENT) == 1
    return raw


def craft(raw: bytes, payload: str) -> bytes:
    new = payload.encode()
    assert len(new) <= len(COMMENT)
    return raw.replace(COMMENT, new.ljust(len(COMMENT)))


@pytest.fixture
def marker_dir() -> Iterator[Path]:
    """A directory the server's OS user can write (a COPY TO file is written by the server)."""
    d = Path("/tmp") / f"erpb-marker-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def info() -> DatabaseInfo:
    return DatabaseInfo(engine="postgresql", database="src", server_version="15", dump_tool="pg_dump",
                        dump_format="pg_dump-custom", tables={"public.t": 2})


def outside(pg_sql: Sql, victim: DatabaseUrl) -> tuple[object, ...]:
    """What the attacks would change outside the target database."""
    postgres = DatabaseUrl(engine="postgresql", name="postgres")
    return (pg_sql(victim, "SELECT id FROM t ORDER BY id"),
            pg_sql(postgres, "SELECT datname FROM pg_database WHERE datname = %s", (victim.name,)),
            pg_sql(postgres, "SELECT count(*) FROM pg_file_settings WHERE name = 'work_mem'"),
            pg_sql(postgres, "SELECT count(*) FROM pg_db_role_setting"),
            pg_sql(postgres, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'erpb\\_evil%%' OR rolname LIKE %s",
                   (TEMP_PREFIX.replace("_", "\\_") + "%",)),
            pg_sql(postgres, "SELECT count(*) FROM pg_auth_members"))


def old_restore(dump: bytes, name: str) -> None:
    """The attack as a plain pg_restore as the superuser runs it."""
    subprocess.run(["pg_restore", "--no-owner", "--no-acl", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER,
                    "-d", name], input=dump, capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_crafted_dump_cannot_act_outside_the_target(shape: str, honest_dump: bytes, pg_db, pg_sql: Sql,
                                                      marker_dir: Path, workdir: Path) -> None:
    payload, shows_marker = SHAPES[shape]
    victim = pg_db("victim")
    pg_sql(victim, "CREATE TABLE t (id int)")
    pg_sql(victim, "INSERT INTO t VALUES (1)")
    marker = marker_dir / "MARKER"
    dump = craft(honest_dump, payload.replace("{m}", str(marker)).replace("{v}", victim.name))
    if shows_marker:
        probe = pg_db("probe")
        old_restore(dump, probe.name)
        assert marker.exists(), "the crafted dump does not do what this test says"
        marker.unlink()

    before = outside(pg_sql, victim)
    dst = pg_db("dst", create=False)
    with pytest.raises(RestoreError) as e:
        PostgresAdapter(dst).restore(iter([dump]), info(), dst, replace=False, workdir=workdir)
    assert_actionable(e.value, f"pg_restore into database '{dst.name}' failed", "tampered")
    assert not marker.exists()
    assert outside(pg_sql, victim) == before
    assert pg_sql(dst, "SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'") == [(0,)]


def test_stored_code_runs_as_the_owner_role_not_as_a_superuser(honest_dump: bytes, pg_db, pg_sql: Sql,
                                                                workdir: Path) -> None:
    """A SECURITY DEFINER function and a view restore (creating them does nothing), but run later with
    the owner role's rights, even when the superuser calls them: every restored object is the owner
    role's, none a superuser's."""
    payload = ("CREATE FUNCTION public.f() RETURNS void LANGUAGE sql SECURITY DEFINER AS "
               "'ALTER ROLE postgres SET work_mem = ''77MB'''; CREATE VIEW public.leak AS "
               "SELECT rolname, rolpassword FROM pg_authid")
    victim = pg_db("victim")
    pg_sql(victim, "CREATE TABLE t (id int)")
    before = outside(pg_sql, victim)
    dst = pg_db("dst", create=False)
    counts = PostgresAdapter(dst).restore(iter([craft(honest_dump, payload)]), info(), dst, replace=False,
                                          workdir=workdir)
    assert counts == {"public.t": 2}
    owner = owner_role(dst.name)
    owners = pg_sql(dst, "SELECT DISTINCT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                         "WHERE c.relnamespace = 'public'::regnamespace UNION SELECT r.rolname FROM pg_proc p "
                         "JOIN pg_roles r ON r.oid = p.proowner WHERE p.pronamespace = 'public'::regnamespace "
                         "UNION SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                         "WHERE d.datname = current_database()")
    assert owners == [(owner,)]
    for statement in ("SELECT public.f()", "SELECT * FROM public.leak"):
        with pytest.raises(psycopg2.Error, match="permission denied|must be superuser"):
            pg_sql(dst, statement)  # as the superuser
    assert outside(pg_sql, victim) == before
    assert pg_sql(dst, "SELECT count(*) FROM t") == [(2,)]  # the owner's data is the superuser's to read


def test_a_restore_user_that_is_no_superuser_keeps_using_what_it_restores(honest_dump: bytes, pg_db, pg_role,
                                                                         pg_sql: Sql, workdir: Path) -> None:
    role = pg_role()
    postgres = DatabaseUrl(engine="postgresql", name="postgres")
    pg_sql(postgres, f'ALTER ROLE "{role}" CREATEDB CREATEROLE')
    dst = DatabaseUrl(engine="postgresql", name=pg_db("dst", create=False).name, host=PG_HOST, port=PG_PORT,
                      user=role)
    try:
        adapter = PostgresAdapter(dst)
        assert adapter.restore(iter([honest_dump]), info(), dst, replace=False, workdir=workdir) == {"public.t": 2}
        assert adapter.restore(iter([honest_dump]), info(), dst, replace=True, workdir=workdir) == {"public.t": 2}
    finally:
        pg_sql(postgres, f'DROP DATABASE IF EXISTS "{dst.name}" WITH (FORCE)')
        pg_sql(postgres, f'DROP ROLE IF EXISTS "{owner_role(dst.name)}"')


def test_a_role_left_by_a_killed_restore_is_dropped_by_the_next(honest_dump: bytes, pg_db, pg_sql: Sql,
                                                                workdir: Path) -> None:
    dst = pg_db("dst", create=False)
    left = killed_inside("from erp_backup.adapters.databases.postgres import _admin_connection, _open\n"
                         "from erp_backup.adapters.databases.postgres_confine import confined_role\n"
                         "from erp_backup.core.dburl import parse_database_url\n"
                         f"url = parse_database_url({dst.redacted()!r})\n"
                         "admin = _admin_connection(url, 10)\n"
                         "admin.autocommit = True\n"
                         "with confined_role(admin, url, lambda db: _open(url, 10, dbname=db)) as c:\n"
                         "    print(c.login.user, flush=True)\n")
    postgres = DatabaseUrl(engine="postgresql", name="postgres")
    temp = (TEMP_PREFIX.replace("_", "\\_") + "%",)
    assert left.startswith(TEMP_PREFIX)
    assert pg_sql(postgres, "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", temp) == [(left,)]

    assert PostgresAdapter(dst).restore(iter([honest_dump]), info(), dst, replace=False,
                                        workdir=workdir) == {"public.t": 2}
    assert pg_sql(postgres, "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", temp) == []


def test_an_owner_role_given_rights_is_refused(honest_dump: bytes, pg_db, pg_sql: Sql, workdir: Path) -> None:
    dst = pg_db("dst", create=False)
    postgres = DatabaseUrl(engine="postgresql", name="postgres")
    pg_sql(postgres, f'CREATE ROLE "{owner_role(dst.name)}" NOLOGIN CREATEROLE')
    with pytest.raises(RestoreError) as e:
        PostgresAdapter(dst).restore(iter([honest_dump]), info(), dst, replace=False, workdir=workdir)
    assert_actionable(e.value, f"owner role {owner_role(dst.name)}", "CREATEROLE", "REVOKE")
    assert pg_sql(postgres, "SELECT count(*) FROM pg_database WHERE datname = %s", (dst.name,)) == [(0,)]


def test_a_restore_user_that_cannot_create_roles_restores_with_its_own_rights(
        honest_dump: bytes, pg_db, pg_role, pg_sql: Sql, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """As before this change: such a user's rights are all a crafted dump gets; the operator is told."""
    role = pg_role()
    postgres = DatabaseUrl(engine="postgresql", name="postgres")
    pg_sql(postgres, f'ALTER ROLE "{role}" CREATEDB')
    dst = pg_db("dst", create=False)
    as_role = DatabaseUrl(engine="postgresql", name=dst.name, host=PG_HOST, port=PG_PORT, user=role)
    adapter = PostgresAdapter(as_role)
    try:
        with caplog.at_level("WARNING", logger="erp_backup.databases"):
            assert adapter.restore(iter([honest_dump]), info(), as_role, replace=False, workdir=workdir) == {
                "public.t": 2}
            with pytest.raises(RestoreError):  # its own rights: no superuser's
                adapter.restore(iter([craft(honest_dump, "ALTER SYSTEM SET work_mem = '77MB'")]), info(), as_role,
                                replace=True, workdir=workdir)
        warned = [r.getMessage() for r in caplog.records if "rights of the configured user" in r.getMessage()]
        assert len(warned) == 2 and "CREATEROLE" in warned[0], caplog.text
        owner = pg_sql(postgres, "SELECT datdba::regrole::text FROM pg_database WHERE datname = %s", (dst.name,))
        assert owner == [(f'"{role}"' if not role.islower() else role,)]
    finally:
        pg_sql(postgres, f'DROP DATABASE IF EXISTS "{dst.name}" WITH (FORCE)')


def test_the_owner_role_of_a_dropped_database_is_dropped_by_the_next_restore(honest_dump: bytes, pg_db,
                                                                            pg_sql: Sql, workdir: Path) -> None:
    postgres = DatabaseUrl(engine="postgresql", name="postgres")
    first, second = pg_db("gone", create=False), pg_db("next", create=False)
    PostgresAdapter(first).restore(iter([honest_dump]), info(), first, replace=False, workdir=workdir)
    assert pg_sql(postgres, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (owner_role(first.name),)) == [(1,)]
    pg_sql(postgres, f'DROP DATABASE "{first.name}" WITH (FORCE)')  # e.g. a restore test's scratch database
    PostgresAdapter(second).restore(iter([honest_dump]), info(), second, replace=False, workdir=workdir)
    roles = {r[0] for r in pg_sql(postgres, "SELECT rolname FROM pg_roles")}
    assert owner_role(first.name) not in roles and owner_role(second.name) in roles


# a database default for search_path (its owner may set one) puts the dump's schema before pg_catalog in
# every later session: an operator there runs as whoever queries, e.g. the restore's own row count as
# the superuser (CVE-2018-1058's pattern)
HIJACK = ("CREATE SCHEMA evil; CREATE FUNCTION evil.ne(a name, b name) RETURNS bool LANGUAGE plpgsql AS "
          "$$BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {m}'''; RETURN a::text <> b::text; END$$; "
          "CREATE OPERATOR evil.<> (LEFTARG = name, RIGHTARG = name, FUNCTION = evil.ne); "
          "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = evil, pg_catalog', "
          "current_database()); END$$")


def test_a_search_path_planted_by_the_dump_does_not_run_code_as_the_superuser(
        honest_dump: bytes, pg_db, pg_sql: Sql, marker_dir: Path, workdir: Path) -> None:
    marker = marker_dir / "MARKER"
    dump = craft(honest_dump, HIJACK.replace("{m}", str(marker)))
    dst = pg_db("dst", create=False)
    adapter = PostgresAdapter(dst)
    assert adapter.restore(iter([dump]), info(), dst, replace=False, workdir=workdir) == {"public.t": 2}
    assert adapter.row_counts(dst) == {"public.t": 2}
    with pytest.raises(RestoreError):  # replacing it reads it first
        adapter.restore(iter([honest_dump]), info(), dst, replace=False, workdir=workdir)
    assert adapter.restore(iter([honest_dump]), info(), dst, replace=True, workdir=workdir) == {"public.t": 2}
    assert not marker.exists()


def test_the_cli_restore_of_a_set_with_a_crafted_dump_fails_in_one_line(honest_dump: bytes, pg_db, pg_sql: Sql,
                                                                        marker_dir: Path, tmp_path: Path) -> None:
    """End to end: a committed set whose dump was swapped (checksums resealed, as someone who can write
    the backup disk could); `erp-backup restore --target-database` exits 1 with one error line."""
    from erp_backup.adapters.storage.local import LocalRepository
    from erp_backup.core.models import BackupKind
    from erp_backup.pipeline import run_backup
    from tests.conftest import make_settings, make_small_project, run_cli, write_config
    from tests.integration.test_mysql_crafted import reseal_database

    src = pg_db("src")
    pg_sql(src, "CREATE TABLE t (id int PRIMARY KEY, note text)")
    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"), db=src.redacted())
    sid = run_backup(s, BackupKind.FULL).manifest.id.value
    marker = marker_dir / "MARKER"
    reseal_database(LocalRepository(s.storage.local_dir).set_dir(sid),
                    craft(honest_dump, f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"))
    config = write_config(tmp_path / "config.toml", s)
    dst = pg_db("dst", create=False)
    res = run_cli("--config", str(config), "restore", "--backup", sid, "--target-database",
                  dst.redacted(), timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"erp-backup: error: pg_restore into database '{dst.name}' failed") and \
        "tampered" in last, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not marker.exists()
