"""Decompressing reader of an artifact: file -> [decryptor] -> zstd -d, hashing the file's bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import zstandard

from erp_backup.adapters.archive.artifact import CHUNK
from erp_backup.core.errors import IntegrityError, StorageError


def iter_decompressed(path: Path | IO[bytes], *, decryptor: Callable[[IO[bytes]], IO[bytes]] | None = None
                      ) -> Iterator[bytes]:
    """Yield the raw (decompressed, decrypted) bytes of an artifact, chunk by chunk."""
    with open_decompressed(path, decryptor=decryptor) as r:
        while True:
            chunk = r.read(CHUNK)
            if not chunk:
                return
            yield chunk


def read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    """``n`` bytes from ``read`` (fewer only at the end of the stream)."""
    first = read(n)
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        more = read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class DecompressingReader:
    """Decompressing reader. A background thread reads, hashes (the artifact's SHA-256, so a
    verification needs one pass only) and decompresses ahead, so that decompression overlaps
    with what the consumer does (writing files), as ``zstd -d | tar -x`` does with two
    processes. At most ``depth`` chunks are buffered: memory stays flat."""

    def __init__(self, path: Path | IO[bytes], decryptor: Callable[[IO[bytes]], IO[bytes]] | None,
                 depth: int = 8, *, name: str | None = None) -> None:
        import queue
        import threading

        self.path = Path(name or getattr(path, "name", None) or "artifact") if not isinstance(path, Path) else path
        self._owns_fh = isinstance(path, Path)
        if isinstance(path, Path):
            try:
                self._fh: IO[bytes] = open(path, "rb")
            except OSError as e:
                raise StorageError(f"cannot open {path}: {e.strerror}", hint="check the backup directory") from e
        else:
            self._fh = path
        self._hash = hashlib.sha256()
        self.compressed_size = 0
        # the artifact's own bytes (encrypted, if they are) are hashed by whoever reads them:
        # this reader's thread, or the decryptor's feeder (done before its read() returns b"")
        hashing = cast(IO[bytes], _HashingSource(self))
        self._src: IO[bytes] = decryptor(hashing) if decryptor else hashing
        self._decrypting = decryptor is not None
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._done = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            r = zstandard.ZstdDecompressor().stream_reader(self._src, read_size=CHUNK, read_across_frames=True,
                                                           closefd=False)
            while not self._stop.is_set():
                chunk = r.read(CHUNK)
                if not chunk:
                    break
                self._q.put(chunk)
            rest = self._src.read(CHUNK)  # trailing bytes after the last frame still count for the hash
            while rest and not self._stop.is_set():
                rest = self._src.read(CHUNK)
            self._q.put(None)
        except zstandard.ZstdError as e:
            self._q.put(IntegrityError(f"{self.path.name} is corrupt: zstd says {e}",
                                       hint="verify the set; restore from another set"))
        except BaseException as e:
            self._q.put(e)

    def _next(self) -> bool:
        if self._done:
            return False
        item = self._q.get()
        if item is None:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._buf, self._pos = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._buf[self._pos:]]
            self._buf, self._pos = b"", 0
            while self._next():
                parts.append(self._buf)
            self._buf = b""
            return b"".join(parts)
        if self._pos >= len(self._buf) and not self._next():
            return b""
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def read_exact(self, n: int) -> bytes:
        return read_exact(self.read, n)

    def hexdigest(self) -> str:
        """SHA-256 of the artifact file; complete once read() returned b''."""
        return self._hash.hexdigest()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except Exception:
                continue
        self._thread.join()
        try:
            if self._decrypting:
                self._src.close()
        finally:
            if self._owns_fh:
                self._fh.close()

    def __enter__(self) -> DecompressingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_decompressed(path: Path | IO[bytes], *, decryptor: Callable[[IO[bytes]], IO[bytes]] | None = None,
                      name: str | None = None) -> DecompressingReader:
    """``path``: the artifact's file, or an open stream of its bytes (a remote object), which the
    caller closes; ``name`` names it in messages."""
    return DecompressingReader(path, decryptor, name=name)


class _HashingSource:
    """The artifact's bytes as read from its file or stream, hashed and counted on the way."""

    def __init__(self, owner: DecompressingReader) -> None:
        self._owner = owner
        self.name = owner.path.name

    def read(self, n: int = -1) -> bytes:
        data = self._owner._fh.read(n)
        self._owner._hash.update(data)
        self._owner.compressed_size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

