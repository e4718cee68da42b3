"""Tar writer: entries of the change plan -> a POSIX/PAX tar stream, hashing every file read.

The tar stream is plain ustar/PAX, so ``zstd -d < files.tar.zst | tar -x`` restores it by hand.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

from erp_backup.adapters.archive.artifact import CHUNK
from erp_backup.core.models import EntryType, FileEntry, shared_int

BLOCK = tarfile.BLOCKSIZE
Sink: TypeAlias = Callable[[bytes | bytearray | memoryview], object]


@dataclass(frozen=True)
class TarResult:
    entries: tuple[FileEntry, ...]  # what was archived, with sha256/holder filled in (files)
    skipped: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()
    bytes_in: int = 0


def _tarinfo(e: FileEntry, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.path)
    ti.mode = e.mode
    ti.mtime = e.mtime_ns // 1_000_000_000
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname = ti.gname = ""
    if e.type is EntryType.DIR:
        ti.type = tarfile.DIRTYPE
    elif e.type is EntryType.SYMLINK:
        ti.type = tarfile.SYMTYPE
        ti.linkname = e.target or ""
    else:
        ti.type = tarfile.REGTYPE
        ti.size = size
    return ti


_TYPEFLAG = {EntryType.FILE: b"0", EntryType.DIR: b"5", EntryType.SYMLINK: b"2"}
_OCT7 = 8**7
_OCT11 = 8**11


def _ustar(path: str, typ: EntryType, mode: int, uid: int, gid: int, size: int, mtime_ns: int,
           target: str | None) -> bytes | None:
    """A plain ustar header built directly (tarfile's PAX writer costs ~25 µs a member).
    None when the entry needs PAX (long or non-UTF-8 names, big numbers)."""
    try:
        name = path.encode("utf-8") + (b"/" if typ is EntryType.DIR else b"")
        link = target.encode("utf-8") if target else b""
    except UnicodeEncodeError:
        return None
    mtime = mtime_ns // 1_000_000_000
    if len(name) > 100 or len(link) > 100 or not (0 <= mtime < _OCT11) or size >= _OCT11 \
            or uid >= _OCT7 or gid >= _OCT7:
        return None
    hdr = bytearray(BLOCK)
    hdr[0:len(name)] = name
    hdr[100:156] = b"%07o\0%07o\0%07o\0%011o\0%011o\0        " % (mode, uid, gid, size, mtime)
    hdr[156:157] = _TYPEFLAG[typ]
    hdr[157:157 + len(link)] = link
    hdr[257:265] = b"ustar\x0000"
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr)


def _header(e: FileEntry, size: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
            mtime_ns: int | None = None) -> bytes:
    """The member header of ``e`` (with the given stat fields instead of the entry's, when set)."""
    mode = e.mode if mode is None else mode
    uid = e.uid if uid is None else uid
    gid = e.gid if gid is None else gid
    mtime_ns = e.mtime_ns if mtime_ns is None else mtime_ns
    return _ustar(e.path, e.type, mode, uid, gid, size, mtime_ns, e.target) or _tarinfo(
        replace(e, mode=mode, uid=uid, gid=gid, mtime_ns=mtime_ns), size).tobuf(
        tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Batcher:
    """Coalesces small writes (headers, small files, padding) into ~1 MiB calls."""

    def __init__(self, out: Sink) -> None:
        self._out = out
        self._buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= CHUNK:
            self.flush()
            self._out(data)
            return
        self._buf += data
        if len(self._buf) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._out(self._buf)
            self._buf = bytearray()


def _open_nofollow(full: str) -> int:
    try:
        return os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0))
    except PermissionError:  # O_NOATIME needs ownership; fall back
        return os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _chunks(fd: int, size: int, view: memoryview) -> Iterator[memoryview]:
    """The first ``size`` bytes of ``fd`` (fewer if it shrank), read into ``view`` chunk by chunk."""
    left = size
    while left > 0:
        n = os.readv(fd, [view[: min(CHUNK, left)]])
        if n == 0:
            return
        yield view[:n]
        left -= n


_ZEROS = memoryview(bytes(CHUNK))


def _sparse_chunks(fd: int, size: int, view: memoryview) -> Iterator[memoryview]:
    """Like ``_chunks`` for a file with holes: ``SEEK_DATA``/``SEEK_HOLE`` find them, and their
    zeros come from a constant buffer instead of being read (reading a hole costs as much as
    reading data, and fills the page cache with zero pages). The stream is the same bytes: a
    plain tar member that any tar extracts."""
    pos = 0
    while pos < size:
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), size)
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size) if data < size else size
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no data after pos (a hole to the end, or it shrank)
                yield from _read_from(fd, pos, size, view)
                return
            data = hole = size
        while pos < data:
            n = min(CHUNK, data - pos)
            yield _ZEROS[:n]
            pos += n
        while pos < hole:
            n = os.preadv(fd, [view[: min(CHUNK, hole - pos)]], pos)
            if n == 0:
                return  # shrank meanwhile: the caller pads and reports
            yield view[:n]
            pos += n


def _read_from(fd: int, pos: int, size: int, view: memoryview) -> Iterator[memoryview]:
    os.lseek(fd, pos, os.SEEK_SET)
    yield from _chunks(fd, size - pos, view)


def write_tar(root: Path, entries: Iterable[FileEntry], out: Sink, holder: str,
              on_done: Callable[[FileEntry], object] | None = None) -> TarResult:
    """Stream ``entries`` (from the change plan) as a tar into ``out``.

    Each file is opened without following links, fstat-ed, and exactly the
    fstat size is archived (a file that shrinks while read is padded with
    zeros and reported; one that grows is cut at that size). The snapshot
    index gets the fstat data and the SHA-256 of the bytes archived.

    ``on_done``: called with each archived entry as soon as it is written, in order; the result's
    ``entries`` are then left empty (a caller that spills them to disk keeps no list of them)."""
    kept: list[FileEntry] = []
    done = kept.append if on_done is None else on_done
    skipped: list[tuple[str, str]] = []
    warnings: list[str] = []
    bytes_in = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    root_s = str(root)
    w = _Batcher(out)
    for e in entries:
        if e.type is not EntryType.FILE:
            w.write(_header(e, 0))
            done(e)
            continue
        try:
            fd = _open_nofollow(os.path.join(root_s, e.path))
        except OSError as err:
            skipped.append((e.path, f"vanished or not readable during backup: {err.strerror}"))
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                skipped.append((e.path, "no longer a regular file"))
                continue
            size = st.st_size
            mode = stat.S_IMODE(st.st_mode)
            w.write(_header(e, size, mode=mode, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns))
            h = hashlib.sha256()
            left = size
            # fewer blocks than bytes: holes, whose zeros are not read (the archive still holds them)
            for chunk in _sparse_chunks(fd, size, view) if st.st_blocks * 512 < size else _chunks(fd, size, view):
                h.update(chunk)
                w.write(chunk)
                left -= len(chunk)
            ino = st.st_ino
            if left > 0:  # shrank while being read
                pad = bytes(min(left, CHUNK))
                while left > 0:
                    part = pad[: min(left, len(pad))]
                    h.update(part)
                    w.write(part)
                    left -= len(part)
                warnings.append(f"{e.path}: shrank while being read; the archived copy is padded")
                ino = 0  # forces the next backup to take it again
            else:
                now = os.fstat(fd)
                if now.st_size != size or now.st_mtime_ns != st.st_mtime_ns:
                    warnings.append(f"{e.path}: changed while being read; the next backup will take it again")
                    ino = 0
            rem = size % BLOCK
            if rem:
                w.write(bytes(BLOCK - rem))
            bytes_in += size
            done(FileEntry(
                path=e.path, type=EntryType.FILE, mode=shared_int(mode), mtime_ns=st.st_mtime_ns,
                size=size, uid=shared_int(st.st_uid), gid=shared_int(st.st_gid), ino=ino, sha256=h.hexdigest(),
                holder=holder))
        finally:
            os.close(fd)
    w.write(bytes(BLOCK * 2))  # end-of-archive marker
    w.flush()
    return TarResult(tuple(kept), tuple(skipped), tuple(warnings), bytes_in)


