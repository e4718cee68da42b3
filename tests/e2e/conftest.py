"""A real Prefect server for the end-to-end tests (started once per test session)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_LOGGING_LEVEL="INFO", PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}")
    return env


class PrefectServer:
    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.api = url
        self.env = env

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30)

    def flow_runs(self, flow_name: str | None = None) -> list[dict]:
        with self.client() as c:
            body: dict = {"sort": "START_TIME_DESC", "limit": 50}
            if flow_name:
                body["flows"] = {"name": {"any_": [flow_name]}}
            r = c.post("/flow_runs/filter", json=body)
            r.raise_for_status()
            return r.json()

    def artifacts(self, key: str) -> list[dict]:
        with self.client() as c:
            r = c.post("/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}})
            r.raise_for_status()
            return r.json()

    def events(self, name: str) -> list[dict]:
        with self.client() as c:
            r = c.post("/events/filter", json={"filter": {"event": {"name": [name]}}, "limit": 50})
            r.raise_for_status()
            return r.json()["events"]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = base_env(home)
    # links in alert messages ({{ flow_run|ui_url }}) need the server to know where its UI is,
    # and the UI where its API is (it assumes port 4200 otherwise)
    server_env = {**env, "PREFECT_UI_URL": f"http://127.0.0.1:{port}", "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("prefect server did not become healthy in 90 s")
    env = {**env, "PREFECT_API_URL": url}
    try:
        yield PrefectServer(url, env)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()
