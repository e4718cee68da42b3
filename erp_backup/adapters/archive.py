"""tar -> zstd -> [gpg] -> file, hashing while streaming; and the way back.

Nothing is held whole in memory: files are read in 1 MiB chunks, each chunk is
hashed (the file's SHA-256 for the snapshot index) and handed to a
multithreaded zstd compressor whose output is hashed again (the artifact's
SHA-256 for ``SHA256SUMS``) on its way to disk.

The tar stream is plain POSIX/PAX, so ``zstd -d < files.tar.zst | tar -x``
restores it by hand.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Protocol

import zstandard

from erp_backup.core.errors import IntegrityError, SourceError, StorageError
from erp_backup.core.models import EntryType, FileEntry

CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE
FILE_MODE = 0o600


class Encryptor(Protocol):
    """A stage between the compressor and the file (GPG). Optional."""

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
            n = self._fh.write(data)
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


class ArtifactWriter:
    """``write(raw)`` -> zstd (threads) -> [encryptor] -> hashing file."""

    def __init__(self, path: Path, *, level: int = 3, threads: int = -1, encryptor: Encryptor | None = None):
        self.path = path
        self._file = HashingFile(path)
        self._enc_stream: IO[bytes] | None = encryptor.wrap(self._file) if encryptor else None  # type: ignore[arg-type]
        target = self._enc_stream or self._file
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
        self._file.close()


# --------------------------------------------------------------------------- writing the tar


@dataclass
class ArchiveResult:
    entries: list[FileEntry]  # what was archived, with sha256/holder filled in (files)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
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


def _ustar(e: FileEntry, size: int) -> bytes | None:
    """A plain ustar header built directly (tarfile's PAX writer costs ~25 µs a member).
    None when the entry needs PAX (long or non-UTF-8 names, big numbers)."""
    try:
        name = e.path.encode("utf-8") + (b"/" if e.type is EntryType.DIR else b"")
        link = (e.target or "").encode("utf-8")
    except UnicodeEncodeError:
        return None
    mtime = e.mtime_ns // 1_000_000_000
    if len(name) > 100 or len(link) > 100 or not (0 <= mtime < _OCT11) or size >= _OCT11 \
            or e.uid >= _OCT7 or e.gid >= _OCT7:
        return None
    hdr = bytearray(BLOCK)
    hdr[0:len(name)] = name
    hdr[100:108] = b"%07o\0" % e.mode
    hdr[108:116] = b"%07o\0" % e.uid
    hdr[116:124] = b"%07o\0" % e.gid
    hdr[124:136] = b"%011o\0" % size
    hdr[136:148] = b"%011o\0" % mtime
    hdr[148:156] = b" " * 8
    hdr[156:157] = _TYPEFLAG[e.type]
    hdr[157:157 + len(link)] = link
    hdr[257:265] = b"ustar\x0000"
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr)


def _header(e: FileEntry, size: int) -> bytes:
    return _ustar(e, size) or _tarinfo(e, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Batcher:
    """Coalesces small writes (headers, small files, padding) into ~1 MiB calls."""

    def __init__(self, out: Callable[[bytes], object]) -> None:
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


def write_tar(root: Path, entries: Iterable[FileEntry], out: Callable[[bytes], object], holder: str) -> ArchiveResult:
    """Stream ``entries`` (from the change plan) as a tar into ``out``.

    Each file is opened without following links, fstat-ed, and exactly the
    fstat size is archived (a file that shrinks while read is padded with
    zeros and reported; one that grows is cut at that size). The snapshot
    index gets the fstat data and the SHA-256 of the bytes archived."""
    result = ArchiveResult(entries=[])
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    root_s = str(root)
    w = _Batcher(out)
    for e in entries:
        if e.type is not EntryType.FILE:
            w.write(_header(e, 0))
            result.entries.append(e)
            continue
        try:
            fd = _open_nofollow(os.path.join(root_s, e.path))
        except OSError as err:
            result.skipped.append((e.path, f"vanished or not readable during backup: {err.strerror}"))
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                result.skipped.append((e.path, "no longer a regular file"))
                continue
            size = st.st_size
            w.write(_header(replace(e, mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns, uid=st.st_uid,
                                    gid=st.st_gid), size))
            h = hashlib.sha256()
            left = size
            while left > 0:
                n = os.readv(fd, [view[: min(CHUNK, left)]])
                if n == 0:
                    break
                chunk = view[:n]
                h.update(chunk)
                w.write(chunk)
                left -= n
            ino = st.st_ino
            if left > 0:  # shrank while being read
                pad = bytes(min(left, CHUNK))
                while left > 0:
                    part = pad[: min(left, len(pad))]
                    h.update(part)
                    w.write(part)
                    left -= len(part)
                result.warnings.append(f"{e.path}: shrank while being read; the archived copy is padded")
                ino = 0  # forces the next backup to take it again
            else:
                now = os.fstat(fd)
                if now.st_size != size or now.st_mtime_ns != st.st_mtime_ns:
                    result.warnings.append(f"{e.path}: changed while being read; the next backup will take it again")
                    ino = 0
            rem = size % BLOCK
            if rem:
                w.write(bytes(BLOCK - rem))
            result.bytes_in += size
            result.entries.append(FileEntry(
                path=e.path, type=EntryType.FILE, mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns,
                size=size, uid=st.st_uid, gid=st.st_gid, ino=ino, sha256=h.hexdigest(), holder=holder))
        finally:
            os.close(fd)
    w.write(bytes(BLOCK * 2))  # end-of-archive marker
    w.flush()
    return result


# --------------------------------------------------------------------------- reading back


def iter_decompressed(path: Path, *, decryptor: Callable[[IO[bytes]], IO[bytes]] | None = None
                      ) -> Iterator[bytes]:
    """Yield the raw (decompressed, decrypted) bytes of an artifact, chunk by chunk."""
    with open_decompressed(path, decryptor=decryptor) as r:
        while True:
            chunk = r.read(CHUNK)
            if not chunk:
                return
            yield chunk


class _Reader:
    """Decompressing reader. A background thread reads, hashes (the artifact's SHA-256, so a
    verification needs one pass only) and decompresses ahead, so that decompression overlaps
    with what the consumer does (writing files), as ``zstd -d | tar -x`` does with two
    processes. At most ``depth`` chunks are buffered: memory stays flat."""

    def __init__(self, path: Path, decryptor: Callable[[IO[bytes]], IO[bytes]] | None, depth: int = 8) -> None:
        import queue
        import threading

        self.path = path
        try:
            self._fh: IO[bytes] = open(path, "rb")
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror}", hint="check the backup directory") from e
        self._hash = hashlib.sha256()
        self.compressed_size = 0
        self._src: IO[bytes] = decryptor(self._fh) if decryptor else self._fh
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._done = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        outer = self

        class _Hashing:
            def read(self, n: int = -1) -> bytes:
                data = outer._src.read(n)
                if outer._src is outer._fh:
                    outer._hash.update(data)
                    outer.compressed_size += len(data)
                return data

        try:
            r = zstandard.ZstdDecompressor().stream_reader(_Hashing(), read_size=CHUNK, read_across_frames=True)
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
        first = self.read(n)
        if len(first) == n or not first:
            return first
        parts = [first]
        got = len(first)
        while got < n:
            more = self.read(n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

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
        if self._src is not self._fh:
            self._src.close()
        self._fh.close()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_decompressed(path: Path, *, decryptor: Callable[[IO[bytes]], IO[bytes]] | None = None) -> _Reader:
    return _Reader(path, decryptor)


@dataclass(slots=True)
class TarMember:
    name: str
    type: bytes  # b"0" file, b"5" dir, b"2" symlink, ...
    size: int
    linkname: str = ""

    def isfile(self) -> bool:
        return self.type in (b"0", b"\x00", b"7")


def _octal(field: bytes, where: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        n = int.from_bytes(field[1:], "big")
        return -n if field[0] & 0x40 else n
    text = field.rstrip(b"\x00 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise IntegrityError(f"{where}: tar header has a bad number field",
                             hint="the archive is damaged; verify the set") from None


def _pax(data: bytes, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise IntegrityError(f"{where}: bad PAX header", hint="the archive is damaged; verify the set") from None
        rec = data[sp + 1:pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
        if length <= 0:
            break
    return out


class TarStream:
    """A lean, streaming reader of POSIX/PAX/GNU tar (what GNU tar and Python write).

    ``members()`` yields each member; its data can be read with ``read(n)`` until the next
    iteration, which skips whatever was not read. Member names are returned as stored: the
    caller decides what to do with them (the restore only uses them as lookup keys)."""

    def __init__(self, reader: _Reader, where: str) -> None:
        self._r = reader
        self.where = where
        self._left = 0
        self._pad = 0

    def _exact(self, n: int) -> bytes:
        data = self._r.read_exact(n)
        if len(data) != n:
            raise IntegrityError(f"{self.where}: archive is truncated", hint="verify the set; restore from another set")
        return data

    def _skip(self) -> None:
        n = self._left + self._pad
        while n > 0:
            got = self._r.read(min(n, CHUNK))
            if not got:
                raise IntegrityError(f"{self.where}: archive is truncated",
                                     hint="verify the set; restore from another set")
            n -= len(got)
        self._left = self._pad = 0

    def read(self, n: int = CHUNK) -> bytes:
        if self._left <= 0:
            return b""
        data = self._r.read(min(n, self._left))
        if not data:
            raise IntegrityError(f"{self.where}: archive is truncated", hint="verify the set; restore from another set")
        self._left -= len(data)
        return data

    def members(self) -> Iterator[TarMember]:
        pax: dict[str, str] = {}
        longname: str | None = None
        longlink: str | None = None
        while True:
            self._skip()
            hdr = self._r.read_exact(BLOCK)
            if not hdr:
                raise IntegrityError(f"{self.where}: archive ends without its end marker",
                                     hint="the archive is truncated; verify the set")
            if len(hdr) != BLOCK:
                raise IntegrityError(f"{self.where}: archive is truncated", hint="verify the set")
            if hdr == bytes(BLOCK):
                return
            chk = _octal(hdr[148:156], self.where)
            if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                raise IntegrityError(f"{self.where}: tar header checksum mismatch",
                                     hint="the archive is damaged; verify the set; restore from another set")
            typ = hdr[156:157]
            size = _octal(hdr[124:136], self.where)
            if size < 0:
                raise IntegrityError(f"{self.where}: negative member size", hint="the archive is damaged")
            if typ in (b"x", b"g", b"L", b"K"):
                if size > (1 << 20):
                    raise IntegrityError(f"{self.where}: a {size}-byte extended header is not plausible",
                                         hint="the archive is damaged or malicious; restore from another set")
                data = self._exact(size)
                self._pad = (-size) % BLOCK
                self._skip()
                if typ == b"x":
                    pax = _pax(data, self.where)
                elif typ == b"L":
                    longname = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
                elif typ == b"K":
                    longlink = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
                continue
            name = hdr[0:100].split(b"\x00", 1)[0]
            if hdr[257:262] == b"ustar" and hdr[345:500].strip(b"\x00"):
                name = hdr[345:500].split(b"\x00", 1)[0] + b"/" + name
            m = TarMember(
                name=pax.get("path") or longname or name.decode("utf-8", "surrogateescape"),
                type=typ,
                size=int(pax["size"]) if "size" in pax else size,
                linkname=pax.get("linkpath") or longlink or hdr[157:257].split(b"\x00", 1)[0].decode(
                    "utf-8", "surrogateescape"),
            )
            pax, longname, longlink = {}, None, None
            # data follows regular files and unknown types; links, dirs and devices carry none
            self._left = 0 if typ in (b"1", b"2", b"3", b"4", b"5", b"6") else m.size
            self._pad = (-self._left) % BLOCK
            if m.name.endswith("/"):
                m.name = m.name.rstrip("/")
            yield m


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_stream(chunks: Iterable[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for c in chunks:
        h.update(c)
        n += len(c)
    return h.hexdigest(), n


def check_readable_root(root: Path) -> None:
    if not root.is_dir():
        raise SourceError(f"{root} is not a directory", hint="check [project] root")
