"""SQLite online: a separate writer process commits multi-row transactions into two related tables of a
WAL-mode database inside the project root while backups run. Every restored database is consistent,
holds exactly the row counts its manifest recorded, and the live database files never reach the files
archive."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from tests.conftest import make_settings, make_small_project, tree_state

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)

WRITER = r"""
import os, sqlite3, sys
db, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, timeout=60, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=NORMAL")
n = 0
while not os.path.exists(stop):
    k = 2 + n % 6
    conn.execute("BEGIN IMMEDIATE")
    oid = conn.execute("INSERT INTO orders(n_lines, total) VALUES (?, 0)", (k,)).lastrowid
    conn.executemany("INSERT INTO order_lines(order_id, amount, payload) VALUES (?, ?, ?)",
                     [(oid, i + 1, os.urandom(300)) for i in range(k)])
    conn.execute("UPDATE orders SET total = (SELECT SUM(amount) FROM order_lines WHERE order_id = ?) "
                 "WHERE id = ?", (oid, oid))
    conn.execute("COMMIT")
    n += 1
conn.close()
"""


def counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("orders", "order_lines")}
    finally:
        conn.close()


def invariant_violations(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    """Orders whose line count or total disagrees with their lines, and orphan lines."""
    bad = conn.execute("""
        SELECT o.id, o.n_lines, COUNT(l.id), o.total, COALESCE(SUM(l.amount), 0)
        FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id
        GROUP BY o.id HAVING COUNT(l.id) != o.n_lines OR COALESCE(SUM(l.amount), 0) != o.total""").fetchall()
    orphans = conn.execute(
        "SELECT l.id FROM order_lines l LEFT JOIN orders o ON o.id = l.order_id WHERE o.id IS NULL").fetchall()
    return bad + orphans


@pytest.fixture
def live_db(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(project root, database inside it) with a writer process running; stopped afterwards."""
    root = make_small_project(tmp_path / "erp")
    db = root / "db.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript("""
        CREATE TABLE orders (id INTEGER PRIMARY KEY, n_lines INTEGER NOT NULL, total INTEGER NOT NULL);
        CREATE TABLE order_lines (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL REFERENCES orders(id),
                                  amount INTEGER NOT NULL, payload BLOB);
        CREATE INDEX order_lines_order ON order_lines(order_id);
    """)
    # ~20 MB to copy, so the copy overlaps many of the writer's transactions
    conn.executemany("INSERT INTO orders(id, n_lines, total) VALUES (?, 1, 1)", [(i,) for i in range(1, 20001)])
    conn.executemany("INSERT INTO order_lines(order_id, amount, payload) VALUES (?, 1, ?)",
                     [(i, os.urandom(900)) for i in range(1, 20001)])
    conn.commit()
    conn.close()
    stop = tmp_path / "stop-writer"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop)])
    try:
        deadline = time.monotonic() + 20
        while counts(db)["orders"] < 20050:  # the writer is really writing
            assert proc.poll() is None, "writer died"
            assert time.monotonic() < deadline, "writer makes no progress"
            time.sleep(0.02)
        yield root, db
    finally:
        stop.touch()
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, "the writer failed (see its stderr above)"


def test_backup_during_writes_restores_a_consistent_database(tmp_path: Path, live_db: tuple[Path, Path]) -> None:
    root, db = live_db
    s = make_settings(tmp_path, root=root, db=db)
    repo = LocalRepository(s.storage.local_dir)
    results = []
    for i, kind in enumerate([BackupKind.FULL, BackupKind.INCREMENTAL, BackupKind.INCREMENTAL]):
        before = counts(db)
        assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
        res = run_backup(s, kind, now=T0 + timedelta(minutes=i))
        after = counts(db)
        m = res.manifest
        assert m.database is not None and m.database.engine == "sqlite"
        assert m.database.database == "db.sqlite3"  # relative to the root: restores next to the files
        recorded = m.database.tables
        # a snapshot taken while the writer ran: strictly between the counts seen before and after
        assert before["orders"] <= recorded["orders"] <= after["orders"]
        assert after["orders"] > before["orders"], "the writer was not writing during the backup"
        index = {e.path for e in m.files}
        assert not {"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "db.sqlite3-journal"} & index
        assert {"manage.py", "app/models.py"} <= index
        results.append(res)

    for res in results:
        m = res.manifest
        target = tmp_path / f"restore-{m.id}"
        rep = restore(repo, target_dir=target, backup_id=m.id.value)
        restored = target / "db.sqlite3"
        assert rep.database is not None and restored.is_file()
        assert not Path(f"{restored}-wal").exists()
        conn = sqlite3.connect(f"file:{restored}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            got = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("orders", "order_lines")}
            assert got == {t: m.database.tables[t] for t in got}  # type: ignore[union-attr]
            assert invariant_violations(conn) == []
        finally:
            conn.close()
        # the files restored with it are the project's files, without the live database files
        files = tree_state(target, exclude=(), skip={"db.sqlite3"})
        assert files == tree_state(root, skip={"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"})


@pytest.mark.parametrize("journal", ["DELETE", "WAL"])
def test_a_locked_database_fails_the_dump_after_the_configured_timeout(journal: str, tmp_path: Path) -> None:
    """Before: Python's backup API retried a locked source forever and the backup hung."""
    from erp_backup.core.errors import DatabaseError
    from tests.integration.conftest import assert_actionable

    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    s = s.model_copy(update={"database": s.database.model_copy(update={"timeout_s": 2.0})})
    db = Path(s.live_database().name)  # type: ignore[union-attr]
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute(f"PRAGMA journal_mode={journal}")
    if journal == "WAL":  # a WAL reader waits only for a connection in exclusive locking mode
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # a writer in the middle of a commit: readers wait
    holder.execute("UPDATE customers SET name = name WHERE id = 1")
    try:
        start = time.monotonic()
        with pytest.raises(DatabaseError) as e:
            run_backup(s, BackupKind.FULL, now=T0)
        assert time.monotonic() - start < 30
        assert_actionable(e.value, f"SQLite database {db} stayed locked", "2 s", "timeout_s")
        assert LocalRepository(s.storage.local_dir).scan().ids == []  # no set, nothing half-made
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert run_backup(s, BackupKind.FULL, now=T0 + timedelta(minutes=1)).manifest.id.value.endswith("-full")
