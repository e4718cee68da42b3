"""The CLI's runner: where a job runs (flow on the configured Prefect server, else in-process),
how it finds the server without importing Prefect, and the retries of the in-process stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erp_backup import runner
from erp_backup.core.errors import ConfigError, IntegrityError, LockError, SourceError
from erp_backup.prefect_target import configured_api_url
from erp_backup.retry import PERMANENT, delay_for, is_transient, retrying

# ----------------------------------------------------------------------------- where is the server?

# (name, environment, files relative to the scenario dir: "cwd/..." or "home/...")
SCENARIOS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("nothing", {}, {}),
    ("env", {"PREFECT_API_URL": "http://env:4200/api"}, {}),
    ("env empty", {"PREFECT_API_URL": ""}, {"home/profiles.toml":
                                             'active = "s"\n[profiles.s]\nPREFECT_API_URL = "http://p/api"\n'}),
    ("dotenv", {}, {"cwd/.env": "PREFECT_API_URL=http://dotenv:4200/api\n"}),
    ("prefect.toml", {}, {"cwd/prefect.toml": '[api]\nurl = "http://toml:4200/api"\n'}),
    ("pyproject", {}, {"cwd/pyproject.toml": '[tool.prefect.api]\nurl = "http://pyproject:4200/api"\n'}),
    ("pyproject without prefect", {}, {"cwd/pyproject.toml": '[project]\nname = "x"\n'}),
    ("active profile", {}, {"home/profiles.toml":
                            'active = "srv"\n[profiles.srv]\nPREFECT_API_URL = "http://profile:4200/api"\n'
                            '[profiles.other]\nPREFECT_LOGGING_LEVEL = "DEBUG"\n'}),
    ("PREFECT_PROFILE", {"PREFECT_PROFILE": "other"}, {"home/profiles.toml":
                         'active = "srv"\n[profiles.srv]\nPREFECT_API_URL = "http://profile:4200/api"\n'
                         '[profiles.other]\nPREFECT_LOGGING_LEVEL = "DEBUG"\n'}),
    ("unknown active profile", {}, {"home/profiles.toml":
                                    'active = "gone"\n[profiles.srv]\nPREFECT_API_URL = "http://p/api"\n'}),
    ("PREFECT_PROFILES_PATH", {"PREFECT_PROFILES_PATH": "{dir}/elsewhere.toml"}, {
        "elsewhere.toml": 'active = "x"\n[profiles.x]\nPREFECT_API_URL = "http://elsewhere/api"\n'}),
    ("env beats profile", {"PREFECT_API_URL": "http://env/api"}, {
        "home/profiles.toml": 'active = "s"\n[profiles.s]\nPREFECT_API_URL = "http://profile/api"\n'}),
    ("broken profiles file", {}, {"home/profiles.toml": "active = [\n"}),
]

PREFECT_SAYS = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
from prefect.settings import Settings
out = {}
base = dict(os.environ)
for name, env, cwd in json.loads(sys.argv[1]):
    os.environ.clear(); os.environ.update(base); os.environ.update(env)
    os.chdir(cwd)
    out[name] = Settings().api.url
print(json.dumps(out))
"""


def _scenario(tmp_path: Path, name: str, env: dict[str, str], files: dict[str, str]) -> tuple[dict[str, str], Path]:
    d = tmp_path / name.replace(" ", "_").replace(".", "_")
    for sub in ("cwd", "home"):
        (d / sub).mkdir(parents=True)
    for rel, text in files.items():
        (d / rel).write_text(text)
    full = {"PREFECT_HOME": str(d / "home"), **{k: v.format(dir=d) for k, v in env.items()}}
    return full, d / "cwd"


def test_configured_api_url_agrees_with_prefect_for_every_source(tmp_path: Path) -> None:
    cases = [(name, *_scenario(tmp_path, name, env, files)) for name, env, files in SCENARIOS]
    ours = {name: configured_api_url(env, cwd) for name, env, cwd in cases}
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("PREFECT_") or k in ("PREFECT_SERVER_ANALYTICS_ENABLED",)}
    res = subprocess.run([sys.executable, "-c", PREFECT_SAYS,
                          json.dumps([(n, e, str(c)) for n, e, c in cases])],
                         capture_output=True, text=True, timeout=120, env={**base, "DO_NOT_TRACK": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    prefect = {k: v or None for k, v in json.loads(res.stdout).items()}  # "" = unset for both
    assert ours == prefect
    assert ours["active profile"] == "http://profile:4200/api" and ours["nothing"] is None  # not all None


def test_reading_the_profile_does_not_import_prefect() -> None:
    code = ("import sys; from erp_backup import runner; runner.mode(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != runner.MODE_ENV})
    assert res.returncode == 0 and res.stdout.strip() == "[]", res


# ----------------------------------------------------------------------------- flow or plain


def _calls() -> tuple[list[str], Any, Any]:
    seen: list[str] = []

    def flow(**kw: Any) -> str:
        seen.append(f"flow {kw}")
        return "flow"

    def plain(**kw: Any) -> str:
        seen.append(f"plain {kw}")
        return "plain"

    return seen, flow, plain


@pytest.fixture
def http_answer() -> Iterator[tuple[str, list[str], list[int]]]:
    """(URL of a real HTTP server on 127.0.0.1, paths it was asked for, [status it answers])."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    paths: list[str] = []
    status = [200]

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/api/", paths, status
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("forced, api, expected", [
    ("", False, "plain"), ("auto", False, "plain"), ("", True, "flow"),
    ("flow", False, "flow"), ("plain", True, "plain"), (" Plain ", False, "plain"),
])
def test_run_picks_the_flow_only_with_a_server_or_when_told(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http_answer: tuple[str, list[str], list[int]],
        forced: str, api: bool, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv(runner.MODE_ENV, forced)
    if api:
        monkeypatch.setenv("PREFECT_API_URL", http_answer[0])
    else:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
    seen, flow, plain = _calls()
    assert runner.run(flow, plain, a=1) == expected
    assert seen == [f"{expected} {{'a': 1}}"]


def test_without_a_plain_variant_the_flow_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runner.MODE_ENV, "plain")
    seen, flow, _ = _calls()
    assert runner.run(flow, None, b=2) == "flow" and seen == ["flow {'b': 2}"]


def test_a_bad_runner_mode_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runner.MODE_ENV, "server")
    seen, flow, plain = _calls()
    with pytest.raises(ConfigError) as e:
        runner.run(flow, plain)
    assert "ERP_BACKUP_RUNNER='server'" in str(e.value) and e.value.hint and seen == []


def test_lazy_imports_the_flow_only_when_called() -> None:
    code = ("import sys; from erp_backup import runner; "
            "f = runner.lazy('erp_backup.flows.restore', 'verify_checked_flow'); "
            "print('prefect' in sys.modules, f.__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["False", "verify_checked_flow"], res


# ----------------------------------------------------------------------------- retries


def _flaky(errors: list[BaseException]) -> tuple[list[int], Any]:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if errors:
            raise errors.pop(0)
        return x * 2

    return calls, fn


def test_transient_errors_are_retried_with_the_configured_delays() -> None:
    slept: list[float] = []
    calls, fn = _flaky([OSError("connection reset"), TimeoutError("slow"), ConnectionError("again")])
    wrapped = retrying(fn, retries=3, delays=[10, 60], name="dump", log=runner.logging.getLogger("t"),
                       sleep=slept.append)
    assert wrapped(21) == 42
    assert calls == [21] * 4 and slept == [10, 60, 60]  # the last delay repeats, as in Prefect


def test_retries_run_out_and_the_last_error_propagates() -> None:
    slept: list[float] = []
    calls, fn = _flaky([OSError("one"), OSError("two")])
    wrapped = retrying(fn, retries=1, delays=[0.5], name="scan", log=runner.logging.getLogger("t"),
                       sleep=slept.append)
    with pytest.raises(OSError, match="two"):
        wrapped(1)
    assert len(calls) == 2 and slept == [0.5]


@pytest.mark.parametrize("error", [ConfigError("bad", hint="h"), LockError("held", hint="h"),
                                   IntegrityError("sum", hint="h"), SourceError("gone", hint="h"),
                                   KeyboardInterrupt()])
def test_permanent_errors_and_interrupts_are_not_retried(error: BaseException) -> None:
    slept: list[float] = []
    calls, fn = _flaky([error])
    wrapped = retrying(fn, retries=5, delays=[1], name="x", log=runner.logging.getLogger("t"), sleep=slept.append)
    with pytest.raises(type(error)):
        wrapped(1)
    assert calls == [1] and slept == []


def test_the_flows_use_the_same_split() -> None:
    from erp_backup.flows import common

    assert common.PERMANENT is PERMANENT
    assert not is_transient(ConfigError("x")) and is_transient(OSError("x")) and not is_transient(SystemExit(1))


@given(st.integers(min_value=0, max_value=50), st.lists(st.floats(0, 1e4), max_size=6))
def test_delay_for_is_prefects_rule(attempt: int, delays: list[float]) -> None:
    expected = delays[min(attempt, len(delays) - 1)] if delays else 0.0
    assert delay_for(attempt, delays) == expected


# ----------------------------------------------------------------------------- a configured server that is down


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_configured_server_that_does_not_answer_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{_free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.delenv(runner.MODE_ENV, raising=False)
    seen, flow, plain = _calls()
    with pytest.raises(ConfigError) as e:
        runner.run(flow, plain)
    assert url in str(e.value) and "ERP_BACKUP_RUNNER=plain" in (e.value.hint or "") and seen == []


@pytest.mark.parametrize("url", ["not a url", "file:///etc/passwd", "127.0.0.1:4200/api"])
def test_a_configured_api_url_that_is_not_http_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.delenv(runner.MODE_ENV, raising=False)
    seen, flow, plain = _calls()
    with pytest.raises(ConfigError, match="not an http"):
        runner.run(flow, plain)
    assert seen == []


@pytest.mark.parametrize("status", [200, 401, 403])
def test_a_health_answer_counts_as_a_server(monkeypatch: pytest.MonkeyPatch, status: int,
                                            http_answer: tuple[str, list[str], list[int]]) -> None:
    url, paths, answer = http_answer
    answer[0] = status
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.delenv(runner.MODE_ENV, raising=False)
    seen, flow, plain = _calls()
    assert runner.run(flow, plain) == "flow"
    assert paths == ["/api/health"] and seen == ["flow {}"]


@pytest.mark.parametrize("status", [404, 500, 502])
def test_another_http_answer_is_no_prefect_server(monkeypatch: pytest.MonkeyPatch, status: int,
                                                   http_answer: tuple[str, list[str], list[int]]) -> None:
    """Something else answers there (a proxy whose Prefect is down: 502; another service: 404): one
    ConfigError before the flow, not Prefect's traceback from inside the run."""
    url, _paths, answer = http_answer
    answer[0] = status
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.delenv(runner.MODE_ENV, raising=False)
    seen, flow, plain = _calls()
    with pytest.raises(ConfigError, match=f"HTTP {status}"):
        runner.run(flow, plain)
    assert seen == []
