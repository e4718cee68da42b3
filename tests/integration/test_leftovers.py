"""Scratch directories of killed runs are removed by ``LocalRepository.clean_leftovers()``; a live
owner's never are. The runs are real processes (the restore and verification code paths), killed
with SIGKILL while their scratch directory exists."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from tests.conftest import make_settings, make_small_project
from tests.integration.conftest import PG_HOST, PG_PORT, PG_USER

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


class Child:
    """A Python process running ``code`` in its own session; killed (with what it started) at the end."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                                     stdout=subprocess.PIPE, text=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(20)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def make(code: str, *args: str) -> Child:
        children.append(Child(code, *args))
        return children[-1]

    yield make
    for c in children:
        c.kill()


def wait_for(find: Callable[[], Path | None], child: Child, what: str, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        assert child.proc.poll() is None, f"the run ended before its {what} appeared"
        time.sleep(0.005)
    raise AssertionError(f"no {what} after {timeout} s")


def scratch_in(root: Path, prefix: str, *, with_file: bool = False) -> Callable[[], Path | None]:
    def find() -> Path | None:
        for p in root.iterdir() if root.is_dir() else ():
            if p.name.startswith(prefix) and p.is_dir() and (not with_file or any(p.iterdir())):
                return p
        return None

    return find


def kill_processes_using(path: Path) -> None:
    """pg_restore runs in a session of its own and outlives its killed parent: end it (by its pid)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if str(path).encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                continue


RESTORE = """
import sys
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.dburl import parse_database_url
from erp_backup.restore import restore
restore(LocalRepository(sys.argv[1]), target_dir=None, backup_id=sys.argv[2],
        target_db=parse_database_url(sys.argv[3]), jobs=2)
"""

VERIFY = """
import sys
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.verify import verify_committed
print(verify_committed(LocalRepository(sys.argv[1]), sys.argv[2]).problems, flush=True)
"""


def test_a_killed_parallel_restore_leaves_its_spool_and_the_next_run_removes_it(
        tmp_path: Path, pg_db, pg_sql, spawn) -> None:
    src = pg_db("spool")
    pg_sql(src, "CREATE TABLE t (id int PRIMARY KEY, payload text)")
    pg_sql(src, "INSERT INTO t SELECT g, md5(g::text) || repeat(md5((g*7)::text), 8) FROM generate_series(1, 150000) g")
    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"),
                      db=f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{src.name}")
    sid = run_backup(s, BackupKind.FULL).manifest.id.value
    repo = LocalRepository(s.storage.local_dir)
    target = pg_db("spool_r", create=False)

    run = spawn(RESTORE, str(repo.root), sid, target.redacted())
    spool = wait_for(scratch_in(repo.root, ".scratch-restore-", with_file=True), run, "spool directory")
    run.kill()
    kill_processes_using(spool)
    assert spool.is_dir() and any(spool.iterdir()), "the killed restore left nothing: the test proves nothing"

    assert repo.clean_leftovers() == [spool.name]
    assert not spool.exists()
    assert [i.value for i in repo.list_ids()] == [sid]


def big_sqlite(path: Path, mb: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB)")
    conn.executemany("INSERT INTO blobs(body) VALUES (?)", ((os.urandom(4096),) for _ in range(mb * 256)))
    conn.commit()
    conn.close()


def test_a_killed_verification_leaves_its_directory_and_the_next_run_removes_it(tmp_path: Path, spawn) -> None:
    db = tmp_path / "db" / "big.sqlite3"
    db.parent.mkdir()
    big_sqlite(db, 60)
    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"), db=db, verify="quick")
    sid = run_backup(s, BackupKind.FULL).manifest.id.value
    repo = LocalRepository(s.storage.local_dir)

    run = spawn(VERIFY, str(repo.root), sid)
    tmp = wait_for(scratch_in(repo.root, ".scratch-verify-"), run, "verification directory")
    assert repo.clean_leftovers() == [], "removed the directory of a live verification"
    assert tmp.is_dir()
    run.kill()

    assert tmp.is_dir(), "the killed verification left nothing: the test proves nothing"
    assert repo.clean_partials() == [tmp.name]  # the backup's prepare step calls it
    assert not tmp.exists() and [i.value for i in repo.list_ids()] == [sid]


HOLD = """
import os, sys, time
from erp_backup.adapters.storage.local import LocalRepository
with LocalRepository(sys.argv[1]).scratch(sys.argv[2]) as p:
    if sys.argv[3] == "fork" and os.fork() == 0:
        time.sleep(3600)  # a child that inherited the directory's lock: the work goes on
    print(p.name, os.getpid(), flush=True)
    time.sleep(3600)
"""


def test_live_owners_keep_their_directories(tmp_path: Path, spawn) -> None:
    repo = LocalRepository(tmp_path / "backups")
    repo.ensure()
    holder = spawn(HOLD, str(repo.root), "restore", "-")
    name = holder.proc.stdout.readline().split()[0]  # type: ignore[union-attr]
    forked = spawn(HOLD, str(repo.root), "verify", "fork")
    forked_name = forked.proc.stdout.readline().split()[0]  # type: ignore[union-attr]
    mine = repo.root / f".restore-20261128T020000Z-full-{os.getpid()}"
    mine.mkdir()
    legacy = repo.root / "erp-backup-verify-k2n8x_q1"  # no pid: kept until the machine rebooted
    legacy.mkdir()
    (repo.root / "20261128T020000Z-full.partial").mkdir()

    assert repo.clean_leftovers() == []
    assert {p.name for p in repo.root.iterdir()} == {name, forked_name, mine.name, legacy.name,
                                                    "20261128T020000Z-full.partial"}

    holder.kill()
    forked.kill()  # its forked child still holds the lock (and lives on in the session)
    assert repo.clean_leftovers() == [name]
    os.killpg(forked.proc.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert repo.clean_leftovers() == [forked_name]

    before_boot = time.time() - time.monotonic() - 3600
    os.utime(legacy, (before_boot, before_boot))
    assert repo.clean_leftovers() == [legacy.name]
    assert {p.name for p in repo.root.iterdir()} == {mine.name, "20261128T020000Z-full.partial"}


def test_a_reused_pid_does_not_keep_a_dead_runs_directory(tmp_path: Path, spawn) -> None:
    """The pid in the name now belongs to a process started after the directory was last written."""
    repo = LocalRepository(tmp_path / "backups")
    repo.ensure()
    other = spawn("import time; print('up', flush=True); time.sleep(3600)")
    assert other.proc.stdout.readline() == "up\n"  # type: ignore[union-attr]
    old = repo.root / f".restore-20261128T020000Z-full-{other.proc.pid}"
    old.mkdir()
    (old / "spool.pgdump").write_bytes(b"x" * 1000)
    past = time.time() - 600
    os.utime(old, (past, past))
    assert repo.clean_leftovers() == [old.name]
    new = repo.root / f"erp-backup-verify-{other.proc.pid}-abc_123"
    new.mkdir()  # written after the process started: it may be its own
    assert repo.clean_leftovers() == []
