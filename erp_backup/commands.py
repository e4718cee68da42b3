"""The operator's stop/start/smoke commands (``[restore]``): argument lists, never a shell.

Each runs through ``adapters.proc`` (allow-listed environment, its own timeout, stderr drained into a
bounded tail, secrets masked) and yields a ``CommandResult`` with its duration and output tail, for
the report and the artifact.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from erp_backup.adapters import proc
from erp_backup.core.errors import BackupError

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


def run_command(step: str, argv: Sequence[str], *, timeout: float, cwd: str | None = None,
                env_extra: dict[str, str] | None = None, secrets: Iterable[str] = ()) -> CommandResult:
    """Run one command; never raises for the command's own failure (the result says it)."""
    secrets = tuple(s for s in secrets if s)
    shown = tuple(proc.redact(a, secrets) for a in argv)  # the label in reports and artifacts
    t0 = time.monotonic()
    try:
        res = proc.run(list(argv), timeout=timeout, cwd=cwd, env_extra=env_extra, secrets=secrets,
                       what=shlex.join(shown))
    except proc.ProcError as e:
        return CommandResult(step, shown, False, e.returncode, time.monotonic() - t0,
                             _tail(proc.redact(e.stderr_tail, secrets)), proc.redact(e.message, secrets))
    except BackupError as e:  # not installed, cannot start
        return CommandResult(step, shown, False, None, time.monotonic() - t0, "",
                             proc.redact(e.message, secrets))
    except OSError as e:  # e.g. cwd missing
        return CommandResult(step, shown, False, None, time.monotonic() - t0, "",
                             f"{shlex.join(shown)} could not be started: {e.strerror or e}")
    out = res.stdout.decode("utf-8", "replace")
    text = "\n".join(x for x in (out.strip(), res.stderr_tail.strip()) if x)
    return CommandResult(step, shown, True, res.returncode, time.monotonic() - t0,
                         _tail(proc.redact(text, secrets)))


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
