"""Crash: SIGKILL a full backup in the middle of writing its files archive. No set looks valid, the
listing shows the leftover as incomplete, and the next backup cleans it up and restores correctly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from tests.conftest import REPO, diff_states, make_settings, make_small_project, run_cli, tree_state, write_config

pytestmark = pytest.mark.integration

BACKUP = r"""
import sys
from erp_backup.pipeline import run_backup
from erp_backup.config import load_settings
from erp_backup.core.models import BackupKind
run_backup(load_settings(sys.argv[1]), BackupKind.FULL)
print("finished")
"""


def make_big_tree(root: Path, megabytes: int = 256) -> None:
    """~``megabytes`` of hardly compressible files, written fast: slices of one random pool."""
    rng = random.Random(5)
    pool = rng.randbytes(16 << 20)
    mib = 1 << 20
    for i in range(megabytes):
        d = root / "data" / f"d{i % 16:02d}"
        d.mkdir(parents=True, exist_ok=True)
        off = rng.randrange(0, len(pool) - mib)
        (d / f"blob-{i:04d}.bin").write_bytes(pool[off:off + mib])


def test_sigkill_mid_archive_leaves_no_set_and_the_next_backup_recovers(tmp_path: Path) -> None:
    root = make_small_project(tmp_path / "erp")
    make_big_tree(root)
    s = make_settings(tmp_path, root=root)
    config = write_config(tmp_path / "config.toml", s)
    backups = s.storage.local_dir

    proc = subprocess.Popen([sys.executable, "-c", BACKUP, str(config)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_at = -1
    try:
        deadline = time.monotonic() + 60
        last = -1
        while time.monotonic() < deadline and proc.poll() is None:
            partials = list(backups.glob("*.partial")) if backups.exists() else []
            archive = partials[0] / "files.tar.zst" if partials else None
            size = archive.stat().st_size if archive is not None and archive.exists() else -1
            if size > 0 and last > 0 and size > last:  # the archive exists and is growing
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = size
                break
            last = size
            time.sleep(0.005)
    finally:
        if proc.poll() is None and killed_at < 0:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    assert killed_at > 0, f"never saw the archive grow (rc={proc.returncode}, stderr={err.decode()[-500:]})"
    assert proc.returncode == -signal.SIGKILL and b"finished" not in out

    repo = LocalRepository(backups)
    (partial,) = repo.partials()
    assert (partial / "files.tar.zst").exists() and not (partial / "manifest.json").exists()
    assert repo.list_ids() == []

    res = run_cli("--config", str(config), "list", "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert listed["sets"] == []
    assert listed["incomplete"] == [partial.name]

    # the next backup succeeds (the lock died with the killed process), removes the leftover, restores right
    expected = tree_state(root)
    good = run_backup(s, BackupKind.FULL, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert not partial.exists() and repo.partials() == []
    assert [i.value for i in repo.list_ids()] == [good.manifest.id.value]
    listed = json.loads(run_cli("--config", str(config), "list", "--json", timeout=60).stdout)
    assert [r["id"] for r in listed["sets"]] == [good.manifest.id.value] and listed["incomplete"] == []
    target = tmp_path / "restored"
    restore(repo, target_dir=target, backup_id=good.manifest.id.value)
    problems = diff_states(expected, tree_state(target, exclude=()))
    assert not problems, problems[:5]


# ----------------------------------------------------------------------------- two backups at once


def test_second_backup_fails_naming_the_holder_or_waits_for_it(tmp_path: Path) -> None:
    """A real first backup holds the repository lock while it waits for the database (held by an
    EXCLUSIVE SQLite transaction of this test); a second backup with lock_wait_s=0 fails naming it,
    one with a wait builds on the set the first one commits."""
    import sqlite3
    import threading

    from erp_backup.core.errors import LockError

    root = make_small_project(tmp_path / "erp")
    db = tmp_path / "db" / "rollback.sqlite3"
    db.parent.mkdir()
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")
    s = make_settings(tmp_path, root=root, db=db, lock_wait_s=0)
    config = write_config(tmp_path / "config.toml", s)
    repo = LocalRepository(s.storage.local_dir)

    conn.execute("BEGIN EXCLUSIVE")  # readers now wait: the first backup blocks in its dump, lock held
    proc = subprocess.Popen([sys.executable, "-c", BACKUP, str(config)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lock = s.storage.local_dir / ".lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and str(proc.pid) in lock.read_text() and repo.partials()):
            assert proc.poll() is None, proc.communicate()[1].decode()[-800:]
            assert time.monotonic() < deadline, "the first backup never took the lock"
            time.sleep(0.02)

        with pytest.raises(LockError) as ei:
            run_backup(s, BackupKind.FULL)
        msg = str(ei.value)
        assert f'"pid": {proc.pid}' in msg and "full backup" in msg and str(repo.root) in msg
        assert "\n" not in msg
        assert repo.list_ids() == [] and len(repo.partials()) == 1  # the refused run wrote nothing

        waiting = make_settings(tmp_path, root=root, db=db, lock_wait_s=60)
        release = threading.Timer(1.5, conn.execute, args=("ROLLBACK",))
        release.start()
        t = time.monotonic()
        second = run_backup(waiting, BackupKind.INCREMENTAL)
        waited = time.monotonic() - t
        release.join()
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        out, err = proc.communicate(timeout=60)
        conn.close()
    assert proc.returncode == 0, err.decode()[-800:]
    assert waited >= 1.0, "the second backup did not wait for the first"
    first_id = [i for i in repo.list_ids() if i.kind is BackupKind.FULL]
    assert len(first_id) == 1
    assert second.manifest.parent == first_id[0]  # it started after the first one had committed
    assert second.manifest.started_at >= repo.read_header(first_id[0]).finished_at
