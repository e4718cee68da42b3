"""The process watchdog of ``erp_backup.reaper``, run as a script: ``python -I -S _watchdog.py TOKEN GRACE``.

Standalone on purpose (no import of the package or of anything outside the interpreter's
built-ins): it starts in a few milliseconds and works from any directory.

stdin is a pipe whose write end only the CLI holds; it carries "PID STARTTIME" lines for children
the CLI forked without exec. At EOF (the CLI's process has ended, however) it stops every process
carrying TOKEN in its ``ERP_BACKUP_RUN_TOKEN`` (a ``:``-separated chain) or reported on the pipe:
SIGTERM, GRACE seconds, SIGKILL, and scans again until none is left.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

KEY = b"ERP_BACKUP_RUN_TOKEN="
ROUNDS = 8


def _read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat_fields(pid: int) -> list[bytes]:
    """Fields 3.. of /proc/PID/stat (after the command name, which may contain anything)."""
    return _read(pid, "stat").rpartition(b")")[2].split()


def _starttime(pid: int) -> bytes | None:
    f = _stat_fields(pid)
    return f[19] if len(f) > 19 else None


class Watchdog:
    def __init__(self, token: bytes) -> None:
        self.token = token
        self.me = os.getpid()
        self.forked: dict[int, bytes] = {}  # pid -> start time, reported by children forked without exec

    def wait_for_eof(self, fd: int = 0) -> None:
        buf = b""
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            *lines, buf = (buf + data).split(b"\n")
            for line in lines:
                f = line.split()
                if len(f) == 2 and f[0].isdigit():
                    self.forked[int(f[0])] = f[1]

    def ours(self, pid: int) -> bool:
        for item in _read(pid, "environ").split(b"\0"):
            if item.startswith(KEY):
                if self.token in item[len(KEY):].split(b":"):
                    return True
                break
        return pid in self.forked and _starttime(pid) == self.forked[pid]

    def scan(self) -> dict[int, int | None]:
        """pid -> pidfd (None where pidfds are not supported) of every process of the run."""
        found: dict[int, int | None] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == self.me or not self.ours(int(name)):
                continue
            pid, fd = int(name), None
            try:
                fd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                pass
            if fd is not None and not self.ours(pid):  # exited, its pid reused, between scan and pidfd
                os.close(fd)
                continue
            found[pid] = fd
        return found

    def sweep(self, grace: float) -> tuple[dict[int, bytes], list[int]]:
        """Stop every process of the run: (stopped pid -> command line, pids that would not die)."""
        stopped: dict[int, bytes] = {}
        left: dict[int, int | None] = {}
        for rnd in range(ROUNDS):
            handles = self.scan()
            if not handles:
                break
            for pid in handles:
                stopped.setdefault(pid, _read(pid, "cmdline").replace(b"\0", b" ").strip()[:80])
            for pid, fd in handles.items():
                _send(pid, fd, signal.SIGTERM if rnd == 0 else signal.SIGKILL)
            left = _wait(handles, grace if rnd == 0 else 1.0)
            for pid, fd in left.items():
                _send(pid, fd, signal.SIGKILL)
            left = _wait(left, 1.0)
            for fd in handles.values():
                if fd is not None:
                    os.close(fd)
        return stopped, sorted(left)


def _gone(pid: int, fd: int | None) -> bool:
    if fd is not None:
        return bool(select.select([fd], [], [], 0)[0])  # a pidfd is readable once the process exited
    f = _stat_fields(pid)
    return not f or f[0] in (b"Z", b"X")


def _send(pid: int, fd: int | None, sig: int) -> None:
    try:
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
    except OSError:
        pass


def _wait(handles: dict[int, int | None], seconds: float) -> dict[int, int | None]:
    end = time.monotonic() + seconds
    while True:
        left = {p: fd for p, fd in handles.items() if not _gone(p, fd)}
        if not left or time.monotonic() >= end:
            return left
        time.sleep(0.02)


def main(argv: list[str]) -> int:
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    w = Watchdog(argv[1].encode())
    w.wait_for_eof()
    stopped, left = w.sweep(float(argv[2]))
    if not stopped:
        return 0
    what = b", ".join(b"%d %s" % (p, c or b"?") for p, c in sorted(stopped.items()))
    msg = b"erp-backup: stopped %d process(es) left behind by the run that just ended: %s\n" % (len(stopped), what)
    if left:
        msg += b"erp-backup: error: could not stop %s\n" % b", ".join(b"%d" % p for p in left)
    try:
        os.write(2, msg)
    except OSError:
        pass
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
