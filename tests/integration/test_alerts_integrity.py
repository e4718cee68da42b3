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


def test_a_refused_restore_with_the_prefect_api_down_says_so_in_one_line_and_fails_at_once(tmp_path: Path) -> None:
    """The CLI's restore refuses a damaged set before Prefect starts; the integrity alert cannot reach
    a dead API: one warning line, no retries, and the refusal is still the last line."""
    import time

    from tests.conftest import cli_env
    from tests.integration.offsite_fixtures import free_port

    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    sid = run_backup(s, BackupKind.FULL).manifest.id.value
    cfg = write_config(tmp_path / "c.toml", s)
    with open(s.storage.local_dir / sid / "SHA256SUMS", "a") as f:
        f.write("tampered\n")
    target = tmp_path / "out"
    t0 = time.monotonic()
    r = run_cli("--config", str(cfg), "restore", "--backup", sid, "--target-dir", str(target),
                env=cli_env(PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api"))
    assert r.returncode != 0 and time.monotonic() - t0 < 15 and not target.exists()
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("erp-backup: error: ") and "damaged" in lines[-1], lines
    assert any("integrity alert" in x and "did not answer" in x for x in lines), lines
    assert "EventsWorker" not in r.stderr
