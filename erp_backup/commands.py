"""The operator's stop/start/smoke commands (``[restore]``): argument lists, never a shell.

Each runs with ``adapters.proc``'s allow-listed environment and its own timeout (the whole session
killed), its output in an unlinked temporary file of which a bounded tail is kept, secrets masked,
and yields a ``CommandResult`` with its duration and output tail, for the report and the artifact.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

from erp_backup.adapters import proc
from erp_backup.core.errors import BackupError
from erp_backup.reaper import RUN_TOKEN_ENV

OUTPUT_TAIL = 2000  # characters of a command's output kept for the report


@dataclass(frozen=True)
class CommandResult:
    step: str  # "stop", "start", "smoke"
    argv: tuple[str, ...]
    ok: bool
    returncode: int | None
    duration_s: float
    output: str  # the tail of stdout + stderr, secrets masked
    error: str = ""  # why it failed (one line)

    @property
    def label(self) -> str:
        return f"{self.step}: {shlex.join(self.argv)}"


def _tail(text: str) -> str:
    return text if len(text) <= OUTPUT_TAIL else "…" + text[-OUTPUT_TAIL:]


_OUTPUT_READ = 64 * 1024  # bytes of a command's output read back for the tail


def _output_tail(f: IO[bytes], secrets: tuple[str, ...]) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - _OUTPUT_READ))
    text = f.read().decode("utf-8", "replace")
    if size > _OUTPUT_READ and "\n" in text:
        text = text.split("\n", 1)[1]  # the cut-off first line (maybe half a secret)
    return proc.redact(text, secrets).strip()


def run_command(step: str, argv: Sequence[str], *, timeout: float, cwd: str | None = None,
                env_extra: dict[str, str] | None = None, secrets: Iterable[str] = ()) -> CommandResult:
    """Run one command; never raises for the command's own failure (the result says it).

    The command's own exit ends it, not the end of its output: its stdout and stderr go to an
    unlinked temporary file, so a process it leaves running (a start command that launches the
    application in the background) can neither hold the restore up nor get SIGPIPE when we stop
    reading. At ``timeout`` the command and every process of its session are killed. What a
    ``start`` command starts is meant to outlive this run: it does not get the run token (the
    reaper, ``erp_backup.reaper``, stops every process carrying it when the CLI exits)."""
    secrets = tuple(s for s in secrets if s)
    shown = tuple(proc.redact(a, secrets) for a in argv)  # the label in reports and artifacts
    label = shlex.join(shown)
    t0 = time.monotonic()
    env = proc.child_env(env_extra)
    if step.startswith("start"):
        env.pop(RUN_TOKEN_ENV, None)
    try:
        exe = proc.which(argv[0]) if os.sep not in argv[0] else argv[0]
    except BackupError as e:  # not installed
        return CommandResult(step, shown, False, None, time.monotonic() - t0, "", proc.redact(e.message, secrets))
    with tempfile.TemporaryFile() as out:
        try:
            child = subprocess.Popen([exe, *argv[1:]], stdin=subprocess.DEVNULL, stdout=out,  # noqa: S603
                                     stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        except OSError as e:  # missing, not executable, cwd missing
            return CommandResult(step, shown, False, None, time.monotonic() - t0, "",
                                 f"{label} could not be started: {e.strerror or e}")
        timed_out = False
        try:
            rc = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if timed_out or child.poll() is None:  # timed out, or interrupted (Ctrl-C, a cancelled flow)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)  # the command and what it started in its session
                rc = child.wait()
        text = _tail(_output_tail(out, secrets))
    took = time.monotonic() - t0
    if timed_out:
        return CommandResult(step, shown, False, rc, took, text,
                             f"{label} timed out after {timeout:g} s and was killed (with the processes it started)")
    if rc != 0:
        last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "") or f"exit status {rc}"
        return CommandResult(step, shown, False, rc, took, text, f"{label} failed (exit {rc}): {last}")
    return CommandResult(step, shown, True, rc, took, text)


def run_all(step: str, commands: Iterable[Sequence[str]], *, timeout: float, cwd: str | None = None,
            env_extra: dict[str, str] | None = None, secrets: Iterable[str] = (),
            keep_going: bool = False) -> list[CommandResult]:
    """Run ``commands`` in order; stop at the first failure unless ``keep_going`` (start commands
    after a failure: start as much as can be started)."""
    out: list[CommandResult] = []
    for argv in commands:
        r = run_command(step, argv, timeout=timeout, cwd=cwd, env_extra=env_extra, secrets=secrets)
        out.append(r)
        if not r.ok and not keep_going:
            break
    return out
