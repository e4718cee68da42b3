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
into one reused 1 MiB buffer (member data is skipped in place, never copied), and the member list
is folded into a running digest. Whether the stream ends exactly at a frame's end is followed on
the compressed side (``FrameWalk``: block headers only, no second decompression).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, cast

import zstandard

from erp_backup.adapters.archive.artifact import CHUNK, file_stamp
from erp_backup.adapters.archive.reader import read_exact
from erp_backup.adapters.archive.tar_reader import ByteSource, TarStream
from erp_backup.core.errors import IntegrityError
from erp_backup.core.models import EntryType, FileEntry

DEPTH = 4  # compressed chunks (<= 1 MiB each) waiting for the checker
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


class FrameWalk:
    """Follows the zstd frame structure of a compressed stream fed in pieces of any size, without
    decompressing it (RFC 8878: frame header, block headers, optional checksum; skippable frames),
    so the check knows whether the stream ends exactly at the end of a frame. The decompressor
    alone does not say so: a stream cut inside the last frame's checksum still decompresses to
    every byte."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._state = "magic"  # the header being collected: magic, skipsize, fhd, block
        self._need = 4
        self._hdr = bytearray()
        self._skip = 0  # bytes to pass over first (frame header fields, block contents, checksum)
        self._checksum = False
        self.frames = 0  # complete zstd frames

    @property
    def complete(self) -> bool:
        """Whether the stream so far ends exactly at the end of a frame (and holds at least one)."""
        return self._state == "magic" and not self._hdr and self._skip == 0 and self.frames > 0

    def _bad(self, what: str) -> IntegrityError:
        return IntegrityError(f"{self.where}: the archive as written is not a valid zstd stream ({what})",
                              hint="a bug or failing memory: run the backup again")

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        pos, size = 0, len(view)
        while pos < size:
            if self._skip:
                k = min(self._skip, size - pos)
                self._skip -= k
                pos += k
                continue
            k = min(self._need - len(self._hdr), size - pos)
            self._hdr += view[pos:pos + k]
            pos += k
            if len(self._hdr) == self._need:
                self._header(int.from_bytes(self._hdr, "little"))
                self._hdr.clear()

    def _header(self, value: int) -> None:
        if self._state == "magic":
            if value == 0xFD2FB528:
                self._state, self._need = "fhd", 1
            elif value & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skipsize", 4
            else:
                raise self._bad("unknown frame magic")
        elif self._state == "skipsize":
            self._skip = value
            self._state, self._need = "magic", 4
        elif self._state == "fhd":
            if value & 0x08:
                raise self._bad("reserved bit set in a frame header")
            single = bool(value & 0x20)
            fcs = (1 if single else 0, 2, 4, 8)[value >> 6]
            did = (0, 1, 2, 4)[value & 0x03]
            self._checksum = bool(value & 0x04)
            self._skip = (0 if single else 1) + did + fcs
            self._state, self._need = "block", 3
        else:  # a block header
            btype = (value >> 1) & 3
            if btype == 3:
                raise self._bad("reserved block type")
            self._skip = 1 if btype == 1 else value >> 3  # an RLE block carries one byte
            if value & 1:  # the frame's last block (then its checksum)
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4
                self.frames += 1


class _Source:
    """The raw (compressed) side for the decompressor: the queued chunks (``None`` ends them),
    each also followed through its zstd frames."""

    def __init__(self, q: queue.Queue[bytes | None], frames: FrameWalk) -> None:
        self._q = q
        self._frames = frames
        self._pending = memoryview(b"")
        self.end = False

    def read(self, n: int = -1) -> bytes | memoryview:
        if not self._pending:
            if self.end:
                return b""
            item = self._q.get()
            if item is None:
                self.end = True
                return b""
            self._frames.feed(item)
            self._pending = memoryview(item)
        if n is None or n < 0 or n >= len(self._pending):
            out, self._pending = self._pending, memoryview(b"")
        else:
            out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def drain(self) -> None:
        """Take (and drop) what is still queued, up to the end: the writer never blocks."""
        self._pending = memoryview(b"")
        while not self.end:
            if self._q.get() is None:
                self.end = True


class _DiskSource:
    """The raw side read back from the artifact file itself (``pread`` of what the writer reports
    as written, into one reused buffer), hashed (SHA-256, for ``SHA256SUMS``) and followed through
    its zstd frames on the way to the decompressor: what is checked is what is on disk."""

    def __init__(self, q: queue.Queue[int | None], fd: int, frames: FrameWalk) -> None:
        self._q = q
        self._fd = fd
        self._frames = frames
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._pos = 0  # read so far
        self._known = 0  # written so far (as reported)
        self.hash = hashlib.sha256()
        self.end = False

    def read(self, n: int = -1) -> memoryview | bytes:
        while self._pos >= self._known:
            if self.end:
                return b""
            item = self._q.get()
            if item is None:
                self.end = True
            else:
                self._known = item
        want = min(CHUNK, self._known - self._pos, n if n is not None and n > 0 else CHUNK)
        got = os.preadv(self._fd, [self._view[:want]], self._pos)
        if got <= 0:
            raise IntegrityError(f"the artifact file gives back fewer bytes than were written to it "
                                 f"(at {self._pos} of {self._known})", hint="check the disk; run the backup again")
        out = self._view[:got]
        self._pos += got
        self.hash.update(out)
        self._frames.feed(out)
        return out

    @property
    def size(self) -> int:
        return self._pos

    def drain(self) -> None:
        while not self.end:
            if self._q.get() is None:
                self.end = True


class _Decompressed:
    """``read``/``read_exact`` over the decompressed bytes of the queued compressed chunks.

    ``read`` hands out views of one reused buffer (valid until the next call: the tar walk only
    skips member data), ``read_exact`` copies (headers are kept)."""

    def __init__(self, source: _Source | _DiskSource) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], source), read_size=CHUNK, read_across_frames=True)
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._len = 0
        self._pos = 0
        self.count = 0

    def read(self, n: int = -1) -> memoryview:
        if self._pos >= self._len:
            self._len, self._pos = self._reader.readinto(self._buf), 0
            self.count += self._len
            if not self._len:
                return self._view[:0]
        if n is None or n < 0:
            n = self._len - self._pos
        end = min(self._len, self._pos + n)
        out = self._view[self._pos:end]
        self._pos = end
        return out

    def read_exact(self, n: int) -> bytes:
        return bytes(read_exact(cast(Callable[[int], bytes], self.read), n))  # a copy: headers are kept


class InlineCheck:
    """The archive checked while it is written; ``result`` after the last byte.

    Two ways to see the bytes: ``feed`` them (the compressed bytes on their way to an encryptor:
    the file on disk then holds something else), or, with ``path``, ``written(size)`` after each
    write and the check reads them back from the file itself. Read back, the check also computes
    the artifact's SHA-256 (``sha256``) from what is on disk, so the writer need not hash it and
    the verification need not read the file again."""

    def __init__(self, where: str, path: Path | None = None) -> None:
        self.where = where
        self._q: queue.Queue[bytes | int | None] = queue.Queue(maxsize=DEPTH)
        self._error: BaseException | None = None
        self._digest = ""
        self._members = 0
        self._raw = 0
        self._closed = False
        self._fd: int | None = None
        self.sha256 = ""  # read back from disk: the artifact's SHA-256 (once closed)
        self.size = 0
        # the file's (inode, size, mtime, ctime) once read: a later write to it changes them, so the
        # verification knows whether the SHA-256 above still describes the file
        self.stamp: tuple[int, int, int, int] | None = None
        if path is not None:
            self._fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="archive-self-check", daemon=True)
        self._thread.start()

    @property
    def reads_back(self) -> bool:
        return self._fd is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._q.put(data if isinstance(data, bytes) else bytes(data))

    def written(self, size: int) -> None:
        """The file now holds ``size`` bytes (read-back mode)."""
        self._q.put(size)

    def _run(self) -> None:
        frames = FrameWalk(self.where)
        source: _Source | _DiskSource
        if self._fd is not None:
            source = _DiskSource(cast("queue.Queue[int | None]", self._q), self._fd, frames)
        else:
            source = _Source(cast("queue.Queue[bytes | None]", self._q), frames)
        reader = _Decompressed(source)
        try:
            h = hashlib.sha256()
            n = 0
            # read() hands out views of a reused buffer: members() only skips member data
            for m in TarStream(cast(ByteSource, reader), self.where).members():
                h.update(_member_line(m.name, b"0" if m.isfile() else m.type, m.size if m.isfile() else 0,
                                      m.linkname if m.type == b"2" else ""))
                n += 1
            while reader.read(CHUNK):  # the zero blocks after the end marker
                pass
            while source.read(CHUNK):  # bytes after the last frame (none expected): hashed, followed
                pass
            if not frames.complete or not source.end:
                raise IntegrityError(f"{self.where}: the archive as written ends inside its zstd frame",
                                     hint="run the backup again")
            self._digest, self._members, self._raw = h.hexdigest(), n, reader.count
            if isinstance(source, _DiskSource):
                self.sha256, self.size = source.hash.hexdigest(), source.size
        except zstandard.ZstdError as e:
            self._error = IntegrityError(f"{self.where}: the archive as written does not decompress: zstd says {e}",
                                         hint="a bug or failing memory/disk: run the backup again")
        except BaseException as e:
            self._error = e
        finally:
            source.drain()

    def close(self) -> None:
        """End of the stream (also on abort): the thread finishes and exits."""
        if not self._closed:
            self._closed = True
            self._q.put(None)
            self._thread.join()
            if self._fd is not None:
                self.stamp = file_stamp(os.fstat(self._fd))
                os.close(self._fd)

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
