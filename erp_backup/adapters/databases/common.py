"""Helpers shared by the PostgreSQL and MySQL adapters (no engine-specific code)."""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

log = logging.getLogger("erp_backup.databases")

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT = 10


def one_line(text: str, secrets: Iterable[str] = (), limit: int = 300) -> str:
    """Collapse a driver/server message to one short line, secrets replaced by ***."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@contextmanager
def secret_fd(data: bytes) -> Iterator[int]:
    """A file descriptor to read ``data`` from, for a child that inherits it (``pass_fds``) and opens
    ``/dev/fd/N``: an anonymous in-memory file (memfd, 0600, re-openable), else a pipe (``data`` must
    fit its buffer). Nothing is written to a file system: no file with a password can outlive the
    process, whatever kills it. Closed on exit."""
    try:
        fd = os.memfd_create("erp-backup-credentials", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd (not Linux): a pipe
        fd, w = os.pipe()
        try:
            os.write(w, data)
        finally:
            os.close(w)
    else:
        try:
            os.fchmod(fd, 0o600)  # clients ignore (MariaDB) or refuse (libpq) a file others can read
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
    try:
        yield fd
    finally:
        os.close(fd)


def connect_timeout(timeout: float | None) -> int:
    """Seconds to wait for a connection: the adapter timeout, capped, at least 1."""
    if not timeout:
        return DEFAULT_CONNECT_TIMEOUT
    return max(1, min(int(timeout), 60))


def version_tuple(text: str) -> tuple[int, ...]:
    """First dotted version number in ``text`` ("pg_dump (PostgreSQL) 15.20 (Debian)" -> (15, 20))."""
    m = re.search(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not m:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


class Background(Generic[T]):
    """Run ``fn`` in a daemon thread; ``result()`` joins and re-raises its exception."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._fn = fn
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as e:  # handed to the caller in result()
            self._error = e

    @property
    def failed(self) -> BaseException | None:
        return self._error

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


_END = object()


class Tee:
    """Pass chunks through (``main``) while offering them to a side consumer (``side``).

    The side consumer may stop early (e.g. ``pg_restore --list`` exits after the
    table of contents); call ``side_finished()`` then and the main stream goes on
    alone. Memory is bounded by the queue size.
    """

    def __init__(self, chunks: Iterable[bytes], maxsize: int = 8) -> None:
        self._chunks = chunks
        self._q: queue.Queue[object] = queue.Queue(maxsize=maxsize)
        self._side_done = threading.Event()
        self._ended = False

    def _offer(self, item: object) -> None:
        while not self._side_done.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def main(self) -> Iterator[bytes]:
        try:
            for chunk in self._chunks:
                self._offer(chunk)
                yield chunk
        finally:
            self.end()

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._offer(_END)

    def side(self) -> Iterator[bytes]:
        while True:
            item = self._q.get()
            if item is _END:
                return
            yield item  # type: ignore[misc]

    def side_finished(self) -> None:
        self._side_done.set()


def reraise_background(bg: Background[Any] | None) -> None:
    """Raise the exception of a background job that already failed (cheap check)."""
    if bg is not None and bg.failed is not None:
        raise bg.failed
