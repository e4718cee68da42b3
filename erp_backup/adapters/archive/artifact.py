"""Compressed artifact writer: ``write(raw)`` -> zstd (threads) -> [encryptor] -> file, hashed on the way.

Nothing is held whole in memory: the compressor's output is hashed (the artifact's SHA-256 for
``SHA256SUMS``) on its way to disk.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, cast

import zstandard

from erp_backup.core.errors import StorageError

CHUNK = 1 << 20
FILE_MODE = 0o600


class Encryptor(Protocol):
    """A stage between the compressor and the file (GPG). Optional.

    ``wrap(sink)`` returns a writable; everything written to it reaches ``sink`` transformed once
    its ``close()`` returned (which raises if the stage failed). If the returned object has an
    ``abort()``, an abandoned artifact calls it instead of ``close()`` (a subprocess is killed
    rather than left to finish)."""

    def wrap(self, sink: IO[bytes]) -> IO[bytes]: ...


class HashingFile:
    """Write-only file that hashes and counts what goes through it (``hashing=False``: counts only,
        and tells ``on_write`` the size after each write: a read-back check hashes it instead)."""

    def __init__(self, path: Path, *, hashing: bool = True, on_write: Callable[[int], None] | None = None) -> None:
        self.path = path
        self._hashing = hashing
        self.on_write = on_write
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e.strerror}",
                               hint="check the backup directory's permissions and free space") from e
        self._fh = os.fdopen(fd, "wb", buffering=0)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._hashing:
            self._hash.update(data)
        try:
            view = memoryview(data)
            done = 0
            while done < len(view):  # an unbuffered write may write less than asked
                done += self._fh.write(view[done:]) or 0
            n = done
        except OSError as e:
            raise StorageError(f"writing {self.path.name} failed: {e.strerror}",
                               hint="free space in the backup directory, then run the backup again") from e
        self.size += len(data)
        if self.on_write is not None:
            self.on_write(self.size)
        return n if n is not None else len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self._fh.closed:
            try:
                os.fsync(self._fh.fileno())
            finally:
                self._fh.close()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass
class WrittenArtifact:
    path: Path
    size: int
    sha256: str
    raw_size: int
    stamp: tuple[int, int, int, int] | None = None  # read back: (inode, size, mtime, ctime) when hashed


class Inspector(Protocol):
    """Sees the compressed bytes on their way to the encryptor or the file (``selfcheck``)."""

    def feed(self, data: bytes | bytearray | memoryview) -> None: ...

    def close(self) -> None: ...


class ReadBack(Protocol):
    """Reads the artifact back from its file as it is written (``selfcheck.InlineCheck`` with a
    path) and hashes it there: the writer then does not hash the bytes it writes."""

    def written(self, size: int) -> None: ...

    def close(self) -> None: ...

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...


class _Tee:
    def __init__(self, target: IO[bytes], inspector: Inspector) -> None:
        self._target = target
        self._inspector = inspector

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._inspector.feed(data)
        return self._target.write(data)

    def flush(self) -> None:
        self._target.flush()


class ArtifactWriter:
    """``write(raw)`` -> zstd (threads) -> [inspector] -> [encryptor] -> hashing file."""

    def __init__(self, path: Path, *, level: int = 3, threads: int = -1, encryptor: Encryptor | None = None,
                 inspector: Inspector | None = None, readback: Callable[[Path], ReadBack] | None = None):
        """``readback`` (no encryptor, no inspector): a check that reads the file back as it is
        written; it is built once the file exists and computes the artifact's SHA-256."""
        self.path = path
        self.readback: ReadBack | None = None
        if readback is not None and (encryptor is not None or inspector is not None):
            raise ValueError("a read-back check sees the file itself: no encryptor, no inspector")
        self._file = HashingFile(path, hashing=readback is None)
        if readback is not None:
            try:
                self.readback = readback(path)
            except BaseException:
                self._file.close()
                raise
            self._file.on_write = self.readback.written
        self._enc_stream: IO[bytes] | None = encryptor.wrap(cast(IO[bytes], self._file)) if encryptor else None
        target = self._enc_stream or cast(IO[bytes], self._file)
        self._inspector = inspector
        if inspector is not None:
            target = cast(IO[bytes], _Tee(target, inspector))
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        self._z = cctx.stream_writer(target, write_size=CHUNK, closefd=False)
        self.raw_size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._z.write(data)
        self.raw_size += len(data)
        return len(data)

    def close(self) -> WrittenArtifact:
        self._z.flush(zstandard.FLUSH_FRAME)
        self._z.close()
        if self._enc_stream is not None:
            self._enc_stream.close()
        self._file.close()
        if self.readback is not None:
            self.readback.close()  # the check has read (and hashed) every byte, or failed
            if self.readback.size != self._file.size or not self.readback.sha256:
                return WrittenArtifact(self.path, self._file.size, "", self.raw_size)  # its result() says why
            return WrittenArtifact(self.path, self._file.size, self.readback.sha256, self.raw_size,
                                   getattr(self.readback, "stamp", None))
        return WrittenArtifact(self.path, self._file.size, self._file.hexdigest(), self.raw_size)

    def abort(self) -> None:
        try:
            self._z.close()
        except Exception:
            pass
        if self._inspector is not None:
            self._inspector.close()
        if self.readback is not None:
            self.readback.close()
        if self._enc_stream is not None:
            try:
                getattr(self._enc_stream, "abort", self._enc_stream.close)()
            except Exception:
                pass
        self._file.close()


def file_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """(inode, size, mtime, ctime) of a file: any write to it since changes the ctime."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
