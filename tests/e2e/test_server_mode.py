"""With PREFECT_API_URL set, the CLI's flows run against that server: runs, artifacts, events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from erp_backup.demo import make_project, mutate_files

from .conftest import PrefectServer

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "erp-backup")


def cli(server: PrefectServer, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--config", str(config), *args], env=server.env, capture_output=True,
                          text=True, timeout=180)


def test_backups_and_restore_are_visible_in_the_server(prefect_server: PrefectServer, tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "sqlite:///{db}"\n'
                   f'[storage]\nlocal_dir = "{tmp_path / "bk"}"\n')
    full = cli(prefect_server, cfg, "backup", "full")
    assert full.returncode == 0, full.stderr[-3000:]
    full_id = full.stdout.strip().splitlines()[-1]
    assert full_id.endswith("-full")
    assert "Starting temporary server" not in full.stderr  # it used our server, not an ephemeral one
    mutate_files(root, 1)
    incr = cli(prefect_server, cfg, "backup", "incremental")
    assert incr.returncode == 0, incr.stderr[-3000:]

    runs = prefect_server.flow_runs("erp-backup-full")
    assert runs and runs[0]["state_type"] == "COMPLETED"
    assert prefect_server.flow_runs("erp-backup-incremental")[0]["state_type"] == "COMPLETED"
    arts = prefect_server.artifacts("erp-backup-full")
    mine = [a for a in arts if full_id in str(a["data"])]  # the server is shared by the e2e tests
    assert mine and mine[0]["type"] == "table"
    table = json.loads(mine[0]["data"]) if isinstance(mine[0]["data"], str) else mine[0]["data"]
    assert {"files scanned", "bytes out", "throughput MB/s"} <= set(table[0])
    events = prefect_server.events("erp-backup.backup.completed")
    assert {e["resource"]["prefect.resource.name"] for e in events} >= {full_id}

    restored = cli(prefect_server, cfg, "restore", "--backup", full_id, "--target-dir", str(tmp_path / "r"))
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert (tmp_path / "r" / "manage.py").exists() and (tmp_path / "r" / "db.sqlite3").exists()
    assert prefect_server.flow_runs("erp-backup-restore")[0]["state_type"] == "COMPLETED"


def test_failed_backup_ends_failed_in_the_server(prefect_server: PrefectServer, tmp_path: Path) -> None:
    """A fault inside the flow (after the CLI's pre-flight) fails the run in the UI and the CLI."""
    root = tmp_path / "erp"
    db = make_project(root)
    cfg = tmp_path / "c.toml"
    bk = tmp_path / "bk"
    cfg.write_text(f'[project]\nroot = "{root}"\nkey_files = [".env", "must-exist.txt"]\n'
                   f'[database]\nurl = "sqlite:///{db}"\n[storage]\nlocal_dir = "{bk}"\n')
    r = cli(prefect_server, cfg, "backup", "full")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("erp-backup: error: verification of ") and "must-exist.txt" in last
    assert prefect_server.flow_runs("erp-backup-full")[0]["state_type"] == "FAILED"
    assert not [p for p in bk.iterdir() if not p.name.startswith(".")]  # nothing committed, no partial
