"""The process watchdog (erp_backup.reaper) with real processes and real signals, without Prefect:
a small stand-in CLI starts the watchdog and the kinds of children a run has, then is SIGKILLed,
exits normally, runs with stdin/stdout closed or inside a shell pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests import procs
from tests.conftest import REPO

pytestmark = pytest.mark.integration

# argv: INFO_PATH MODE. MODE: "run" (then sleep until killed), "leak" (exit 0, children left running),
# "clean" (exit 0 with nothing left)
FAKE_CLI = r"""
import json, os, subprocess, sys, threading, time
from erp_backup import reaper
from erp_backup.adapters import proc

info_path, mode = sys.argv[1], sys.argv[2]
w = reaper.start()
info = {"pid": os.getpid(), "watchdog": w.pid, "token": w.token, "chain": os.environ["ERP_BACKUP_RUN_TOKEN"],
        "again": reaper.start() is w}
info["proc_env"] = proc.run(["sh", "-c", "echo $ERP_BACKUP_RUN_TOKEN"]).stdout.decode().strip()
if mode != "clean":
    # like Prefect's temporary server: a plain child with os.environ, in the CLI's process group
    info["popen"] = subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL).pid
if mode == "run":
    # like a database client: through proc.py (allow-listed environment, own session); ignores SIGTERM
    ready = threading.Event()
    stubborn = ("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); "
                "time.sleep(300)")
    def client():
        try:
            proc.stream_out([sys.executable, "-c", stubborn], lambda chunk: ready.set(), timeout=None)
        except BaseException:
            pass
    threading.Thread(target=client, daemon=True).start()
    assert ready.wait(20)
    # forked without exec: its /proc environ is the CLI's original one, without the token
    pid = os.fork()
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    info["forked"] = pid
    # a grandchild that detaches (own session, its parent exits at once)
    subprocess.run(["sh", "-c", "setsid sleep 301 >/dev/null 2>&1 </dev/null &"], check=True)
with open(info_path + ".tmp", "w") as f:
    json.dump(info, f)
os.rename(info_path + ".tmp", info_path)
if mode == "run":
    time.sleep(300)
"""


def _env(outer: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_BACKUP_")}
    return {**env, "PYTHONPATH": str(REPO), **({procs.TOKEN_ENV: outer} if outer else {})}


def _wait_info(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the stand-in CLI died: {proc.communicate()}"
        assert time.monotonic() < deadline, "the stand-in CLI never got ready"
        time.sleep(0.02)
    info: dict[str, object] = json.loads(path.read_text())
    return info


def test_sigkilled_cli_leaves_no_process_behind(tmp_path: Path) -> None:
    outer = uuid.uuid4().hex
    info_path = tmp_path / "info.json"
    cli = subprocess.Popen([sys.executable, "-c", FAKE_CLI, str(info_path), "run"], env=_env(outer), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: dict[procs.Proc, str] = {}
    try:
        info = _wait_info(info_path, cli)
        seen = procs.descendants(cli.pid)
        watchdog = int(info["watchdog"])  # type: ignore[call-overload]
        # the token chain: the run's token after the caller's; database clients get it through proc.py;
        # the watchdog carries only the caller's (an outer run's watchdog covers it; its own does not)
        assert info["chain"] == f"{outer}:{info['token']}" and info["proc_env"] == info["chain"]
        assert info["again"] is True
        assert procs.env_of(watchdog) == {procs.TOKEN_ENV: outer}
        assert os.readlink(f"/proc/{watchdog}/cwd") == "/"
        assert os.getsid(watchdog) == watchdog  # its own session: no terminal signal reaches it
        # the pipe: only the CLI (write end) and the watchdog (read end) hold it, not one child
        pipe = procs.pipe_of(watchdog, 0)
        assert pipe is not None
        everyone = [p for p, _ in seen] + [cli.pid]
        assert sorted(procs.holders(pipe, everyone)) == sorted([cli.pid, watchdog])
        names = {p[0]: c for p, c in seen.items()}
        assert "sleep 300" in names.values() and int(info["forked"]) in names  # type: ignore[call-overload]
        carriers = procs.carriers(outer)
        assert {c for c in carriers.values() if "sleep 301" in c}, carriers  # the detached grandchild
        seen.update(carriers)

        cli.send_signal(signal.SIGKILL)
        cli.wait(10)
        left, took = procs.wait_until_gone(outer, seen, timeout=5.0)
        assert not left, f"still alive 5 s after the SIGKILL: {left}"
        # the SIGTERM-ignoring client needed the SIGKILL after the grace period
        assert took >= 1.5, f"everything gone after {took:.2f} s: the grace period was skipped"
        _, err = cli.communicate(timeout=10)
    finally:
        procs.kill_all(outer, seen)
        if cli.poll() is None:
            cli.kill()
    text = err.decode()
    assert "erp-backup: stopped 4 process(es) left behind by the run that just ended" in text, text
    assert "sleep 300" in text and "sleep 301" in text and "could not stop" not in text, text


@pytest.mark.parametrize("shape", ["stdin-stdout-closed", "pipeline"])
def test_watchdog_works_with_closed_stdio_and_in_a_pipeline(tmp_path: Path, shape: str) -> None:
    outer = uuid.uuid4().hex
    info_path = tmp_path / "info.json"
    if shape == "pipeline":
        script = '"$0" -c "$1" "$2" run | cat'
    else:
        script = 'exec "$0" -c "$1" "$2" run <&- >&-'
    sh = subprocess.Popen(["sh", "-c", script, sys.executable, FAKE_CLI, str(info_path)], env=_env(outer),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: dict[procs.Proc, str] = {}
    try:
        info = _wait_info(info_path, sh)
        pid = int(info["pid"])  # type: ignore[call-overload]
        watchdog = int(info["watchdog"])  # type: ignore[call-overload]
        seen = {**procs.descendants(sh.pid), **procs.carriers(outer)}
        pipe = procs.pipe_of(watchdog, 0)
        assert pipe is not None
        # the pipe never took the place of a closed stdin/stdout in the CLI
        fds = [int(fd) for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}") == pipe]
        assert len(fds) == 1 and fds[0] >= 3, fds
        os.kill(pid, signal.SIGKILL)
        left, _ = procs.wait_until_gone(outer, seen, timeout=5.0)
        assert not left, f"still alive 5 s after the SIGKILL: {left}"
        sh.wait(5)  # the pipeline ends: nothing holds its pipe any more
        err = sh.stderr.read().decode() if sh.stderr else ""
    finally:
        procs.kill_all(outer, seen)
        if sh.poll() is None:
            sh.kill()
    assert "stopped 4 process(es)" in err, err


def test_normal_exit_leaves_no_watchdog_and_says_nothing(tmp_path: Path) -> None:
    outer = uuid.uuid4().hex
    info_path = tmp_path / "info.json"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", FAKE_CLI, str(info_path), "clean"], env=_env(outer), cwd=REPO,
                         capture_output=True, timeout=60, check=False)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr.decode()
    assert res.stderr == b"" and res.stdout == b""
    info = json.loads(info_path.read_text())
    # run() returned once the watchdog let go of stderr, i.e. while it exits: gone within a second
    watchdog = procs.ident(int(info["watchdog"]))
    seen = {watchdog: "watchdog"} if watchdog is not None else {}
    left, _ = procs.wait_until_gone(outer, seen, timeout=1.0)
    assert not left, left
    assert took < 30


def test_normal_exit_that_left_a_child_running_is_cleaned_up(tmp_path: Path) -> None:
    outer = uuid.uuid4().hex
    info_path = tmp_path / "info.json"
    cli = subprocess.Popen([sys.executable, "-c", FAKE_CLI, str(info_path), "leak"], env=_env(outer), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = cli.communicate(timeout=30)  # the leaked child holds stderr until the watchdog stops it
        assert cli.returncode == 0, err.decode()
        left, _ = procs.wait_until_gone(outer, {}, timeout=5.0)
        assert not left, left
    finally:
        procs.kill_all(outer, {})
        if cli.poll() is None:
            cli.kill()
    info = json.loads(info_path.read_text())
    assert f"stopped 1 process(es) left behind by the run that just ended: {info['popen']} sleep 300" in \
        err.decode()


GUARD = r"""
import os, sys
from erp_backup import reaper
assert "ERP_BACKUP_RUN_TOKEN" not in os.environ
for command in ("init", "list", "show"):
    assert reaper.guard(command) is None and "ERP_BACKUP_RUN_TOKEN" not in os.environ, command
w = reaper.guard("backup")
assert w is not None and os.environ["ERP_BACKUP_RUN_TOKEN"] == w.token
assert reaper.guard("verify") is w and reaper.guard("restore") is w and reaper.guard("demo") is w
# these start processes too (Prefect's temporary server, gpg and its agent)
for command in ("restore-test", "upload", "block", "setup"):
    assert reaper.guard(command) is w, command
assert reaper.guard("list", remote=True) is w
print("ok")
"""

MISSING = r"""
from erp_backup import reaper
from erp_backup.core.errors import BackupError
reaper.WATCHDOG = "/nonexistent/_watchdog.py"
try:
    reaper.start()
except BackupError as e:
    print(e)
"""


def test_only_the_commands_that_start_prefect_get_a_watchdog() -> None:
    res = subprocess.run([sys.executable, "-c", GUARD], env=_env(""), cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr


def test_a_missing_watchdog_is_an_actionable_error() -> None:
    res = subprocess.run([sys.executable, "-c", MISSING], env=_env(""), cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.stdout.strip() == "the process watchdog /nonexistent/_watchdog.py is missing — reinstall erp-backup", \
        res.stdout + res.stderr
