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


def _header(ti: tarfile.TarInfo) -> bytes:
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


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
    for e in entries:
        if e.type is not EntryType.FILE:
            out(_header(_tarinfo(e, 0)))
            result.entries.append(e)
            continue
        full = os.path.join(root_s, e.path)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as err:
                result.skipped.append((e.path, f"not readable: {err.strerror}"))
                continue
        except OSError as err:
            result.skipped.append((e.path, f"vanished or not readable during backup: {err.strerror}"))
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                result.skipped.append((e.path, "no longer a regular file"))
                continue
            cur = replace(e, size=st.st_size, mtime_ns=st.st_mtime_ns, mode=stat.S_IMODE(st.st_mode),
                          uid=st.st_uid, gid=st.st_gid, ino=st.st_ino)
            out(_header(_tarinfo(cur, cur.size)))
            h = hashlib.sha256()
            left = cur.size
            while left > 0:
                n = os.readv(fd, [view[: min(CHUNK, left)]])
                if n == 0:
                    break
                chunk = view[:n]
                h.update(chunk)
                out(chunk)
                left -= n
            if left > 0:  # shrank while being read
                pad = bytes(min(left, CHUNK))
                while left > 0:
                    part = pad[: min(left, len(pad))]
                    h.update(part)
                    out(part)
                    left -= len(part)
                result.warnings.append(f"{e.path}: shrank while being read; the archived copy is padded")
            elif os.fstat(fd).st_size != cur.size or os.fstat(fd).st_mtime_ns != cur.mtime_ns:
                result.warnings.append(f"{e.path}: changed while being read; the next backup will take it again")
                cur = replace(cur, mtime_ns=-1)  # forces the next backup to see it as changed
            rem = cur.size % BLOCK
            if rem:
                out(bytes(BLOCK - rem))
            result.bytes_in += cur.size
            result.entries.append(replace(cur, sha256=h.hexdigest(), holder=holder))
        finally:
            os.close(fd)
    out(bytes(BLOCK * 2))  # end-of-archive marker
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
    def __init__(self, path: Path, decryptor: Callable[[IO[bytes]], IO[bytes]] | None) -> None:
        self.path = path
        try:
            self._fh: IO[bytes] = open(path, "rb")
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror}", hint="check the backup directory") from e
        self._src = decryptor(self._fh) if decryptor else self._fh
        self._r = zstandard.ZstdDecompressor().stream_reader(self._src, read_size=CHUNK, read_across_frames=True)

    def read(self, n: int = -1) -> bytes:
        try:
            return self._r.read(n)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{self.path.name} is corrupt: zstd says {e}",
                                 hint="verify the set; restore from another set") from e

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._r.close()
        if self._src is not self._fh:
            self._src.close()
        self._fh.close()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_decompressed(path: Path, *, decryptor: Callable[[IO[bytes]], IO[bytes]] | None = None) -> _Reader:
    return _Reader(path, decryptor)


def iter_tar(reader: IO[bytes], where: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Iterate the members of a tar stream; corrupt structure -> IntegrityError."""
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=CHUNK) as tf:
            for member in tf:
                yield member, tf
    except tarfile.TarError as e:
        raise IntegrityError(f"{where}: tar structure is damaged ({e})",
                             hint="verify the set; restore from another set") from e
    except EOFError as e:
        raise IntegrityError(f"{where}: archive is truncated", hint="verify the set; restore from another set") from e


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
