"""Process bookkeeping for the "a killed run leaves no process behind" tests, straight from /proc
(independent of ``erp_backup.reaper``): who carries a run token, who descends from a pid, who is
still alive (a zombie is not), and which pipe an fd points at."""

from __future__ import annotations

import os
import signal
import time

TOKEN_ENV = "ERP_BACKUP_RUN_TOKEN"
Proc = tuple[int, str]  # (pid, start time): survives pid reuse


def _read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat(pid: int) -> list[str]:
    return _read(pid, "stat").rpartition(b")")[2].decode().split()


def pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def ident(pid: int) -> Proc | None:
    f = _stat(pid)
    return (pid, f[19]) if len(f) > 19 else None


def cmdline(pid: int) -> str:
    return _read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def env_of(pid: int) -> dict[str, str]:
    out = {}
    for item in _read(pid, "environ").split(b"\0"):
        k, sep, v = item.decode(errors="replace").partition("=")
        if sep:
            out.setdefault(k, v)
    return out


def tokens_of(pid: int) -> list[str]:
    return [t for t in env_of(pid).get(TOKEN_ENV, "").split(":") if t]


def alive(p: Proc) -> bool:
    f = _stat(p[0])
    return len(f) > 19 and f[19] == p[1] and f[0] not in ("Z", "X")


def carriers(token: str) -> dict[Proc, str]:
    """Live processes whose environment carries ``token`` -> their command line."""
    out = {}
    for pid in pids():
        if token in tokens_of(pid):
            p = ident(pid)
            if p is not None and alive(p):
                out[p] = cmdline(pid)
    return out


def descendants(root: int) -> dict[Proc, str]:
    """Live descendants of ``root`` (not root itself) -> their command line."""
    kids: dict[int, list[int]] = {}
    for pid in pids():
        f = _stat(pid)
        if len(f) > 1 and f[0] not in ("Z", "X"):
            kids.setdefault(int(f[1]), []).append(pid)
    out: dict[Proc, str] = {}
    todo = list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        p = ident(pid)
        if p is not None:
            out[p] = cmdline(pid)
        todo.extend(kids.get(pid, []))
    return out


def survivors(token: str, seen: dict[Proc, str]) -> dict[Proc, str]:
    """Processes of a run still alive: carriers of its token, and any process seen descending from it."""
    left = {p: c for p, c in seen.items() if alive(p)}
    left.update(carriers(token))
    return left


def wait_until_gone(token: str, seen: dict[Proc, str], timeout: float = 5.0) -> tuple[dict[Proc, str], float]:
    """Poll until no process of the run is alive: (what is left after ``timeout``, seconds it took)."""
    t0 = time.monotonic()
    while True:
        left = survivors(token, seen)
        if not left or time.monotonic() - t0 >= timeout:
            return left, time.monotonic() - t0
        time.sleep(0.05)


def kill_all(token: str, seen: dict[Proc, str]) -> None:
    """Test hygiene after a failure: never leave a 200 MB Prefect server behind."""
    for p in survivors(token, seen):
        try:
            os.kill(p[0], signal.SIGKILL)
        except OSError:
            pass


def pipe_of(pid: int, fd: int) -> str | None:
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    return target if target.startswith("pipe:") else None


def holders(target: str, candidates: list[int]) -> list[int]:
    """Which of ``candidates`` hold an fd pointing at ``target`` (e.g. ``pipe:[1234]``)."""
    out = []
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    out.append(pid)
                    break
            except OSError:
                continue
    return out


def hang_command(marker: str) -> list[str]:
    """A command (for a config's command list) that writes its pid to ``marker`` and sleeps."""
    import sys

    return [sys.executable, "-c", f"import os, time; open({marker!r}, 'w').write(str(os.getpid())); time.sleep(120)"]


def kill_when_hanging(argv: list[str], marker: str, *, env: dict[str, str], cwd: str, timeout: float = 90) -> None:
    """Start ``argv``; once the ``hang_command`` it runs has written ``marker``, SIGKILL it and the
    hanging command (which runs in a session of its own)."""
    import subprocess

    p = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not (os.path.exists(marker) and open(marker).read()):
            assert p.poll() is None, "the run ended before it reached the hanging command"
            assert time.monotonic() < deadline, "the run never reached the hanging command"
            time.sleep(0.1)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        if os.path.exists(marker) and open(marker).read():
            os.kill(int(open(marker).read()), signal.SIGKILL)
