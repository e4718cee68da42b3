"""The README's manual restore works with standard tools only (sha256sum, zstd, tar, sqlite3, python3).

The commands are taken from README.md itself, so the documentation cannot drift from the format.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup.config import settings_from_dict
from erp_backup.core.models import BackupKind
from erp_backup.demo import db_state, make_project, mutate_db, mutate_files, tree_state
from erp_backup.pipeline import run_backup

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = ["*.pyc", "__pycache__", "venv", ".venv", "node_modules", "staticfiles", "media"]


def readme_prune_script() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"python3 - \"\$DEST\" manifest.json <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert m, "README lost its manual-restore script"
    return m.group(1)


def sh(*argv: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def test_manual_restore_of_an_incremental_chain(tmp_path: Path) -> None:
    root, backups = tmp_path / "erp", tmp_path / "backups"
    db = make_project(root)
    s = settings_from_dict({"project": {"root": str(root)}, "database": {"url": f"sqlite:///{db}"},
                            "storage": {"local_dir": str(backups)}})
    t = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    run_backup(s, BackupKind.FULL, now=t)
    mutate_files(root, 1)
    mutate_db(db, 1)
    run_backup(s, BackupKind.INCREMENTAL, now=t + timedelta(hours=1))
    mutate_files(root, 2)
    mutate_db(db, 2)
    last = run_backup(s, BackupKind.INCREMENTAL, now=t + timedelta(hours=2))
    want_files = tree_state(root, EXCLUDES, {"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"})
    want_db = db_state(db)

    set_dir = last.path
    out = sh("sha256sum", "-c", "SHA256SUMS", cwd=set_dir).stdout.decode()
    assert out.count(": OK") == 3  # both artifacts and manifest.json
    m = json.loads((set_dir / "manifest.json").read_text())
    chain = [m["base"], *[d for d in m["depends_on"] if d != m["base"]], m["id"]]
    target = tmp_path / "restore"
    target.mkdir()
    for sid in chain:
        z = subprocess.Popen(["zstd", "-dc", str(backups / sid / "files.tar.zst")], stdout=subprocess.PIPE)
        sh("tar", "-xpf", "-", "-C", str(target), "--numeric-owner", stdin=z.stdout)
        assert z.wait() == 0
    sh("python3", "-", str(target), str(set_dir / "manifest.json"), input=readme_prune_script().encode())
    with open(target / "db.sqlite3", "wb") as f:
        subprocess.run(["zstd", "-dc", str(set_dir / "db.sqlite.sqlite3.zst")], stdout=f, check=True)
    assert sh("sqlite3", str(target / "db.sqlite3"), "PRAGMA integrity_check").stdout.strip() == b"ok"

    got = tree_state(target, EXCLUDES, {"db.sqlite3"})
    # tar keeps whole-second mtimes; compare everything else exactly and mtimes to the second
    def coarse(state: dict) -> dict:
        return {p: (v[:3] + (v[3] // 10**9,) if v[0] == "file" else v) for p, v in state.items()}

    assert coarse(got) == coarse(want_files)
    assert db_state(target / "db.sqlite3") == want_db
    conn = sqlite3.connect(target / "db.sqlite3")
    assert conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 502
    conn.close()
