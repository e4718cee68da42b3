"""Data tiers on real sets: the restore test reports RTO/RPO per tier against each tier's targets,
`status` shows the RPO per tier and flags the non-critical one against its own target, and
`status --nagios` carries the non-critical tier's performance data (real backups, real CLI)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup import restore_test as tester
from erp_backup import status
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from erp_backup.tiers import TiersConfig, TierTargets
from tests.conftest import make_settings, make_small_project, run_cli, write_config, write_file

pytestmark = pytest.mark.integration
H = 3600.0


def project(tmp_path: Path) -> Path:
    root = make_small_project(tmp_path / "erp")
    write_file(root / "config/settings.py", "DEBUG = False\n" * 200)
    write_file(root / "media/big.bin", os.urandom(400_000))  # most of the bytes: non-critical
    return root


def test_restore_test_judges_each_tier_against_its_own_targets(tmp_path: Path) -> None:
    s = make_settings(tmp_path, root=project(tmp_path))
    s = s.model_copy(update={"tiers": TiersConfig(critical_paths=["config"])})
    now = datetime.now(UTC)
    run_backup(s, BackupKind.FULL, now=now - timedelta(hours=3))  # older than the critical RPO (1 h)
    res = tester.run_restore_test(s, log=lambda _m: None)
    crit, non = res.tiers["critical"], res.tiers["non_critical"]
    assert crit["covers"] == "database + config" and non["covers"].startswith("all project files")
    assert (crit["rto_target_seconds"], crit["rpo_target_seconds"]) == (4 * H, 1 * H)
    assert (non["rto_target_seconds"], non["rpo_target_seconds"]) == (24 * H, 24 * H)
    # the critical tier's restore is the database and a share of the files stage: never more than the whole
    assert 0 < crit["rto_seconds"] <= non["rto_seconds"] == res.rto_seconds
    assert crit["rto_seconds"] < res.stages["select"] + res.stages["database"] + res.stages.get("smoke", 0) \
        + res.stages["files"]  # the media bytes are not the critical tier's
    assert crit["ok"] is False and non["ok"] is True  # 3 h old: too old for the database, fine for media
    assert any("of the critical tier" in p and "non-critical" not in p for p in res.problems), res.problems
    rows = {r["measure"]: r for r in res.rows()}
    assert rows["critical tier RPO"]["verdict"] == "MISSED" and rows["non_critical tier RPO"]["verdict"] == "ok"
    assert json.loads((s.storage.local_dir / tester.RECORD).read_text())["tiers"]["critical"]["ok"] is False

    # a whole restore slower than the non-critical target fails that tier only
    s2 = s.model_copy(update={"tiers": TiersConfig(critical_paths=["config"],
                                                   non_critical=TierTargets(rto=0.001, rpo=24 * H))})
    run_backup(s2, BackupKind.INCREMENTAL)
    res = tester.run_restore_test(s2, log=lambda _m: None)
    assert [p for p in res.problems if "RTO" in p] and all("non-critical tier's target" in p
                                                          for p in res.problems if "RTO" in p), res.problems
    assert res.tiers["non_critical"]["ok"] is False and res.tiers["critical"]["ok"] is True


def test_status_and_nagios_show_the_rpo_per_tier(tmp_path: Path) -> None:
    s = make_settings(tmp_path, root=project(tmp_path))
    now = datetime.now(UTC)
    full = run_backup(s, BackupKind.FULL, now=now - timedelta(hours=30)).manifest.id.value
    doc = status.collect(s, now=now)
    t = doc["tiers"]
    assert t["critical"]["set"] == t["non_critical"]["set"] == full  # every set carries both tiers
    assert 29.9 * H < t["non_critical"]["seconds"] < 30.1 * H
    assert t["critical"]["ok"] is False and t["non_critical"]["ok"] is False
    checks = {p["check"] for p in doc["problems"]}
    assert {"rpo", "rpo_non_critical"} <= checks
    run_backup(s, BackupKind.INCREMENTAL, now=now - timedelta(hours=5))
    doc = status.collect(s, now=now)
    assert doc["tiers"]["non_critical"]["ok"] is True and doc["tiers"]["critical"]["ok"] is False
    assert "rpo_non_critical" not in {p["check"] for p in doc["problems"]}

    cfg = write_config(tmp_path / "c.toml", s)
    with open(cfg, "a") as f:
        f.write('[tiers]\ncritical_paths = ["config"]\n[nagios]\nrpo = ["10h", "20h"]\nfull_age = ["2d", "3d"]\n'
                'incremental_age = ["10h", "20h"]\nrestore_test_age = ["30d", "60d"]\n'
                'non_critical_rpo = ["3h", "6h"]\n')
    r = run_cli("--config", str(cfg), "status", "--nagios")
    line = r.stdout.strip()
    assert r.returncode == 1 and line.startswith("WARNING - non-critical tier RPO 5h"), line
    perf = dict(p.split("=", 1) for p in line.split("|", 1)[1].split())
    assert perf["rpo_non_critical_s"].split(";")[1:] == ["10800", "21600"]
    r = run_cli("--config", str(cfg), "restore-test")
    assert r.returncode != 0  # the critical tier's RPO (1 h) is missed: the newest set is 5 h old
    (crit,) = [line for line in r.stdout.splitlines() if line.startswith("critical ")]
    assert "database + config" in crit and crit.split()[-1] == "MISSED"
    (non,) = [line for line in r.stdout.splitlines() if line.startswith("non_critical ")]
    assert non.split()[-1] == "ok"
    r = run_cli("--config", str(cfg), "status")
    assert "RPO critical" in r.stdout and "database + config" in r.stdout and "RPO non_critical" in r.stdout
