"""CLI commands that never start Prefect: init, list, show (fast, no flow runs)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup.config import load_settings, settings_from_dict
from erp_backup.core.models import BackupKind
from erp_backup.demo import make_project, mutate_files
from erp_backup.pipeline import run_backup

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "erp-backup")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_init_writes_a_private_commented_config_from_dotenv(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)  # its .env holds DATABASE_URL=sqlite:///…
    cfg = tmp_path / "etc" / "config.toml"
    r = cli("--config", str(cfg), "init", "--root", str(root), "--local-dir", str(tmp_path / "bk"))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    text = cfg.read_text()
    assert text.count("#") > 10  # commented for a person to edit
    s = load_settings(cfg)
    assert s.project.root == root and s.database_url().name == str(db)
    again = cli("--config", str(cfg), "init", "--root", str(root))
    assert again.returncode != 0 and "already exists" in again.stderr and "--force" in again.stderr


def test_init_never_copies_a_password_into_the_config(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    root.mkdir()
    (root / ".env").write_text("DATABASE_URL=postgresql://erp:hunter2@db:5432/erp\n")
    cfg = tmp_path / "c.toml"
    r = cli("--config", str(cfg), "init", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in cfg.read_text() and "hunter2" not in r.stdout
    assert "read from there at run time" in r.stdout


def test_list_and_show_read_manifests_without_prefect(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    bk = tmp_path / "bk"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "sqlite:///{db}"\n[storage]\nlocal_dir = "{bk}"\n')
    s = settings_from_dict({"project": {"root": str(root)}, "database": {"url": f"sqlite:///{db}"},
                            "storage": {"local_dir": str(bk)}})
    t = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    full = run_backup(s, BackupKind.FULL, now=t)
    mutate_files(root, 1)
    incr = run_backup(s, BackupKind.INCREMENTAL, now=t + timedelta(hours=1))
    (bk / "20261128T040000Z-incr.partial").mkdir()  # a crashed run's leftover

    start = time.monotonic()
    r = cli("--config", str(cfg), "list", "--json")
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    ids = [x["id"] for x in data["sets"]]
    assert ids == [full.manifest.id.value, incr.manifest.id.value]
    row = data["sets"][1]
    assert row["kind"] == "incremental" and row["parent"] == full.manifest.id.value
    assert row["status"] == "committed" and row["size_bytes"] > 0 and row["files"] > 30
    assert set(row) >= {"id", "kind", "parent", "finished_at", "size_bytes", "files", "status"}
    assert data["incomplete"] == ["20261128T040000Z-incr.partial"]
    assert took < 8, f"list took {took:.1f} s: it must not start Prefect"

    human = cli("--config", str(cfg), "list")
    assert incr.manifest.id.value in human.stdout and "incomplete, ignored" in human.stdout

    shown = cli("--config", str(cfg), "show", incr.manifest.id.value)
    assert shown.returncode == 0
    assert f"depends on   {full.manifest.id.value}" in shown.stdout
    assert "sqlite db.sqlite3" in shown.stdout and "files.tar.zst" in shown.stdout
    missing = cli("--config", str(cfg), "show", "20200101T000000Z-full")
    assert missing.returncode != 0 and "erp-backup list" in missing.stderr


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    """`erp-backup list | head -1` (the reader gone before we write): a review found a
    BrokenPipeError traceback. Now silent, with the shell's exit status for SIGPIPE."""
    from tests.conftest import make_settings, make_small_project, write_config

    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    run_backup(s, BackupKind.FULL)
    cfg = write_config(tmp_path / "c.toml", s)
    for args in (["list"], ["status", "--json"], ["show", sorted(p.name for p in s.storage.local_dir.iterdir()
                                                                  if p.name.endswith("-full"))[0]]):
        r, w = os.pipe()
        os.close(r)
        try:
            res = subprocess.run([CLI, "--config", str(cfg), *args], stdout=w, stderr=subprocess.PIPE, text=True,
                                 timeout=60, check=False)
        finally:
            os.close(w)
        assert "Traceback" not in res.stderr and res.stderr == "", (args, res.stderr[-1000:])
        assert res.returncode == 141, args


def test_verify_log_tail_takes_only_a_positive_count(tmp_path: Path) -> None:
    """A review found `verify-log --tail 0` printing the whole log and `--tail -5` all but the first
    five lines: now one error line for both, and --tail N the last N lines."""
    from erp_backup import verify_log
    from tests.conftest import make_settings, make_small_project, write_config

    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    cfg = write_config(tmp_path / "c.toml", s)
    verify_log.append(s.verify.log, [verify_log.VerifyLine(f"20261129T0{i}0000Z-full", "quick", True)
                                     for i in range(8)])
    res = cli("--config", str(cfg), "verify-log", "--tail", "3")
    assert res.returncode == 0 and [line.split()[1] for line in res.stdout.splitlines()] == [
        "set=20261129T050000Z-full", "set=20261129T060000Z-full", "set=20261129T070000Z-full"]
    for bad in ("0", "-5"):
        res = cli("--config", str(cfg), "verify-log", "--tail", bad)
        assert res.returncode == 2 and res.stdout == "", (bad, res.stdout)
        assert res.stderr.strip().splitlines() == [f"erp-backup: error: --tail {bad}: must be 1 or more — e.g. "
                                                   "--tail 50"]
