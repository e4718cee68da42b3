"""A killed ``erp-backup backup full`` leaves no process behind: neither Prefect's temporary API
server (uvicorn, ~210 MB) nor a database client, whatever the moment of the SIGKILL; and the next
backup still succeeds.

Real CLI, real ephemeral Prefect (no PREFECT_API_URL; one PREFECT_HOME for the module, created by
the first run), real signals. Every run gets a caller token in ERP_BACKUP_RUN_TOKEN: the CLI chains
its own after it, so every process of the run carries it, which lets these tests find them all in
/proc; they also remember every process seen descending from the CLI, token or not.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from erp_backup.core.dburl import DatabaseUrl
from tests import procs
from tests.conftest import CLI, REPO, cli_env, make_settings, make_small_project, run_cli, write_config
from tests.integration.conftest import pg_connect
from tests.integration.test_crash import make_big_tree

pytestmark = pytest.mark.integration


@dataclass
class Project:
    config: Path
    backups: Path
    db: Path
    home: Path  # PREFECT_HOME, shared by every run of the module


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_home: Path) -> Project:
    tmp = tmp_path_factory.mktemp("reap")
    root = make_small_project(tmp / "erp")
    make_big_tree(root, megabytes=128)  # archive and verify take long enough to be caught at
    db = tmp / "db" / "app.sqlite3"
    db.parent.mkdir()
    with closing(sqlite3.connect(db)) as conn:  # rollback journal: an EXCLUSIVE transaction stops readers
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO customers(name) VALUES (?)", [(f"c{i}",) for i in range(500)])
        conn.commit()
    s = make_settings(tmp, root=root, db=db)
    return Project(write_config(tmp / "config.toml", s), s.storage.local_dir, db, prefect_home)


class Run:
    """``erp-backup --config C backup full`` in the background, output to files (never a full pipe)."""

    def __init__(self, config: Path, home: Path, out_dir: Path, label: str,
                 args: tuple[str, ...] = ("backup", "full")) -> None:
        self.token = uuid.uuid4().hex
        self.label = label
        self.out = out_dir / f"{label}.out"
        self.err = out_dir / f"{label}.err"
        env = cli_env(PREFECT_HOME=str(home), ERP_BACKUP_RUN_TOKEN=self.token,
                      ERP_BACKUP_RUNNER="flow",  # without a server the CLI runs in-process: force the flow
                      PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")  # 20 s is short on a busy machine
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([*CLI, "--config", str(config), *args], env=env, cwd=REPO,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.started = time.monotonic()
        self.seen: dict[procs.Proc, str] = {}

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def track(self) -> None:
        self.seen.update(procs.descendants(self.proc.pid))

    def wait_for(self, moment: Callable[[], bool], what: str, timeout: float = 240, interval: float = 0.005) -> float:
        """Poll ``moment`` every ``interval`` (and the process tree every ~100 ms); seconds since launch."""
        last_track = 0.0
        while not moment():
            now = time.monotonic()
            assert self.proc.poll() is None, \
                f"[{self.label}] the run ended (rc={self.proc.returncode}) before {what}: {self.stderr()[-1500:]}"
            assert now - self.started < timeout, f"[{self.label}] never saw {what}: {self.stderr()[-1500:]}"
            if now - last_track > 0.1:
                self.track()
                last_track = now
            time.sleep(interval)
        return time.monotonic() - self.started

    def kill_and_check(self) -> float:
        """SIGKILL the CLI; assert that nothing of the run is alive 5 s later; seconds it took."""
        self.track()
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL
        self.seen.update(procs.carriers(self.token))
        left, took = procs.wait_until_gone(self.token, self.seen, timeout=5.0)
        assert not left, f"[{self.label}] still alive 5 s after the SIGKILL: {left}"
        return took

    def cleanup(self) -> None:
        procs.kill_all(self.token, self.seen)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _partial_has(backups: Path, name: str) -> Callable[[], bool]:
    return lambda: any((p / name).exists() for p in backups.glob("*.partial"))


def _growing(path_glob: str, backups: Path) -> Callable[[], bool]:
    last = [-1]

    def check() -> bool:
        sizes = [p.stat().st_size for p in backups.glob(path_glob) if p.exists()]
        size = max(sizes, default=-1)
        grew = size > 0 and last[0] > 0 and size > last[0]
        last[0] = size
        return grew

    return check


def _uvicorn(run: Run) -> Callable[[], bool]:
    return lambda: any("uvicorn" in c for c in procs.carriers(run.token).values())


def _check_pipe_not_inherited(run: Run) -> None:
    """The watchdog's pipe is held by the CLI and the watchdog only: not by Prefect's server."""
    kids = procs.descendants(run.proc.pid)
    watchdogs = [p for p, c in kids.items() if "_watchdog.py" in c]
    servers = [p for p, c in kids.items() if "uvicorn" in c]
    assert len(watchdogs) == 1 and servers, kids
    pipe = procs.pipe_of(watchdogs[0][0], 0)
    assert pipe is not None
    assert sorted(procs.holders(pipe, [p for p, _ in kids] + [run.proc.pid])) == \
        sorted([run.proc.pid, watchdogs[0][0]])


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for r in started:
        r.cleanup()


def test_sigkill_at_any_moment_leaves_no_process_and_the_next_backup_succeeds(
        project: Project, tmp_path: Path, runs: list[Run]) -> None:
    backups = project.backups
    report: list[str] = []

    def launch(label: str) -> Run:
        r = Run(project.config, project.home, tmp_path, label)
        runs.append(r)
        return r

    # 1. right after launch: before the CLI has started anything (or while it starts its watchdog)
    r = launch("launch")
    time.sleep(0.05)
    took = r.kill_and_check()
    report.append(f"launch: clean {took:.2f} s after the kill")

    # 2. Prefect's temporary server is starting, the flow has not started
    r = launch("server-start")
    at = r.wait_for(_uvicorn(r), "Prefect's server process")
    took = r.kill_and_check()
    assert "uvicorn" in r.stderr() and "left behind by the run that just ended" in r.stderr(), r.stderr()[-800:]
    report.append(f"server-start: killed at {at:.1f} s, clean {took:.2f} s later")

    # 3. during the database dump (held there by an EXCLUSIVE transaction on the SQLite database)
    holder = sqlite3.connect(project.db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        r = launch("dump")
        at = r.wait_for(_partial_has(backups, ".work"), "the dump stage")
        time.sleep(0.2)  # inside SQLite's busy wait
        _check_pipe_not_inherited(r)
        took = r.kill_and_check()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "uvicorn" in r.stderr(), r.stderr()[-800:]
    report.append(f"dump: killed at {at:.1f} s, clean {took:.2f} s later")

    # 4. while files.tar.zst grows (the run got the lock and cleaned the previous leftover)
    r = launch("archive")
    at = r.wait_for(_growing("*.partial/files.tar.zst", backups), "the files archive growing")
    took = r.kill_and_check()
    report.append(f"archive: killed at {at:.1f} s, clean {took:.2f} s later")

    # 5. after the seal: manifest.json written, verification running
    r = launch("sealed")
    at = r.wait_for(_partial_has(backups, "manifest.json"), "the sealed set")
    took = r.kill_and_check()
    report.append(f"sealed: killed at {at:.1f} s, clean {took:.2f} s later")

    # the next backup succeeds and is listed; its normal exit leaves nothing either, and no message
    r = launch("final")
    assert r.proc.wait(300) == 0, r.stderr()[-1500:]
    new_id = r.out.read_text().strip().splitlines()[-1]
    left, _ = procs.wait_until_gone(r.token, r.seen, timeout=5.0)
    assert not left, f"a normal exit left {left}"
    assert "left behind" not in r.stderr(), r.stderr()[-800:]
    res = run_cli("--config", str(project.config), "list", "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    ids = [s["id"] for s in listed["sets"]]
    # the only other set there may be: the "sealed" run's, had it committed in the ms before its kill
    assert new_id in ids and len(ids) <= 2 and listed["incomplete"] == [], listed
    report.append(f"final: {new_id} in {time.monotonic() - r.started:.1f} s")
    print("\n".join(report))


def test_sigkill_during_pg_dump_leaves_no_pg_dump(tmp_path: Path, prefect_home: Path, runs: list[Run],
                                                   pg_db: Callable[[str], DatabaseUrl],
                                                   pg_sql: Callable[..., list[tuple[object, ...]]]) -> None:
    url = pg_db("reap")
    pg_sql(url, "CREATE TABLE orders (id integer PRIMARY KEY, note text)")
    pg_sql(url, "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
    root = make_small_project(tmp_path / "erp")
    config = write_config(tmp_path / "config.toml", make_settings(tmp_path, root=root, db=url.redacted()))

    holder = pg_connect(url.name)  # pg_dump waits for its ACCESS SHARE lock on "orders": alive, connected
    try:
        with holder.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        r = Run(config, prefect_home, tmp_path, "pg_dump")
        runs.append(r)

        def dumping() -> bool:
            return any("pg_dump --format" in c and "--snapshot" in c for c in procs.carriers(r.token).values())

        at = r.wait_for(dumping, "pg_dump running")
        dumps = {p: c for p, c in procs.carriers(r.token).items() if "pg_dump --format" in c}
        backend: list[tuple[object, ...]] = []

        def blocked() -> bool:  # pg_dump's own connection, waiting for the lock
            backend[:] = pg_sql(url, "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = "
                                "'Lock' AND query LIKE 'LOCK TABLE %%ACCESS SHARE%%'", (url.name,))
            return bool(backend)

        waiting = r.wait_for(blocked, "pg_dump waiting for its lock", interval=0.05)
        took = r.kill_and_check()
        assert dumps and not any(procs.alive(p) for p in dumps), dumps
        assert "pg_dump" in r.stderr() and "uvicorn" in r.stderr(), r.stderr()[-800:]
    finally:
        with holder.cursor() as cur:
            cur.execute("ROLLBACK")
        holder.close()
    # and its server connection ends too
    deadline = time.monotonic() + 5
    while pg_sql(url, "SELECT pid FROM pg_stat_activity WHERE pid = %s", (backend[0][0],)):
        assert time.monotonic() < deadline, "pg_dump's connection is still open 5 s after the lock was released"
        time.sleep(0.05)
    print(f"pg_dump: seen at {at:.1f} s, waiting at {waiting:.1f} s, clean {took:.2f} s after the kill")


def test_sigkill_of_a_restore_test_leaves_no_prefect_server(project: Project, tmp_path: Path,
                                                            runs: list[Run]) -> None:
    """A review killed ``erp-backup restore-test`` (a flow, Prefect's temporary server) and found the
    server still running, parent pid 1: the watchdog guarded backup, verify and restore only."""
    res = run_cli("--config", str(project.config), "backup", "full", timeout=300,
                  env=cli_env(ERP_BACKUP_RUNNER="plain"))
    assert res.returncode == 0, res.stderr[-1500:]
    r = Run(project.config, project.home, tmp_path, "restore-test", args=("restore-test",))
    runs.append(r)
    r.wait_for(_uvicorn(r), "Prefect's server process")
    r.kill_and_check()
