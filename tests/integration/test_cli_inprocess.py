"""The CLI without a Prefect server: backup, verify and restore run in this process (no temporary
API server, no ``import prefect``), log each stage to stderr and give the same results."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    cli_env,
    diff_states,
    make_settings,
    make_small_project,
    tree_state,
    write_config,
    write_file,
)

pytestmark = pytest.mark.integration

# the CLI's main() in a process that says, at the end, which prefect modules it imported
CLI_AND_MODULES = r"""
import atexit, sys
from erp_backup.cli import main
atexit.register(lambda: print("PREFECT-MODULES", len([m for m in sys.modules if m.split(".")[0] == "prefect"]),
                              file=sys.stderr))
sys.exit(main(sys.argv[1:]))
"""


def cli(*args: str, timeout: float = 120, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-c", CLI_AND_MODULES, *args], capture_output=True, text=True,
                         timeout=timeout, env=cli_env(**env), cwd=REPO)
    return res, time.monotonic() - t


def no_prefect(res: subprocess.CompletedProcess[str]) -> bool:
    return res.stderr.strip().splitlines()[-1] == "PREFECT-MODULES 0"


def test_backup_verify_restore_in_process(tmp_path: Path) -> None:
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    config = str(write_config(tmp_path / "config.toml", s))
    home = str(tmp_path / "prefect-home")  # empty: no profile, so no server configured

    res, took = cli("--config", config, "backup", "full", PREFECT_HOME=home)
    assert res.returncode == 0, res.stderr[-2000:]
    full = res.stdout.strip()
    assert full.endswith("-full") and no_prefect(res), res.stderr[-2000:]
    for stage in ("prepare", "scan", "dump", "archive", "seal", "verify", "commit", "report"):
        assert f"erp_backup.run - {stage}:" in res.stderr, res.stderr
    assert "uvicorn" not in res.stderr and "Traceback" not in res.stderr

    write_file(root / "app/new.py", "x = 1\n")
    res, took = cli("--config", config, "backup", "incremental", PREFECT_HOME=home)
    assert res.returncode == 0 and no_prefect(res), res.stderr[-2000:]
    incr = res.stdout.strip()
    assert incr.endswith("-incr") and "1 files to archive" in res.stderr, res.stderr
    print(f"CLI incremental, no server: {took:.2f} s wall (under load)")

    res, _ = cli("--config", config, "verify", PREFECT_HOME=home)
    assert res.returncode == 0 and no_prefect(res), res.stderr[-2000:]
    assert f"{full}: verification passed" in res.stderr and f"{incr}: verification passed" in res.stderr
    assert sum("passed" in ln for ln in res.stdout.splitlines()) == 2, res.stdout

    target = tmp_path / "restored"
    res, _ = cli("--config", config, "restore", "--target-dir", str(target), PREFECT_HOME=home)
    assert res.returncode == 0 and no_prefect(res), res.stderr[-2000:]
    assert incr in res.stdout
    assert not diff_states(tree_state(root), tree_state(target))


def test_a_run_that_cannot_start_in_process_is_one_error_line_and_writes_nothing(tmp_path: Path) -> None:
    """Another backup holds the repository lock (here: this test): the in-process run waits
    ``lock_wait_s``, then fails like the flow does — one error line last, no traceback, no set."""
    from erp_backup.adapters.storage.local import LocalRepository

    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    config = str(write_config(tmp_path / "config.toml", s))
    repo = LocalRepository(s.storage.local_dir)
    with repo.lock(1.0, purpose="a test holding the lock"):
        before = sorted(p.name for p in s.storage.local_dir.iterdir())
        res, _ = cli("--config", config, "backup", "full", PREFECT_HOME=str(tmp_path / "ph"))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith("erp-backup: error:") and "lock" in lines[-2], res.stderr[-2000:]
    assert "Traceback" not in res.stderr and no_prefect(res)
    assert sorted(p.name for p in s.storage.local_dir.iterdir()) == before


@pytest.mark.parametrize("status", [404, 502])
def test_an_api_url_where_something_else_answers_is_one_error_line(tmp_path: Path, status: int) -> None:
    """PREFECT_API_URL reaches a web server that is not a running Prefect API (another service on that
    port: 404; a reverse proxy whose Prefect server is down: 502). A review found the backup then
    started the flow and died in Prefect's client with a traceback; it must be one error line before
    anything is written, like a refused connection."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        root = make_small_project(tmp_path / "erp")
        s = make_settings(tmp_path, root=root)
        config = str(write_config(tmp_path / "config.toml", s))
        url = f"http://127.0.0.1:{server.server_address[1]}/api"
        res, _ = cli("--config", config, "backup", "full", PREFECT_API_URL=url, PREFECT_HOME=str(tmp_path / "ph"))
    finally:
        server.shutdown()
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert lines[-2].startswith("erp-backup: error: the Prefect API at") and f"HTTP {status}" in lines[-2], lines
    assert not s.storage.local_dir.exists() or not any(p for p in s.storage.local_dir.iterdir()
                                                       if not p.name.startswith("."))


def test_recovery_commands_without_a_server_import_no_prefect(tmp_path: Path) -> None:
    """restore --in-place, restore --put-back and restore-test without a server run in process: a
    review found them importing the flows (all of Prefect: ~2 s, and every database warning logged
    twice, once by Prefect's handler) before the runner chose the plain path."""
    from erp_backup import safety
    from erp_backup.core.models import BackupKind
    from erp_backup.pipeline import run_backup

    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    run_backup(s, BackupKind.FULL)
    config = str(write_config(tmp_path / "config.toml", s))
    home = str(tmp_path / "ph")
    res, _ = cli("--config", config, "restore", "--in-place", "--files-only", "--yes", PREFECT_HOME=home)
    assert res.returncode == 0 and no_prefect(res), res.stderr[-1500:]
    (copy,) = safety.copies(s.storage.local_dir)
    res, _ = cli("--config", config, "restore", "--put-back", str(copy), "--yes", PREFECT_HOME=home)
    assert res.returncode == 0 and no_prefect(res), res.stderr[-1500:]
    res, _ = cli("--config", config, "restore-test", PREFECT_HOME=home)
    assert no_prefect(res), res.stderr[-1500:]
