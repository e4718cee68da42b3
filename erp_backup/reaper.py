"""Leave no process behind: when a run dies, however (SIGKILL, the OOM killer, a crash), every
process it started dies with it.

``guard()`` runs at the start of each command that starts Prefect, before anything is spawned:

1. A fresh run token goes into ``os.environ[ERP_BACKUP_RUN_TOKEN]``, so every process started from
   here on carries it in ``/proc/PID/environ``: Prefect's temporary API server (uvicorn; it copies
   ``os.environ``), the database clients (``adapters/proc.py`` allow-lists the variable) and their
   children. A run started inside another run appends its token (``outer:inner``): the outer
   watchdog covers the inner run too.
2. A watchdog starts: ``python -I -S erp_backup/_watchdog.py`` (nothing imported beyond the
   interpreter's built-ins), in its own session (no terminal signals, not in the CLI's process
   group), in ``/``, whose stdin is the read end of a pipe. Only the CLI holds the write end:
   close-on-exec (no exec'd child gets it), never fd 0-2, and closed in children forked without
   exec, which first write their pid and start time into the pipe (their ``/proc/PID/environ`` is
   the CLI's original one, without the token).
3. When the CLI's process ends, whatever the cause, the kernel closes the write end; the watchdog
   reads EOF and stops every process carrying the token (or reported by a fork): SIGTERM, a grace
   period, SIGKILL, then scans again until none is left, and exits. Each process is pinned with a
   pidfd and checked again before it is signalled, so a recycled pid is never hit. On a normal
   exit Prefect has already stopped its server: the scan finds nothing, and the watchdog is gone a
   few milliseconds after the CLI. When it did stop something it says so on the CLI's stderr.

Not covered: a process that replaces its environment (``env -i``) and was not forked directly
by the CLI; the watchdog itself being killed.
"""

from __future__ import annotations

import os
import sys

from erp_backup.core.errors import BackupError

RUN_TOKEN_ENV = "ERP_BACKUP_RUN_TOKEN"
# the commands that start Prefect or other processes (the restore test's pg_restore and smoke commands,
# the upload's gpg)
COMMANDS = frozenset({"backup", "verify", "restore", "restore-test", "upload", "demo", "prune"})
GRACE_S = 2.0  # SIGTERM -> SIGKILL

WATCHDOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_watchdog.py")  # a standalone script


class WatchdogError(BackupError):
    """The process watchdog could not be started."""


class Watchdog:
    """This process's watchdog: its pid, this run's token (the last of the chain), the pipe's write end."""

    def __init__(self, token: str, pid: int, write_fd: int) -> None:
        self.token, self.pid, self.write_fd = token, pid, write_fd

    def __repr__(self) -> str:
        return f"Watchdog(pid={self.pid}, token={self.token})"


_active: Watchdog | None = None


def token_chain() -> list[str]:
    return [t for t in os.environ.get(RUN_TOKEN_ENV, "").split(":") if t]


def _forked_child() -> None:
    """In a child forked without exec: report it to the watchdog, then let go of the pipe."""
    w = _active
    if w is None or w.write_fd < 0:
        return
    try:
        with open("/proc/self/stat", "rb") as f:
            start = f.read().rpartition(b")")[2].split()[19]
        os.write(w.write_fd, b"%d %s\n" % (os.getpid(), start))
    except (OSError, IndexError):
        pass
    finally:
        try:
            os.close(w.write_fd)
        except OSError:
            pass
        w.write_fd = -1


def start(*, grace_s: float = GRACE_S) -> Watchdog | None:
    """Tag this process's future children with a run token and start the watchdog (once per
    process). ``None`` off Linux (no ``/proc``)."""
    global _active
    if _active is not None:
        return _active
    if not sys.platform.startswith("linux"):
        return None
    import fcntl
    import subprocess

    if not os.path.isdir("/proc/self"):
        raise WatchdogError("/proc is not mounted: cannot watch this run's processes",
                            hint="mount /proc (in a container: do not hide it)")
    if not os.path.isfile(WATCHDOG):
        raise WatchdogError(f"the process watchdog {WATCHDOG} is missing", hint="reinstall erp-backup")
    exe = sys.executable
    if not exe:
        raise WatchdogError("cannot find the Python interpreter to start the process watchdog",
                            hint="run erp-backup with a regular Python installation")
    token = os.urandom(16).hex()
    outer = os.environ.get(RUN_TOKEN_ENV, "")
    fds: list[int] = []
    try:
        fds.extend(os.pipe())
        # never fds 0-2, even when the CLI was started with stdin/stdout/stderr closed
        r = fcntl.fcntl(fds[0], fcntl.F_DUPFD_CLOEXEC, 3)
        fds.append(r)
        w = fcntl.fcntl(fds[1], fcntl.F_DUPFD_CLOEXEC, 3)
        fds.append(w)
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            [exe, "-I", "-S", WATCHDOG, token, str(grace_s)],
            stdin=r, stdout=subprocess.DEVNULL, env={RUN_TOKEN_ENV: outer} if outer else {},
            cwd="/", close_fds=True, start_new_session=True,
        )
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise WatchdogError(f"cannot start the process watchdog: {e}",
                            hint="check the limits on processes and open files (ulimit -u, -n) and free memory") from e
    for fd in fds[:3]:  # the pipe as created, and the read end: the watchdog has it now
        os.close(fd)
    # Never waited for: it outlives this process on purpose. Marked done so that Popen neither warns
    # (ResourceWarning) nor tries to reap it.
    proc.returncode = 0
    os.environ[RUN_TOKEN_ENV] = f"{outer}:{token}" if outer else token
    _active = Watchdog(token=token, pid=proc.pid, write_fd=w)
    os.register_at_fork(after_in_child=_forked_child)
    return _active


def guard(command: str | None) -> Watchdog | None:
    """``start()`` for the commands that start Prefect (``COMMANDS``); nothing for the others."""
    return start() if command in COMMANDS else None
