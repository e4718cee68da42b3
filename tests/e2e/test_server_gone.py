"""The Prefect server dies while the CLI runs a backup as a flow run on it (its own server: the
session's shared one must live on). A review found Prefect's traceback after minutes of retries and
no error line; now one `erp-backup: error:` line on a line of its own, and no set half-written."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from erp_backup.adapters.storage.local import LocalRepository
from tests.conftest import CLI, make_settings, make_small_project, write_config
from tests.e2e.conftest import VENV_BIN, base_env, free_port

pytestmark = pytest.mark.e2e


def test_server_killed_during_a_cli_backup_is_one_error_line(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    env = base_env(home)
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
        cfg = write_config(tmp_path / "c.toml", s)
        out = open(tmp_path / "cli.out", "w+")
        cli = subprocess.Popen([CLI[0], "--config", str(cfg), "backup", "full"], stdout=out, stderr=subprocess.STDOUT,
                               env={**env, "PREFECT_API_URL": url, "PREFECT_CLIENT_MAX_RETRIES": "0"}, text=True)
        deadline = time.monotonic() + 60
        while "Beginning flow run" not in (tmp_path / "cli.out").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(server.pid, 9)  # the server is gone before the first task runs
        server.wait(timeout=20)
        cli.wait(timeout=300)
        text = (tmp_path / "cli.out").read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 9)
            server.wait(timeout=20)
        log.close()
    assert cli.returncode != 0
    assert "Traceback" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("erp-backup: error: the Prefect API at") and "stopped answering" in last, text[-2000:]
    repo = LocalRepository(s.storage.local_dir)
    for m in repo.scan().committed:  # whatever was committed is whole
        assert (s.storage.local_dir / m.id.value / "manifest.json").is_file()
