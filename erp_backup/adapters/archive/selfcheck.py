"""The files archive checked while it is written: the compressed bytes, on their way to disk, are
decompressed in a thread and parsed as tar, so the verification before the commit need not read,
decompress and re-hash the whole archive again.

What it proves, for the bytes written: they form a valid zstd stream whose frame checksum (XXH64
of the raw stream, computed by the compressor over what it was fed) matches; they decompress to
exactly as many bytes as the tar writer produced; and that tar stream is well formed (header
checksums, end marker) and holds exactly the index's members (path, type, size, link target), in
order. The file contents are the bytes the tar writer hashed for the index (SHA-256) as it fed
them in: with the frame checksum, the archive gives them back. Together with the SHA-256 of the
artifact read back from disk (``verify``'s quick level), that is what the full level's second
decompression and re-hash of every file proves, with less CPU (the bytes are not read and
decompressed a second time, the files not hashed a second time: about a fifth less CPU for the
whole verification, measured).

Memory stays flat: at most ``DEPTH`` compressed chunks wait in the queue, they are decompressed
``SLICE`` bytes at a time, and the member list is folded into a running digest.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable

import zstandard

from erp_backup.adapters.archive.artifact import CHUNK
from erp_backup.adapters.archive.reader import read_exact
from erp_backup.adapters.archive.tar_reader import TarStream
from erp_backup.core.errors import IntegrityError
from erp_backup.core.models import EntryType, FileEntry

DEPTH = 4  # compressed chunks (<= 1 MiB each) waiting for the checker
SLICE = 128 << 10  # compressed bytes decompressed per call (bounds each call's output)
_TYPE = {EntryType.FILE: b"0", EntryType.DIR: b"5", EntryType.SYMLINK: b"2"}


def _member_line(name: str, typ: bytes, size: int, link: str) -> bytes:
    return b"%s\0%s\0%d\0%s\n" % (name.encode("utf-8", "surrogateescape"), typ, size,
                                   link.encode("utf-8", "surrogateescape"))


class MemberDigest:
    """``expected_digest`` fed one entry at a time, as the tar writer finishes it (so that a
    backup need not keep its archived entries for the check)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def add(self, e: FileEntry) -> None:
        self._h.update(_member_line(e.path, _TYPE[e.type], e.size if e.type is EntryType.FILE else 0,
                                    e.target or "" if e.type is EntryType.SYMLINK else ""))
        self.count += 1

    def result(self) -> tuple[str, int]:
        return self._h.hexdigest(), self.count


def expected_digest(entries: Iterable[FileEntry]) -> tuple[str, int]:
    """(digest, count) of the members the tar writer wrote for ``entries`` (in archive order)."""
    d = MemberDigest()
    for e in entries:
        d.add(e)
    return d.result()


class _Decompressed:
    """``read``/``read_exact`` over the decompressed bytes of the queued compressed chunks (``None``
    ends them), counting what it yields; ``complete`` says whether the last zstd frame ended."""

    def __init__(self, q: queue.Queue[bytes | None]) -> None:
        self._q = q
        self._d = zstandard.ZstdDecompressor().decompressobj(write_size=CHUNK)
        self._buf = b""
        self._pos = 0
        self._pending = memoryview(b"")  # compressed bytes not decompressed yet
        self.end = False
        self.count = 0

    @property
    def complete(self) -> bool:
        return bool(self._d.eof)

    def _fill(self) -> bool:
        while self._pos >= len(self._buf):
            if not self._pending:
                if self.end:
                    return False
                item = self._q.get()
                if item is None:
                    self.end = True
                    continue
                self._pending = memoryview(item)
            # a slice at a time: text packs ~5x, so the output of a whole chunk could be large
            piece, self._pending = self._pending[:SLICE], self._pending[SLICE:]
            self._buf, self._pos = self._decompress(piece.tobytes()), 0
        return True

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:  # frame after frame (closing the writer may add an empty one)
            if self._d.eof:
                self._d = zstandard.ZstdDecompressor().decompressobj(write_size=CHUNK)
            out.append(self._d.decompress(data))
            data = self._d.unused_data if self._d.eof else b""
        return out[0] if len(out) == 1 else b"".join(out)

    def read(self, n: int = -1) -> bytes:
        if not self._fill():
            return b""
        if n is None or n < 0:
            n = len(self._buf) - self._pos
        if self._pos == 0 and n >= len(self._buf):  # the whole chunk: no copy
            out, self._buf = self._buf, b""
        else:
            out = self._buf[self._pos:self._pos + n]
            self._pos += len(out)
        self.count += len(out)
        return out

    def read_exact(self, n: int) -> bytes:
        return read_exact(self.read, n)

    def drain(self) -> None:
        """Take (and drop) what is still queued, up to the end: the writer never blocks."""
        self._pending = memoryview(b"")
        while not self.end:
            if self._q.get() is None:
                self.end = True


class InlineCheck:
    """``feed`` it the compressed bytes as they are written; ``result`` after the last one."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=DEPTH)
        self._error: BaseException | None = None
        self._digest = ""
        self._members = 0
        self._raw = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="archive-self-check", daemon=True)
        self._thread.start()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._q.put(data if isinstance(data, bytes) else bytes(data))

    def _run(self) -> None:
        reader = _Decompressed(self._q)
        try:
            h = hashlib.sha256()
            n = 0
            for m in TarStream(reader, self.where).members():
                h.update(_member_line(m.name, b"0" if m.isfile() else m.type, m.size if m.isfile() else 0,
                                      m.linkname if m.type == b"2" else ""))
                n += 1
            while reader.read(CHUNK):  # the zero blocks after the end marker
                pass
            if not reader.complete:
                raise IntegrityError(f"{self.where}: the archive as written ends inside its zstd frame",
                                     hint="run the backup again")
            self._digest, self._members, self._raw = h.hexdigest(), n, reader.count
        except zstandard.ZstdError as e:
            self._error = IntegrityError(f"{self.where}: the archive as written does not decompress: zstd says {e}",
                                         hint="a bug or failing memory/disk: run the backup again")
        except BaseException as e:
            self._error = e
        finally:
            reader.drain()

    def close(self) -> None:
        """End of the stream (also on abort): the thread finishes and exits."""
        if not self._closed:
            self._closed = True
            self._q.put(None)
            self._thread.join()

    def result(self, raw_size: int, entries: Iterable[FileEntry] | MemberDigest) -> None:
        """Raise ``IntegrityError`` unless the stream decompressed to ``raw_size`` bytes holding
        exactly the members of ``entries``."""
        self.close()
        if self._error is not None:
            if isinstance(self._error, IntegrityError):
                raise self._error
            raise IntegrityError(f"{self.where}: the archive as written cannot be read back ({self._error})",
                                 hint="run the backup again") from self._error
        if self._raw != raw_size:
            raise IntegrityError(f"{self.where}: the archive as written decompresses to {self._raw} bytes, "
                                 f"not the {raw_size} written", hint="run the backup again")
        digest, n = entries.result() if isinstance(entries, MemberDigest) else expected_digest(entries)
        if (self._digest, self._members) != (digest, n):
            raise IntegrityError(f"{self.where}: the archive as written holds {self._members} members that do not "
                                 f"match the {n} entries of the index", hint="run the backup again")
