"""Permission failures on a real set: a set file or directory that group or others can read fails
`erp-backup verify` (class permission, the security team's alert), the verification log says so,
and the set verifies again once its modes are put right. Real backups, the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from erp_backup import alerts
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from tests.conftest import make_settings, make_small_project, run_cli, write_config

pytestmark = pytest.mark.integration


def test_a_set_readable_by_others_fails_verify_as_a_permission_problem(tmp_path: Path) -> None:
    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    sid = run_backup(s, BackupKind.FULL).manifest.id.value
    cfg = write_config(tmp_path / "c.toml", s)
    set_dir = s.storage.local_dir / sid
    assert run_cli("--config", str(cfg), "verify", "--quick").returncode == 0  # as written: 0700 / 0600

    os.chmod(set_dir / "files.tar.zst", 0o644)
    os.chmod(set_dir, 0o755)
    r = run_cli("--config", str(cfg), "verify", "--quick", sid)
    assert r.returncode != 0, r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("erp-backup: error: ") and "readable by group or others" in last, last
    assert "0644" in r.stdout + r.stderr and "0755" in r.stdout + r.stderr
    log_line = s.verify.log.read_text().splitlines()[-1]
    assert f"set={sid}" in log_line and "outcome=FAILED" in log_line and "readable by group or others" in log_line
    from erp_backup import verdicts

    # the content is intact: its recorded verdict stays "passed" (restore and retention still trust it)
    assert json.loads(verdicts.record_path(s.storage.local_dir, sid).read_text())["result"] == "passed"
    problems = alerts.exposed_files(set_dir)
    assert {alerts.classify(p) for p in problems} == {"permission"}

    os.chmod(set_dir / "files.tar.zst", 0o600)
    os.chmod(set_dir, 0o700)
    assert run_cli("--config", str(cfg), "verify", "--quick", sid).returncode == 0
