"""No password is ever written to a file that could outlive the process, nor put on a command line.

MariaDB: mariadb-dump reads its credentials from ``/dev/fd/N`` (an inherited memfd); the restore
runs no client at all. PostgreSQL: pg_dump/pg_restore get ``PGPASSWORD`` in their environment
(readable only by the same user), never a ``.pgpass``. Checked while the client runs (its
``/proc/<pid>/cmdline`` and ``environ``, every file under the work and temp directories), after it
ended, and after a SIGKILL of the process that ran the dump."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from erp_backup.adapters.databases.mysql import MysqlAdapter
from erp_backup.adapters.databases.mysql_confine import owner_role as my_owner_role
from erp_backup.adapters.databases.postgres import PostgresAdapter
from erp_backup.adapters.databases.postgres_confine import owner_role as pg_owner_role
from tests.integration.conftest import SECRET

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ROWS = 60000


def children() -> dict[int, tuple[bytes, bytes]]:
    """Our live child processes: pid -> (cmdline, environ)."""
    me = str(os.getpid())
    out: dict[int, tuple[bytes, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[1] != me:
                continue
            out[int(entry)] = (Path(f"/proc/{entry}/cmdline").read_bytes(),
                               Path(f"/proc/{entry}/environ").read_bytes())
        except (OSError, IndexError):
            continue
    return out


def files_holding(secret: str, *dirs: Path) -> list[str]:
    needle = secret.encode()
    found = []
    for d in dirs:
        for dirpath, _, names in os.walk(d):
            for n in names:
                p = os.path.join(dirpath, n)
                try:
                    with open(p, "rb") as f:
                        if needle in f.read(1 << 20):
                            found.append(p)
                except OSError:
                    continue
    return found


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files of this process (tempfile) and its children (TMPDIR) land here."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def mysql_with_password(my_db, my_sql, my_user):  # type: ignore[no-untyped-def]
    src = my_db("pw")
    my_sql(src, "CREATE TABLE t (id INT PRIMARY KEY, note VARCHAR(100))")
    my_sql(src, f"INSERT INTO t SELECT seq, REPEAT('n', 90) FROM seq_1_to_{ROWS}")
    user = my_user(SECRET)
    my_sql(None, f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, RELOAD ON *.* TO '{user}'@'%'")
    return replace(src, user=user, password=SECRET)


@pytest.fixture
def pg_with_password(pg_db, pg_sql, pg_role):  # type: ignore[no-untyped-def]
    src = pg_db("pw")
    pg_sql(src, "CREATE TABLE t (id int PRIMARY KEY, note text)")
    pg_sql(src, f"INSERT INTO t SELECT g, repeat('n', 90) FROM generate_series(1, {ROWS}) g")
    role = pg_role(src.name)
    pg_sql(src, f"ALTER ROLE \"{role}\" PASSWORD '{SECRET}'")
    pg_sql(src, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{role}\"")
    return replace(src, user=role, password=SECRET)


@pytest.mark.parametrize("engine", ["mysql", "postgresql"])
def test_no_password_on_disk_or_on_a_command_line_while_dumping_and_restoring(
        engine: str, request: pytest.FixtureRequest, workdir: Path, private_tmp: Path, tmp_path: Path) -> None:
    src = request.getfixturevalue("mysql_with_password" if engine == "mysql" else "pg_with_password")
    adapter = MysqlAdapter(src) if engine == "mysql" else PostgresAdapter(src)
    dirs = (workdir, private_tmp)
    home_files = [Path.home() / n for n in (".pgpass", ".my.cnf", ".mylogin.cnf")]
    before = {f: f.read_bytes() if f.exists() else None for f in home_files}
    seen: list[bytes] = []
    looks = [0]
    # children this test did not start (the e2e tests' Prefect server, when the whole suite runs)
    others = set(children())

    def look() -> None:
        looks[0] += 1
        if looks[0] > 5 and looks[0] % 50:
            return  # the first chunks and every 50th: the client is running, the dump keeps its pace
        for pid, (cmdline, environ) in children().items():
            if pid in others:
                continue
            seen.append(cmdline.split(b"\0", 1)[0])
            assert SECRET.encode() not in cmdline, cmdline
            if engine == "mysql":  # no MYSQL_PWD either (PostgreSQL: PGPASSWORD, by design)
                assert SECRET.encode() not in environ
        assert files_holding(SECRET, *dirs) == []
        assert {f: f.read_bytes() if f.exists() else None for f in home_files} == before

    dump = tmp_path / "dump.raw"
    with dump.open("wb") as f:
        def write(chunk: bytes) -> None:
            look()
            f.write(chunk)

        info = adapter.dump(write, workdir)
    assert any(b"dump" in name for name in seen), f"no dump client was seen running: {seen}"
    look()
    assert list(workdir.iterdir()) == []

    seen.clear()
    looks[0] = 0

    def chunks() -> Iterator[bytes]:
        with dump.open("rb") as f:
            while chunk := f.read(1 << 16):
                look()
                yield chunk

    target = replace(src, name=src.name + "_r")
    request.getfixturevalue("my_db" if engine == "mysql" else "pg_db")  # cleanup below
    try:
        superuser = replace(target, user="root" if engine == "mysql" else "postgres", password="")
        counts = adapter.restore(chunks(), info, superuser, replace=False, workdir=workdir)
        assert counts == {"t": ROWS} if engine == "mysql" else counts == {"public.t": ROWS}
        if engine == "mysql":
            assert seen == [], f"the MySQL restore started a client: {seen}"
        look()
    finally:
        if engine == "mysql":
            request.getfixturevalue("my_sql")(None, f"DROP DATABASE IF EXISTS `{target.name}`")
            request.getfixturevalue("my_sql")(None, f"DROP ROLE IF EXISTS {my_owner_role(target.name)}")
        else:
            pg_sql = request.getfixturevalue("pg_sql")
            pg_sql(replace(target, name="postgres"), f'DROP DATABASE IF EXISTS "{target.name}" WITH (FORCE)')
            pg_sql(replace(target, name="postgres"), f'DROP ROLE IF EXISTS "{pg_owner_role(target.name)}"')


KILLED_DUMP = """
import sys, time
from dataclasses import replace
from pathlib import Path
from erp_backup.adapters.databases.mysql import MysqlAdapter
from erp_backup.core.dburl import parse_database_url
url = replace(parse_database_url(sys.argv[1]), password=sys.argv[2])

def write(chunk):
    print("dumping", flush=True)
    time.sleep(3600)

MysqlAdapter(url).dump(write, Path(sys.argv[3]))
"""


def test_a_killed_mysql_dump_leaves_no_password_behind(mysql_with_password, workdir: Path,
                                                       private_tmp: Path) -> None:
    url = mysql_with_password
    plain = f"mysql://{url.user}@{url.host}:{url.port}/{url.name}"
    p = subprocess.Popen([sys.executable, "-c", KILLED_DUMP, plain, SECRET, str(workdir)],
                         stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == b"dumping\n", "the dump did not start"
        assert files_holding(SECRET, workdir, private_tmp) == [], "a file holds the password during the dump"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    time.sleep(0.2)
    assert files_holding(SECRET, workdir, private_tmp) == []
    assert list(workdir.iterdir()) == []
