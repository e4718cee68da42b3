""""Latest valid" means verified: a set whose last recorded verification failed is passed over."""

from __future__ import annotations

from pathlib import Path

import pytest

from erp_backup import restore as restorer
from erp_backup import verdicts
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.models import BackupKind
from erp_backup.demo import make_project
from erp_backup.pipeline import run_backup
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def test_a_set_whose_verification_failed_is_passed_over_by_name(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    s = make_settings(tmp_path, root=root, db=db)
    older = run_backup(s, BackupKind.FULL).manifest.id
    (root / "apps" / "late.py").write_text("late = True\n")
    newer = run_backup(s, BackupKind.INCREMENTAL).manifest.id
    repo = LocalRepository(s.storage.local_dir)

    rep = restorer.restore(repo, target_dir=tmp_path / "t1", settings=s)
    assert rep.set_id == newer.value  # no record: the newest intact set

    verdicts.record(repo.root, newer.value, ok=False, level="full", problems=[f"{newer}: db dump truncated"])
    rep = restorer.restore(repo, target_dir=tmp_path / "t2", settings=s)
    assert rep.set_id == older.value
    assert not (tmp_path / "t2" / "apps" / "late.py").exists()
    assert any(str(newer) in n and "db dump truncated" in n for n in rep.notes), rep.notes

    verdicts.record(repo.root, newer.value, ok=True, level="full")  # verified again: chosen again
    assert restorer.restore(repo, target_dir=tmp_path / "t3", settings=s).set_id == newer.value
