"""`erp-backup status` from the repository alone: per kind, verification (the record beside the set
when there is one, else derived and said so), RPO, damaged sets, the last restore test, usage."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from erp_backup import status
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from tests.conftest import flip_byte, make_settings, make_small_project


def test_status_per_kind_records_rpo_and_damage(tmp_path: Path) -> None:
    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    now = datetime.now(UTC)
    full = run_backup(s, BackupKind.FULL, now=now - timedelta(hours=3)).manifest.id.value
    incr = run_backup(s, BackupKind.INCREMENTAL, now=now - timedelta(hours=2)).manifest.id.value
    doc = status.collect(s, now=now)
    assert doc["kinds"]["full"]["set"] == full and doc["kinds"]["incremental"]["set"] == incr
    assert doc["kinds"]["differential"] is None and doc["kinds"]["monthly"] is None
    v = doc["kinds"]["incremental"]["verification"]
    assert v["outcome"] == "passed" and v["source"].startswith("derived")
    assert 1.9 * 3600 < doc["rpo"]["seconds"] < 2.1 * 3600 and doc["rpo"]["ok"] is False
    assert doc["ok"] is False and any(p["check"] == "rpo" and p["severity"] == "critical" for p in doc["problems"])
    assert doc["usage"]["local"]["bytes"] > 0 and doc["usage"]["local"]["sets"] == 2
    assert doc["usage"]["remote"] is None
    # the verify runs' record beside the set (issue #9) wins over the derived outcome
    (s.storage.local_dir / f"{incr}.verified.json").write_text(json.dumps(
        {"id": incr, "where": "local", "result": "failed", "level": "full", "at": "2026-11-29T06:00:00Z",
         "problems": ["files.tar.zst: checksum mismatch"]}))
    v = status.collect(s, now=now)["kinds"]["incremental"]["verification"]
    assert (v["outcome"], v["level"], v["source"]) == ("failed", "full", f"{incr}.verified.json")
    assert "checksum mismatch" in v["reason"]
    # a damaged newest full: the incremental's chain breaks, the RPO falls back to nothing
    flip_byte(s.storage.local_dir / full / "manifest.json", 10)
    doc = status.collect(s, now=now)
    assert doc["kinds"]["full"] is None and doc["rpo"]["set"] is None
    assert doc["kinds"]["incremental"]["verification"]["outcome"] == "failed"
    assert any(p["check"] == "damaged" for p in doc["problems"])


def test_status_imports_no_prefect(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import REPO, cli_env, write_config

    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    run_backup(s, BackupKind.FULL)
    cfg = write_config(tmp_path / "c.toml", s)
    code = ("import sys, io, contextlib; from erp_backup.cli import main; out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out): rc = main(['--config', sys.argv[1], 'status', '--json'])\n"
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))")
    res = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60,
                         env=cli_env(), cwd=REPO)
    assert res.stdout.strip() == "0 []", res.stderr


def test_a_damaged_or_crafted_restore_test_record_is_a_failed_test_not_a_crash(tmp_path: Path) -> None:
    """`.restore-test.json` lies in the (untrusted) backup directory. A review found a string RTO
    crashing `status` with a traceback and `"ok": "yes"` passing for a successful test. Now any record
    not shaped as the restore test writes it is a failed test naming the damage (status critical,
    nagios CRITICAL), and a real record still reads back."""
    import subprocess

    from erp_backup import recovery_record
    from tests.conftest import CLI, write_config

    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    run_backup(s, BackupKind.FULL)
    cfg = write_config(tmp_path / "c.toml", s)
    record = s.storage.local_dir / recovery_record.RECORD
    good = {"ok": True, "set": "20261129T080000Z-full", "tested_at": "2026-11-29T08:00:00Z", "rto_seconds": 3.0,
            "rto_extrapolated_seconds": 3.5, "rto_target_seconds": 14400.0, "rpo_seconds": 60.0,
            "max_gap_seconds": 30.0, "rpo_target_seconds": 3600.0, "problems": [], "max_gap": "a → b"}
    crafted = [{**good, "ok": "yes"}, {**good, "rto_extrapolated_seconds": "abc"}, {**good, "tested_at": 5},
               {**good, "problems": [{"x": 1}]}, [1, 2], {**good, "rpo_seconds": float("nan")}]
    for doc in crafted:
        record.write_text(json.dumps(doc))
        for args in (["status"], ["status", "--json"]):
            res = subprocess.run([*CLI, "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0 and "Traceback" not in res.stderr, (doc, res.stderr[-1500:])
        got = status.collect(s)
        assert got["restore_test"]["ok"] is False and got["ok"] is False, doc
        (flag,) = [p for p in got["problems"] if p["check"] == "restore_test"]
        assert flag["severity"] == "critical" and "is damaged" in flag["message"], doc
        res = subprocess.run([*CLI, "--config", str(cfg), "status", "--nagios"], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 2 and "is damaged" in res.stdout, (doc, res.stdout)
    record.write_text(json.dumps(good))
    got = status.collect(s)
    assert got["restore_test"]["ok"] is True and got["restore_test"]["rto_extrapolated_seconds"] == 3.5
