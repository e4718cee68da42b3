"""scripts/*.sh as an operator runs them: as root, on a real tree and database, through the CLI."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from erp_backup import verify_log
from erp_backup.config import Settings
from erp_backup.core.models import BackupKind
from erp_backup.demo import make_project
from erp_backup.pipeline import run_backup
from tests.conftest import CLI, REPO, cli_env, flip_byte, make_settings, tree_state, write_config

pytestmark = pytest.mark.integration
SCRIPTS = REPO / "scripts"


def script(name: str, *args: str, config: Path, user: str | None = None, stdin: str = "",
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
    argv = [str(SCRIPTS / name), *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    env = cli_env(ERP_BACKUP_CONFIG=str(config), ERP_BACKUP_BIN=CLI[0])
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def test_every_script_passes_shellcheck() -> None:
    sc = shutil.which("shellcheck") or str(Path(CLI[0]).parent / "shellcheck")
    r = subprocess.run([sc, "-x", *sorted(str(p) for p in SCRIPTS.glob("*.sh"))], capture_output=True,
                       text=True, cwd=REPO, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", ["backup.sh", "verify_backup.sh", "restore.sh"])
def test_scripts_refuse_another_user_with_one_line(tmp_path: Path, name: str) -> None:
    cfg = write_config(tmp_path / "c.toml", make_settings(tmp_path))
    tmp_path.chmod(0o755)
    args = ["full"] if name == "backup.sh" else []
    r = script(name, *args, config=cfg, user="nobody")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"{name}: error: must run as root (the backups and the live ERP "
                                             "are root-only): run it with sudo"]


def test_backup_sh_makes_a_set_and_exits_with_the_cli_status(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    s = make_settings(tmp_path, root=root, db=db)
    cfg = write_config(tmp_path / "c.toml", s)
    r = script("backup.sh", "full", config=cfg)
    assert r.returncode == 0, r.stderr
    new_id = r.stdout.strip().splitlines()[-1]
    assert new_id.endswith("-full") and (s.storage.local_dir / new_id / "manifest.json").is_file()

    assert script("backup.sh", "weekly", config=cfg).returncode == 2  # usage
    broken = write_config(tmp_path / "broken.toml", make_settings(tmp_path, root=tmp_path / "missing", db=db))
    r = script("backup.sh", "incremental", config=broken)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("erp-backup: error:")


def _full_then_incremental(tmp_path: Path) -> tuple[Settings, Path, str, str]:
    """A sample project, its config, a full backup, a change, an incremental: (settings, config, ids)."""
    root = tmp_path / "erp"
    db = make_project(root)
    s = make_settings(tmp_path, root=root, db=db)
    cfg = write_config(tmp_path / "c.toml", s)
    full = run_backup(s, BackupKind.FULL).manifest.id.value
    (root / "apps" / "new.py").write_text("x = 1\n")
    incr = run_backup(s, BackupKind.INCREMENTAL).manifest.id.value
    return s, cfg, full, incr


def test_verify_backup_sh_logs_one_line_per_set_and_fails_on_a_corrupted_one(tmp_path: Path) -> None:
    s, cfg, full, incr = _full_then_incremental(tmp_path)

    r = script("verify_backup.sh", config=cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every verified set is usable" in r.stdout
    lines = [verify_log.parse_line(x) for x in s.verify.log.read_text().splitlines()]
    assert [(x["set"], x["outcome"]) for x in lines] == [(full, "passed"), (incr, "passed")]

    files = s.storage.local_dir / full / "files.tar.zst"
    flip_byte(files, files.stat().st_size // 2)
    r = script("verify_backup.sh", "--quick", incr, config=cfg)
    assert r.returncode == 1
    assert "FAILED verification" in r.stderr
    new = [verify_log.parse_line(x) for x in s.verify.log.read_text().splitlines()][2:]
    assert [(x["set"], x["level"], x["outcome"]) for x in new] == [(incr, "quick", "FAILED")]
    assert full in new[0]["problem"]  # the broken member of its chain is named


def _restore_project(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A project with its SQLite database inside, a full backup, hooks that record themselves;
    then the live tree and database broken. (root, db, config, hook log)"""
    import json
    import sys

    from tests.conftest import make_small_project, make_sqlite, write_file

    root = make_small_project(tmp_path / "erp")
    db = make_sqlite(root / "db.sqlite3")
    s = make_settings(tmp_path, root=root, db=db)
    log = tmp_path / "hooks.log"
    rec = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')", str(log)]
    cfg = write_config(tmp_path / "c.toml", s)
    cfg.write_text(cfg.read_text() + "[restore]\n" + "".join(
        f"{k} = {json.dumps([[*rec, k]])}\n" for k in ("stop", "start", "smoke")) + 'max_age = "off"\n')
    run_backup(s, BackupKind.FULL)
    write_file(root / "app/models.py", "broken\n")
    (root / "docs/README.md").unlink()
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM customers")
    conn.commit()
    conn.close()
    return root, db, cfg, log


def test_restore_sh_no_on_stdin_changes_nothing(tmp_path: Path) -> None:
    root, db, cfg, log = _restore_project(tmp_path)
    before = tree_state(root)
    r = script("restore.sh", config=cfg, stdin="y\nno\n")  # the failure confirmed, the restore refused
    assert r.returncode == 1 and "nothing changed" in r.stdout, r.stdout + r.stderr
    assert "step 3/3" in r.stdout  # it got as far as the destructive question
    assert tree_state(root) == before and not log.exists()  # no hook ran, no file changed
    r = script("restore.sh", config=cfg, stdin="")  # no answer at all: no
    assert r.returncode == 1 and tree_state(root) == before


def test_restore_sh_yes_brings_back_the_latest_valid_set_with_the_hooks_in_order(tmp_path: Path) -> None:
    root, db, cfg, log = _restore_project(tmp_path)
    r = script("restore.sh", "--yes", config=cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "docs/README.md").exists() and (root / "app/models.py").read_text() != "broken\n"
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] > 0
    conn.close()
    assert log.read_text().splitlines() == ["stop", "start", "smoke"]


def test_restore_sh_passes_allow_old_and_verify_through(tmp_path: Path) -> None:
    """The newest valid set is older than [restore] max_age (the backups stopped before the failure):
    the CLI says `pass --allow-old`, and restore.sh must take it (a review found it refused as a usage
    error, leaving the operator without the script in exactly that emergency)."""
    root = tmp_path / "erp"
    db = make_project(root)
    s = make_settings(tmp_path, root=root, db=db)
    cfg = write_config(tmp_path / "c.toml", s)
    with open(cfg, "a") as f:
        f.write('[restore]\nmax_age = "1s"\nstop = []\nstart = []\nsmoke = []\n')
    run_backup(s, BackupKind.FULL)
    (root / "apps" / "stray.py").write_text("broken = True\n")
    import time

    time.sleep(1.5)
    r = script("restore.sh", "--yes", config=cfg)
    assert r.returncode != 0 and "--allow-old" in r.stderr.strip().splitlines()[-1]
    assert (root / "apps" / "stray.py").exists()
    r = script("restore.sh", "--yes", "--allow-old", "--verify", "full", config=cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (root / "apps" / "stray.py").exists()
    assert script("restore.sh", "--yes", "--verify", config=cfg).returncode == 1  # needs its value


def test_restore_sh_lists_candidates_with_age_and_verification_outcome(tmp_path: Path) -> None:
    """Issue #13: step 2 lists the candidates with their age and verification outcome. A review found
    `erp-backup list` showing a set whose last verification FAILED as plain `committed`, no age."""
    s, cfg, full, incr = _full_then_incremental(tmp_path)
    art = s.storage.local_dir / incr / "files.tar.zst"
    flip_byte(art, art.stat().st_size // 2)
    assert script("verify_backup.sh", "--quick", config=cfg).returncode == 1
    r = script("restore.sh", config=cfg, stdin="y\nn\n")  # confirm the failure, then refuse the restore
    assert r.returncode == 1 and "nothing changed" in r.stdout
    step2 = r.stdout[r.stdout.index("step 2/3"):r.stdout.index("step 3/3")]
    header = next(line for line in step2.splitlines() if line.startswith("id "))
    assert "age" in header.split() and "verified" in header.split()
    rows = {line.split()[0]: line for line in step2.splitlines() if line.startswith((full, incr))}
    assert rows[full].split()[-1] == "passed" and rows[incr].split()[-1] == "FAILED"
    assert f"verification FAILED: {incr}" in step2
