"""Real faults: a full disk (a 2 MiB tmpfs), a dead SQLite file. Nothing good is lost."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import settings_from_dict
from erp_backup.core.errors import DatabaseError, StorageError
from erp_backup.core.models import BackupKind
from erp_backup.demo import make_project
from erp_backup.pipeline import run_backup
from erp_backup.verify import verify_committed

pytestmark = pytest.mark.integration
T = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem: writes beyond it fail with ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _settings(root: Path, db: Path, backups: Path) -> object:
    return settings_from_dict({"project": {"root": str(root)}, "database": {"url": f"sqlite:///{db}"},
                               "storage": {"local_dir": str(backups)}})


def test_disk_full_during_archive_keeps_the_good_set(tmp_path: Path, small_disk: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    backups = small_disk / "bk"
    s = _settings(root, db, backups)
    good = run_backup(s, BackupKind.FULL, now=T)  # small: fits
    # now the project grows beyond the disk (incompressible data)
    (root / "docs/big.bin").write_bytes(os.urandom(3 << 20))
    with pytest.raises(StorageError) as ei:
        run_backup(s, BackupKind.INCREMENTAL, now=T + timedelta(hours=1))
    msg = str(ei.value)
    assert "No space left on device" in msg and "free space" in msg
    assert "\n" not in msg
    repo = LocalRepository(backups)
    assert [i.value for i in repo.list_ids()] == [good.manifest.id.value]
    assert repo.partials() == []  # the failed set was cleaned away
    assert verify_committed(repo, good.manifest.id.value).ok


def test_disk_full_during_database_copy(tmp_path: Path, small_disk: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE blobs (b BLOB)")
    conn.executemany("INSERT INTO blobs VALUES (?)", [(os.urandom(100_000),) for _ in range(40)])
    conn.commit()
    conn.close()
    s = _settings(root, db, small_disk / "bk")
    with pytest.raises((DatabaseError, StorageError)) as ei:
        run_backup(s, BackupKind.FULL, now=T)
    assert "full" in str(ei.value).lower() or "space" in str(ei.value).lower()
    repo = LocalRepository(small_disk / "bk")
    assert repo.list_ids() == [] and repo.partials() == []


def test_database_vanished_fails_before_writing(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    s = _settings(root, db, tmp_path / "bk")
    db.unlink()
    with pytest.raises(DatabaseError, match=r"does not exist — fix \[database\] url"):
        run_backup(s, BackupKind.FULL, now=T)
    assert LocalRepository(tmp_path / "bk").list_ids() == []
