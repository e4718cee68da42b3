"""Files erp-backup itself keeps in the backup directory, planted by whoever can write it (the
store is untrusted input): never a way to write outside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from erp_backup.adapters.storage.local import LOCK
from erp_backup.core.models import BackupKind
from tests.conftest import make_settings, make_small_project, run_cli, write_config, write_file

pytestmark = pytest.mark.integration


def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """A review found `<local_dir>/.lock -> /etc/passwd` making every backup truncate the target,
    write the lock's JSON into it and truncate it again (to 0 bytes) at the end."""
    from erp_backup.pipeline import run_backup

    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    run_backup(s, BackupKind.FULL)
    cfg = write_config(tmp_path / "c.toml", s)
    victim = write_file(tmp_path / "victim.txt", "precious\n")
    lock = s.storage.local_dir / LOCK
    lock.unlink(missing_ok=True)
    for plant in (lambda: os.symlink(victim, lock), lambda: os.link(victim, lock)):
        plant()
        write_file(root / "apps" / "changed.py", str(os.urandom(4)))
        res = run_cli("--config", str(cfg), "backup", "incremental")
        assert res.returncode != 0
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("erp-backup: error:") and ".lock" in last and "remove it" in last, last
        assert victim.read_text() == "precious\n"
        lock.unlink()
    res = run_cli("--config", str(cfg), "backup", "incremental")
    assert res.returncode == 0, res.stderr[-1500:]
