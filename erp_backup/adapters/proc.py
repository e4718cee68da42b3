"""The only place this project starts a subprocess.

* Commands are argument lists, never shell strings.
* The child gets an allow-listed environment plus what the caller adds, and
  the file descriptors the caller passes (``pass_fds``): credentials travel in
  an in-memory file the child opens as ``/dev/fd/N``, never on the command line.
* stderr is drained in a thread into a bounded tail, with every secret the
  caller names replaced by ``***`` before it can reach a message or a log.
* stdout can be streamed chunk by chunk (dumps) and stdin fed chunk by chunk
  (restores), so nothing is held whole in memory.
* ``spawn`` starts a filter whose stdin and stdout the caller drives from two
  threads (gpg between the compressor and the file); extra pipe ends can be
  handed to the child (``pass_fds``) for passphrases and status lines.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO

from erp_backup.core.errors import BackupError, ToolMissingError

CHUNK = 1 << 20
_ENV_ALLOW = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME",
              "ERP_BACKUP_RUN_TOKEN")  # erp_backup.reaper: a killed run's clients are stopped
_TAIL_BYTES = 4096

# package that provides a binary, for "install it" hints
_PACKAGES = {
    "pg_dump": "postgresql-client",
    "pg_restore": "postgresql-client",
    "psql": "postgresql-client",
    "mariadb-dump": "mariadb-client",
    "mysqldump": "mariadb-client (or mysql-client)",
    "mariadb": "mariadb-client",
    "mysql": "mariadb-client (or mysql-client)",
    "gpg": "gnupg",
    "zstd": "zstd",
    "sqlite3": "sqlite3",
}


class ProcError(BackupError):
    """A command exited non-zero, timed out or could not start."""

    def __init__(self, message: str, *, returncode: int | None, stderr_tail: str, hint: str | None = None):
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        super().__init__(message, hint=hint)


@dataclass(frozen=True)
class ProcResult:
    returncode: int
    stdout: bytes
    stderr_tail: str
    bytes_out: int = 0


def redact(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def which(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pkg = _PACKAGES.get(binary, binary)
        raise ToolMissingError(
            f"'{binary}' is not installed or not on PATH",
            hint=f"install it (Debian: apt-get install {pkg}) or set PATH",
        )
    return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


class _Tail:
    def __init__(self, stream: IO[bytes]) -> None:
        self._buf: deque[bytes] = deque()
        self._size = 0
        self._dropped = False  # the first chunk kept may begin in the middle of a line (of a secret)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for chunk in iter(lambda: stream.read(8192), b""):
            self._buf.append(chunk)
            self._size += len(chunk)
            while self._size - len(self._buf[0]) > _TAIL_BYTES and len(self._buf) > 1:
                self._size -= len(self._buf.popleft())
                self._dropped = True

    def text(self, secrets: Iterable[str] = ()) -> str:
        """The last lines of stderr, every secret replaced by ***: whole secrets before anything is
        cut, then the cut-off first line dropped and a secret's piece at either end masked."""
        self._thread.join(timeout=5)
        secrets = tuple(s for s in secrets if s)
        text = redact(b"".join(self._buf).decode("utf-8", "replace"), secrets)
        cut = self._dropped or len(text) > _TAIL_BYTES
        text = text[-_TAIL_BYTES:]
        if cut and "\n" in text:
            text = text.split("\n", 1)[1]
        return _mask_pieces(text, secrets, start=cut, end=self._thread.is_alive()).strip()


def _mask_pieces(text: str, secrets: tuple[str, ...], *, start: bool, end: bool) -> str:
    """Mask the end of a secret at the start of ``text`` (``start``: it was cut there) and the
    beginning of one at its end (``end``: the writer may still be writing)."""
    for s in secrets:
        for k in range(len(s) - 1, 2, -1):
            if start and text.startswith(s[-k:]):
                text = "***" + text[k:]
                break
        for k in range(len(s) - 1, 2, -1):
            if end and text.endswith(s[:k]):
                text = text[:-k] + "***"
                break
    return text


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _start(argv: Sequence[str], env_extra: dict[str, str] | None, stdin: int | None, stdout: int | None,
           cwd: str | None, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    if not argv:
        raise ValueError("empty argv")
    exe = which(argv[0]) if os.sep not in argv[0] else argv[0]
    try:
        return subprocess.Popen(  # noqa: S603 - argv list, no shell
            [exe, *argv[1:]],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=child_env(env_extra),
            cwd=cwd,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as e:
        raise ToolMissingError(f"'{argv[0]}' could not be started: {e}", hint="install it or fix PATH") from e


def _finish(proc: subprocess.Popen[bytes], tail: _Tail, argv: Sequence[str], secrets: Iterable[str],
            timed_out: threading.Event, what: str | None) -> str:
    rc = proc.wait()
    err = tail.text(secrets)
    label = what or os.path.basename(argv[0])
    if timed_out.is_set():
        raise ProcError(f"{label} timed out and was killed", returncode=rc, stderr_tail=err,
                        hint="raise the timeout in the config or look at why the server is slow")
    if rc != 0:
        cause = _last_line(err) or f"exit status {rc}"
        raise ProcError(f"{label} failed (exit {rc}): {cause}", returncode=rc, stderr_tail=err)
    return err


def _timer(proc: subprocess.Popen[bytes], timeout: float | None, flag: threading.Event) -> threading.Timer | None:
    if not timeout:
        return None

    def kill() -> None:
        flag.set()
        proc.kill()

    t = threading.Timer(timeout, kill)
    t.daemon = True
    t.start()
    return t


def run(argv: Sequence[str], *, env_extra: dict[str, str] | None = None, timeout: float | None = 600,
        input_bytes: bytes | None = None, secrets: Iterable[str] = (), what: str | None = None,
        cwd: str | None = None, pass_fds: Sequence[int] = ()) -> ProcResult:
    """Run a short command and collect its (small) stdout."""
    secrets = tuple(secrets)
    proc = _start(argv, env_extra, subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
                  subprocess.PIPE, cwd, pass_fds)
    tail = _Tail(proc.stderr)  # type: ignore[arg-type]
    flag = threading.Event()
    timer = _timer(proc, timeout, flag)
    try:
        if input_bytes is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(input_bytes)
            except BrokenPipeError:
                pass
            proc.stdin.close()
        assert proc.stdout is not None
        out = proc.stdout.read()
        err = _finish(proc, tail, argv, secrets, flag, what)
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
    return ProcResult(proc.returncode, out, err, len(out))


def stream_out(argv: Sequence[str], write: Callable[[bytes], object], *,
               env_extra: dict[str, str] | None = None, timeout: float | None = None,
               secrets: Iterable[str] = (), what: str | None = None, cwd: str | None = None,
               pass_fds: Sequence[int] = ()) -> ProcResult:
    """Run a command and pass its stdout to ``write`` in chunks (never whole). ``pass_fds``: file
    descriptors the child inherits (e.g. an in-memory option file with a password)."""
    secrets = tuple(secrets)
    proc = _start(argv, env_extra, subprocess.DEVNULL, subprocess.PIPE, cwd, pass_fds)
    assert proc.stdout is not None
    _widen_pipe(proc.stdout.fileno())
    tail = _Tail(proc.stderr)  # type: ignore[arg-type]
    flag = threading.Event()
    timer = _timer(proc, timeout, flag)
    n = 0
    try:
        assert proc.stdout is not None
        read = proc.stdout.read1 if hasattr(proc.stdout, "read1") else proc.stdout.read
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            n += len(chunk)
            write(chunk)
        err = _finish(proc, tail, argv, secrets, flag, what)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        if timer:
            timer.cancel()
    return ProcResult(proc.returncode, b"", err, n)


def _widen_pipe(fd: int) -> None:
    """Let the child write up to CHUNK bytes ahead in its pipe (Linux; 64 KiB by default): the reader
    then gets fewer, larger pieces, and every piece costs a Python call in each consumer (row
    counter, compressor, hash). Best effort: refused (pipe-max-size, a user's pipe quota), it stays."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    try:
        fcntl.fcntl(fd, setsize, CHUNK)
    except OSError:
        pass


def stream_in(argv: Sequence[str], chunks: Iterable[bytes], *, env_extra: dict[str, str] | None = None,
              timeout: float | None = None, secrets: Iterable[str] = (), what: str | None = None,
              cwd: str | None = None, capture_stdout: bool = False, pass_fds: Sequence[int] = ()) -> ProcResult:
    """Run a command feeding ``chunks`` to its stdin (e.g. a restore)."""
    secrets = tuple(secrets)
    proc = _start(argv, env_extra, subprocess.PIPE, subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
                  cwd, pass_fds)
    tail = _Tail(proc.stderr)  # type: ignore[arg-type]
    out_parts: list[bytes] = []
    reader: threading.Thread | None = None
    if capture_stdout:
        assert proc.stdout is not None
        stdout = proc.stdout

        def _read() -> None:
            out_parts.append(stdout.read())

        reader = threading.Thread(target=_read, daemon=True)
        reader.start()
    flag = threading.Event()
    timer = _timer(proc, timeout, flag)
    try:
        assert proc.stdin is not None
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass  # the child died early; _finish reports its stderr
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        err = _finish(proc, tail, argv, secrets, flag, what)
        if reader:
            reader.join()
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        if timer:
            timer.cancel()
    return ProcResult(proc.returncode, b"".join(out_parts), err)


class Child:
    """A started command whose pipes the caller drives (see ``spawn``)."""

    def __init__(self, proc: subprocess.Popen[bytes], argv: Sequence[str], secrets: tuple[str, ...],
                 what: str | None) -> None:
        self._proc = proc
        self._argv = tuple(argv)
        self._secrets = secrets
        self._what = what
        self._tail = _Tail(proc.stderr)  # type: ignore[arg-type]
        self._flag = threading.Event()  # never set: a streaming child has no timeout of its own

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def stdin(self) -> IO[bytes]:
        assert self._proc.stdin is not None, "spawned without stdin=True"
        return self._proc.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self._proc.stdout is not None, "spawned without stdout=True"
        return self._proc.stdout

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self) -> str:
        """Wait for the exit; the redacted stderr tail. ``ProcError`` on a non-zero exit."""
        return _finish(self._proc, self._tail, self._argv, self._secrets, self._flag, self._what)

    def kill(self) -> None:
        """Kill the child if it still runs and reap it; close our pipe ends."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for f in (self._proc.stdin, self._proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def spawn(argv: Sequence[str], *, stdin: bool = False, stdout: bool = False, pass_fds: Sequence[int] = (),
          env_extra: dict[str, str] | None = None, secrets: Iterable[str] = (), what: str | None = None,
          cwd: str | None = None) -> Child:
    """Start a command with pipes for stdin/stdout (if asked) that the caller drives itself: a
    filter inside a stream. ``pass_fds``: pipe ends the child inherits (``--passphrase-fd N``);
    the caller closes its copies. The caller must end with ``wait()`` or ``kill()``."""
    proc = _start(argv, env_extra, subprocess.PIPE if stdin else subprocess.DEVNULL,
                  subprocess.PIPE if stdout else subprocess.DEVNULL, cwd, pass_fds)
    return Child(proc, argv, tuple(secrets), what)
