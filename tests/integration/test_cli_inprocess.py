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
