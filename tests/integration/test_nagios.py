"""``erp-backup status --nagios`` on real repositories: plugin output, exit codes, thresholds."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup.core.models import BackupKind
from erp_backup.demo import make_project
from erp_backup.pipeline import run_backup
from tests.conftest import flip_byte, make_settings, run_cli, write_config

pytestmark = pytest.mark.integration

# the plugin API: "STATUS - text | label=value[UOM];[warn];[crit];[min];[max] …", one line
PERF = r"'?[A-Za-z_][^=' ]*'?=(?:-?[0-9.]+(?:[a-zA-Z%]+)?(?:;-?[0-9.]*){0,4}|U)"
PLUGIN_LINE = re.compile(rf"^(OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+(?: \| {PERF}(?: {PERF})*)?$")


def nagios(cfg: Path, **kw: object) -> tuple[int, str, dict[str, str]]:
    r = run_cli("--config", str(cfg), "status", "--nagios", **kw)  # type: ignore[arg-type]
    assert r.stderr == "", r.stderr  # no Prefect start-up noise, no traceback
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    assert PLUGIN_LINE.match(lines[0]), lines[0]
    perf = dict(p.split("=", 1) for p in lines[0].partition(" | ")[2].split()) if " | " in lines[0] else {}
    return r.returncode, lines[0], perf


def config(tmp_path: Path, root: Path, db: Path, nagios_toml: str = "") -> Path:
    cfg = write_config(tmp_path / "c.toml", make_settings(tmp_path, root=root, db=db))
    if nagios_toml:
        cfg.write_text(cfg.read_text() + "[nagios]\n" + nagios_toml)
    return cfg


def test_a_fresh_repository_is_ok_with_performance_data(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    cfg = config(tmp_path, root, db)
    s = make_settings(tmp_path, root=root, db=db)
    run_backup(s, BackupKind.FULL)
    (root / "apps" / "x.py").write_text("x = 2\n")
    run_backup(s, BackupKind.INCREMENTAL)
    code, line, perf = nagios(cfg)
    assert code == 0, line
    assert line.startswith("OK - newest full ") and "incremental" in line and "RPO" in line
    value, warn, crit = perf["rpo_s"].split(";")
    assert float(value) < 120 and (warn, crit) == ("3600", "7200")
    assert perf["monthly_age_s"] == "U"  # never ran, and the repository is too young to miss it


def test_an_old_incremental_warns_then_goes_critical(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    s = make_settings(tmp_path, root=root, db=db)
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    run_backup(s, BackupKind.FULL, now=two_hours_ago - timedelta(minutes=5))
    (root / "apps" / "x.py").write_text("x = 2\n")
    run_backup(s, BackupKind.INCREMENTAL, now=two_hours_ago)

    cfg = config(tmp_path, root, db, 'incremental_age = ["30m", "3h"]\nrpo = ["10h", "20h"]\n')
    code, line, perf = nagios(cfg)
    assert code == 1 and line.startswith("WARNING - newest incremental 2h old (limit 30m)"), line
    assert perf["incremental_age_s"].endswith(";1800;10800")

    cfg = config(tmp_path, root, db, 'incremental_age = ["30m", "90m"]\nrpo = ["10h", "20h"]\n')
    code, line, _ = nagios(cfg)
    assert code == 2 and line.startswith("CRITICAL - newest incremental 2h old (limit 1h 30m)"), line

    cfg = config(tmp_path, root, db, 'rpo = ["30m", "1h"]\n')  # the RPO judges the newest restorable set
    code, line, _ = nagios(cfg)
    assert code == 2 and "RPO 2h (limit 1h)" in line, line


def test_a_failed_verification_is_critical(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    s = make_settings(tmp_path, root=root, db=db)
    cfg = config(tmp_path, root, db)
    full = run_backup(s, BackupKind.FULL).manifest.id.value
    art = s.storage.local_dir / full / "files.tar.zst"
    flip_byte(art, art.stat().st_size // 2)
    assert run_cli("--config", str(cfg), "verify", "--quick").returncode != 0
    code, line, _ = nagios(cfg)
    assert code == 2 and f"newest full {full} failed verification" in line, line


def test_an_unreadable_backup_directory_or_config_is_unknown(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    s = make_settings(tmp_path, root=root, db=db)
    cfg = config(tmp_path, root, db)
    run_backup(s, BackupKind.FULL)
    os.chown(s.storage.local_dir, 65534, 65534)  # root without the capabilities that bypass modes
    code, line, _ = nagios(cfg, no_dac=True)
    assert code == 3 and line.startswith("UNKNOWN - cannot read the backup status"), line

    code, line, _ = nagios(tmp_path / "missing.toml")
    assert code == 3 and "does not exist" in line, line
