"""Compressed artifact writer: ``write(raw)`` -> zstd (threads) -> [encryptor] -> file, hashed on the way.

Nothing is held whole in memory: the compressor's output is hashed (the artifact's SHA-256 for
``SHA256SUMS``) on its way to disk.
"""

from __future__ import annotations

import hashlib
import os
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
    """Write-only file that hashes and counts what goes through it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e.strerror}",
                               hint="check the backup directory's permissions and free space") from e
        self._fh = os.fdopen(fd, "wb", buffering=0)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
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


class Inspector(Protocol):
    """Sees the compressed bytes on their way to the encryptor or the file (``selfcheck``)."""

    def feed(self, data: bytes | bytearray | memoryview) -> None: ...

    def close(self) -> None: ...


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
                 inspector: Inspector | None = None):
        self.path = path
        self._file = HashingFile(path)
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
        return WrittenArtifact(self.path, self._file.size, self._file.hexdigest(), self.raw_size)

    def abort(self) -> None:
        try:
            self._z.close()
        except Exception:
            pass
        if self._inspector is not None:
            self._inspector.close()
        if self._enc_stream is not None:
            try:
                getattr(self._enc_stream, "abort", self._enc_stream.close)()
            except Exception:
                pass
        self._file.close()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
