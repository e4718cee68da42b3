"""Restore a committed set (files and database) into a target.

The snapshot index of the chosen set says which set holds each file's bytes;
each holder's archive is read once, in one pass, and only the members the index
wants are written. Nothing is written outside the target directory:

* every index path is validated (relative, no ``..``, no NUL, no empty part), and so
  is the path of a SQLite database restored inside the target, before anything is written;
* everything is created, written, renamed and deleted relative to directory descriptors
  opened with ``O_NOFOLLOW`` from the target down (``SafeTarget``): a link where a directory
  must be is replaced, never followed; symlinks are created last;
* the tar member names themselves are only used as lookup keys;
* a failed restore removes what it created (and says what it had already replaced);
* set-id bits from the set are kept only when asked (``keep_setid``).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from erp_backup import encryption
from erp_backup import verify as verifier
from erp_backup.adapters import archive
from erp_backup.adapters.databases.base import adapter_for
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core import chain
from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.errors import (
    BackupError,
    ChainError,
    ConfigError,
    IntegrityError,
    RestoreError,
    UnsafeArchiveError,
)
from erp_backup.core.index_table import IndexTable
from erp_backup.core.models import BackupId, EntryType, FileEntry, Manifest

if TYPE_CHECKING:
    from erp_backup.config import Settings

IS_ROOT = os.geteuid() == 0
DecryptorFor = Callable[[Manifest], Callable[[IO[bytes]], IO[bytes]] | None]


def _plain(_m: Manifest) -> None:
    return None


@dataclass(frozen=True)
class RestoreRequest:
    """What an operator asks for (CLI flags, the restore deployment's parameters). No secret."""

    target_dir: str | None = None
    backup_id: str | None = None
    at: datetime | None = None
    target_database: str | None = None  # a URL without password
    force: bool = False
    yes: bool = False
    jobs: int = 1
    keep_setid: bool = False  # restore setuid/setgid bits as recorded (GNU tar keeps them as root too)
    verify: str = "quick"  # how "the newest valid set" is checked (no backup_id/at): "quick" or "full"
    allow_old: bool = False  # accept a newest valid set older than [restore] max_age


@dataclass(frozen=True)
class RestorePlan:
    """A checked restore: which set, into what. No secret (it may travel as a flow parameter)."""

    set_id: str
    target_dir: str | None
    target_database: str | None  # URL without password (credentials are resolved where the restore runs)
    replace: bool  # write over an existing database (--force, or --yes for the live one)
    into_live: bool
    jobs: int = 1
    notes: tuple[str, ...] = ()  # warnings of the choice (newer sets skipped, and why): into the report
    # set-id bits as recorded: the operator asked (--keep-setid); the in-place restore (restoring
    # as root into the original place) sets this too. Otherwise they are dropped and reported.
    keep_setid: bool = False
    # the SQLite target database lies inside target_dir, at this relative path: it is written by
    # the rules of the file restore (no link followed, rolled back with the files)
    database_rel: str | None = None


@dataclass(frozen=True)
class FilesRestored:
    sets_read: tuple[str, ...]
    files: int
    dirs: int
    symlinks: int
    bytes: int
    setid_dropped: int = 0
    setid_examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestoreReport:
    set_id: str
    target_dir: str
    sets_read: tuple[str, ...] = ()
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    database: str | None = None
    db_tables: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    notes: tuple[str, ...] = ()

    def row(self) -> dict[str, object]:
        return {
            "set": self.set_id, "sets read": ", ".join(self.sets_read), "target": self.target_dir,
            "files": self.files, "dirs": self.dirs, "symlinks": self.symlinks, "bytes": self.bytes,
            "database": self.database or "-", "tables": len(self.db_tables), "duration s": round(self.duration_s, 2),
        }


@dataclass
class _Counts:
    sets_read: list[str] = field(default_factory=list)
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0


_BAD = "the backup set is damaged or malicious; restore from another set"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
SETID_BITS = stat.S_ISUID | stat.S_ISGID
_EXAMPLES = 5


def check_rel(path: str) -> str:
    """Validate a path from an index or archive: relative, inside, normalised."""
    if not path or "\x00" in path:
        raise UnsafeArchiveError(f"refusing empty or NUL-containing path {path!r}", hint=_BAD)
    parts = path.split("/")
    if path.startswith("/") or ".." in parts:
        raise UnsafeArchiveError(f"refusing path {path!r}: it would leave the restore target", hint=_BAD)
    if "" in parts or "." in parts:
        raise UnsafeArchiveError(f"refusing non-normalised path {path!r}", hint=_BAD)
    return path


def _examples(paths: Iterable[str], total: int) -> str:
    shown = list(paths)[:_EXAMPLES]
    return ", ".join(shown) + (", …" if total > len(shown) else "")


def _ino(dir_fd: int, name: str) -> int | None:
    """Inode of ``name`` in ``dir_fd`` (not following a link), None if there is nothing."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return None


class SafeTarget:
    """Creates things under ``root`` without ever following a link, and remembers them.

    Every operation is relative to a directory file descriptor opened with ``O_NOFOLLOW``
    from the target's own descriptor down, so no path is resolved twice and none through a
    link: a link (or file) where a directory must be is replaced, never followed. Paths given
    to it must have passed ``check_rel``.

    What it creates (the target itself and missing parents included) is recorded with its
    inode; ``rollback()`` removes exactly that, never anything that was there before, and says
    which pre-existing paths (a ``--force`` target) were already replaced or changed."""

    MAX_FDS = 64  # directory descriptors kept open (LRU); the target's own is always open

    def __init__(self, root: Path) -> None:
        self.root = os.path.abspath(root)
        self._created: dict[str, int] = {}  # rel -> inode, in creation order (parents first)
        self._written: dict[str, None] = {}  # pre-existing rels replaced or changed, in order
        self._outer: list[tuple[str, int]] = []  # (absolute path, inode): the target and parents we made
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._used: dict[str, tuple[int, int]] = {}  # every directory written into: rel -> (dev, inode)
        self._root_fd = -1
        missing = []
        p = self.root
        while not os.path.lexists(p):
            missing.append(p)
            p = os.path.dirname(p)
        try:
            for d in reversed(missing):  # like mkdir -p: the operator's path, its links followed
                os.mkdir(d, 0o700 if d == self.root else 0o777)
                self._outer.append((d, os.lstat(d).st_ino))
            self._root_fd = os.open(self.root, _DIR_FLAGS)
        except OSError as e:
            self._remove_outer()
            if e.errno == errno.ELOOP:
                raise RestoreError(f"target {self.root} is a symbolic link",
                                   hint=f"give the directory itself: --target-dir {os.path.realpath(self.root)}") from e
            raise RestoreError(f"cannot use target directory {self.root}: {e.strerror}",
                               hint="give a directory you can write to as --target-dir") from e

    # ---------------------------------------------------------------- bookkeeping

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _made(self, rel: str, ino: int) -> None:
        self._created[rel] = ino

    def _replaced(self, rel: str) -> None:
        if rel not in self._created:
            self._written[rel] = None

    def settle(self, rel: str, before: int | None) -> None:
        """Record what happened at ``rel`` (in an existing directory) since its inode was ``before``."""
        parent, _, name = rel.rpartition("/")
        now = _ino(self.dir_fd(parent, create=False), name)
        if before is None and now is not None:
            self._made(rel, now)
        elif before is not None and now != before:
            self._replaced(rel)

    def changed(self, rel: str) -> None:
        """A pre-existing path whose metadata this restore changed."""
        self._replaced(rel)

    # ---------------------------------------------------------------- directories

    def dir_fd(self, rel: str, *, create: bool = True) -> int:
        """A descriptor of directory ``rel`` ('' = the target), made if missing (``create``)."""
        if not rel:
            return self._root_fd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        parent, _, name = rel.rpartition("/")
        pfd = self.dir_fd(parent, create=create)
        fd = self._open_dir(pfd, name, rel, create)
        self._fds[rel] = fd
        st = os.fstat(fd)
        self._used[rel] = (st.st_dev, st.st_ino)
        if len(self._fds) > self.MAX_FDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _open_dir(self, pfd: int, name: str, rel: str, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as e:
            if not create or e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            os.unlink(name, dir_fd=pfd)  # a link or file where a directory must be: replace it, never follow
            self._replaced(rel)
            os.mkdir(name, 0o700, dir_fd=pfd)
            return os.open(name, _DIR_FLAGS, dir_fd=pfd)
        os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        self._made(rel, os.fstat(fd).st_ino)
        return fd

    def mkdir(self, rel: str) -> None:
        self.dir_fd(rel)

    def check_in_place(self) -> None:
        """Every directory this restore wrote into is still the one at its path under the target,
        reached again from the target without following a link. A directory swapped (e.g. for a
        link) while the restore ran would have taken files that are not where the target shows
        them: fail, and the caller rolls back (a review swapped one mid-restore and got success)."""
        for rel in sorted(self._used, key=lambda r: r.count("/")):
            fd = os.dup(self._root_fd)
            try:
                for part in rel.split("/"):
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = nxt
                st = os.fstat(fd)
            except OSError:
                st = None
            finally:
                os.close(fd)
            if st is None or (st.st_dev, st.st_ino) != self._used[rel]:
                raise RestoreError(f"{self.path(rel)} was moved or replaced while the restore ran",
                                   hint="make sure nothing else writes into the target directory, then "
                                   "restore again into an empty one")

    def is_new(self, rel: str) -> bool:
        return rel in self._created

    # ---------------------------------------------------------------- files and links

    def open_file(self, rel: str) -> int:
        """A new, empty file at ``rel`` opened for writing (whatever was there replaced, never followed)."""
        parent, _, name = rel.rpartition("/")
        pfd = self.dir_fd(parent)
        try:
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=pfd)
        except FileExistsError:
            if stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                raise RestoreError(f"{self.path(rel)} is a directory; cannot restore a file there",
                                   hint="restore into an empty directory") from None
            os.unlink(name, dir_fd=pfd)  # a file or a link: replace it, never write through it
            self._replaced(rel)
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=pfd)
            if rel in self._created:
                self._made(rel, os.fstat(fd).st_ino)
            return fd
        self._made(rel, os.fstat(fd).st_ino)
        return fd

    def symlink(self, rel: str, target: str, e: FileEntry) -> None:
        parent, _, name = rel.rpartition("/")
        pfd = self.dir_fd(parent)
        try:
            os.symlink(target, name, dir_fd=pfd)
        except FileExistsError:
            if stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                raise RestoreError(f"{self.path(rel)} is a directory; cannot restore a link there",
                                   hint="restore into an empty directory") from None
            os.unlink(name, dir_fd=pfd)
            self._replaced(rel)
            os.symlink(target, name, dir_fd=pfd)
            if rel in self._created:
                self._made(rel, os.stat(name, dir_fd=pfd, follow_symlinks=False).st_ino)
        else:
            self._made(rel, os.stat(name, dir_fd=pfd, follow_symlinks=False).st_ino)
        if IS_ROOT:
            os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    # ---------------------------------------------------------------- the end

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def _remove_outer(self) -> list[str]:
        left = []
        for path, ino in reversed(self._outer):
            try:
                if os.lstat(path).st_ino == ino:
                    os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(path)
        self._outer.clear()
        return left

    def rollback(self) -> str:
        """Remove what this restore created (newest first); a sentence for the error message."""
        left: list[str] = []
        for rel, ino in reversed(list(self._created.items())):
            parent, _, name = rel.rpartition("/")
            try:
                pfd = self.dir_fd(parent, create=False)
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if st.st_ino != ino:
                    continue  # not what we made: leave it
                if stat.S_ISDIR(st.st_mode):
                    fd = self._fds.pop(rel, None)
                    if fd is not None:
                        os.close(fd)
                    os.rmdir(name, dir_fd=pfd)
                else:
                    os.unlink(name, dir_fd=pfd)
            except FileNotFoundError:
                continue
            except OSError:
                left.append(self.path(rel))
        removed = len(self._created) - len(left)
        self._created.clear()
        self.close()
        outer = len(self._outer)
        left += self._remove_outer()
        parts = []
        if self._written:
            parts.append(f"it had already written over {len(self._written)} path(s) that were in {self.root} "
                         f"before: {_examples(self._written, len(self._written))}")
        if left:
            parts.append(f"could not remove {len(left)} path(s) it had created: {_examples(left, len(left))}")
        if not parts:
            parts.append(f"{self.root} was left as it was found" if removed or outer
                         else f"nothing was written to {self.root}")
        elif removed or outer:
            parts.append("what it had created was removed")
        return "; ".join(parts)


def _dir_meta(safe: SafeTarget, e: FileEntry, mode: int) -> None:
    fd = safe.dir_fd(e.path)
    if not safe.is_new(e.path):
        safe.changed(e.path)
    if IS_ROOT:
        os.fchown(fd, e.uid, e.gid)
    os.fchmod(fd, mode)
    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))


def _apply_meta_fd(fd: int, e: FileEntry, mode: int) -> None:
    if IS_ROOT:
        os.fchown(fd, e.uid, e.gid)
    os.fchmod(fd, mode)  # after chown, which would clear set-id bits
    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))


class _SetidPolicy:
    """Set-id bits from the set are kept only when asked (``keep_setid``); otherwise dropped and counted."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.dropped = 0
        self.examples: list[str] = []

    def mode(self, e: FileEntry) -> int:
        if self.keep or not e.mode & SETID_BITS:
            return e.mode
        self.dropped += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(e.path)
        return e.mode & ~SETID_BITS


def check_set(repo: LocalRepository, m: Manifest, database_rel: str | None = None) -> None:
    """Everything about the set's index that can be checked before a byte is written: safe paths,
    one type per path, parents that are directories, the sets it needs, and a SQLite database
    path inside the target that is no entry of the index and lies under no link or file of it."""
    types: dict[str, EntryType] = {}
    for path, typ in _path_types(m.files):
        p = check_rel(path)
        if types.setdefault(p, typ) is not typ:
            raise UnsafeArchiveError(f"refusing {p!r}: the index lists it as a {types[p].value} and a "
                                     f"{typ.value}", hint=_BAD)
    for path in types:
        parent = path.rpartition("/")[0]
        if parent and types.get(parent, EntryType.DIR) is not EntryType.DIR:
            kind = types[parent].value
            raise UnsafeArchiveError(f"refusing {path!r}: its parent {parent!r} is a {kind} in the index", hint=_BAD)
    if database_rel is not None:
        check_rel(database_rel)
        if database_rel in types:
            raise UnsafeArchiveError(f"refusing SQLite database path {database_rel!r}: the index holds a "
                                     f"{types[database_rel].value} there", hint=_BAD)
        parent = database_rel.rpartition("/")[0]
        while parent:
            if types.get(parent, EntryType.DIR) is not EntryType.DIR:
                raise UnsafeArchiveError(f"refusing SQLite database path {database_rel!r}: its parent {parent!r} "
                                         f"is a {types[parent].value} in the index", hint=_BAD)
            parent = parent.rpartition("/")[0]
    if isinstance(m.files, IndexTable):
        t = m.files
        holders = {h for i in range(len(t)) if t.type(i) is EntryType.FILE and (h := t.holder(i)) and h != m.id.value}
    else:
        holders = {e.holder for e in m.files if e.type is EntryType.FILE and e.holder and e.holder != m.id.value}
    missing = sorted(d for d in {*m.depends_on, *map(BackupId, holders)} if not repo.exists(d))
    if missing:
        raise ChainError(f"set {m.id} needs set {missing[0]}, which is not in {repo.root}",
                         hint="pick another set (`erp-backup list`) or fetch the missing set from remote storage")


def restore_files(repo: LocalRepository, m: Manifest, safe: SafeTarget, *, keep_setid: bool = False,
                  decryptor_for: DecryptorFor = _plain) -> FilesRestored:
    """Write the set's snapshot (checked by ``check_set``) into ``safe``'s target (checked by
    ``preflight``: empty, or ``force``)."""
    rep = _Counts()
    setid = _SetidPolicy(keep_setid)
    # positions in the index, not entries: the index stays packed (IndexTable), entries are built
    # one at a time as they are restored
    files = m.files if isinstance(m.files, Sequence) else tuple(m.files)
    dirs = list(_of_type(files, EntryType.DIR))
    for d in dirs:
        safe.mkdir(d.path)
    groups = _positions_by_holder(files)
    for holder in sorted(groups):
        wanted = {_path_at(files, i): i for i in groups[holder]}
        groups[holder] = array("I")
        hm = m if holder == m.id.value else repo.read_header(BackupId(holder))
        art = hm.artifact("files")
        if art is None:
            raise IntegrityError(f"set {holder} has no files archive but holds {len(wanted)} files",
                                 hint="verify the chain; restore from another set")
        apath = repo.set_dir(holder) / art.name
        rep.sets_read.append(holder)
        where = f"{holder}/{art.name}"
        with archive.open_decompressed(apath, decryptor=decryptor_for(hm)) as r:
            tar = archive.TarStream(r, where)
            for member in tar.members():
                if member.name not in wanted:
                    continue
                e = files[wanted.pop(member.name)]
                if not member.isfile():
                    raise IntegrityError(f"{where}: {member.name} is not a regular file", hint="verify the set")
                fd = safe.open_file(e.path)
                try:
                    digest = _write_member(tar, fd)
                    if e.sha256 and digest != e.sha256:
                        raise IntegrityError(f"{where}: {e.path} does not match its checksum",
                                             hint="verify the set; restore from another one")
                    _apply_meta_fd(fd, e, setid.mode(e))
                finally:
                    os.close(fd)
                rep.files += 1
                rep.bytes += e.size
                if not wanted:
                    break
        if wanted:
            first = next(iter(wanted))
            raise IntegrityError(f"{holder}/{art.name} lacks {len(wanted)} file(s) of the index, e.g. {first}",
                                 hint="verify the set; restore from another one")
    for e in _of_type(files, EntryType.SYMLINK):
        safe.symlink(e.path, e.target or "", e)
        rep.symlinks += 1
    for d in sorted(dirs, key=lambda e: e.path.count("/"), reverse=True):
        _dir_meta(safe, d, setid.mode(d))
        rep.dirs += 1
    safe.check_in_place()
    return FilesRestored(tuple(rep.sets_read), rep.files, rep.dirs, rep.symlinks, rep.bytes,
                         setid.dropped, tuple(setid.examples))


def _path_types(files: Iterable[FileEntry]) -> Iterator[tuple[str, EntryType]]:
    if isinstance(files, IndexTable):  # without building the entries
        return ((files.path(i), files.type(i)) for i in range(len(files)))
    return ((e.path, e.type) for e in files)


def _of_type(files: Sequence[FileEntry], typ: EntryType) -> Iterator[FileEntry]:
    if isinstance(files, IndexTable):
        return (files[i] for i in range(len(files)) if files.type(i) is typ)
    return (e for e in files if e.type is typ)


def _path_at(files: Sequence[FileEntry], i: int) -> str:
    return files.path(i) if isinstance(files, IndexTable) else files[i].path


def _positions_by_holder(files: Sequence[FileEntry]) -> dict[str, array[int]]:
    """``chain.files_by_holder`` as positions in the index (4 bytes a file, not an entry)."""
    groups: dict[str, array[int]] = {}
    table = files if isinstance(files, IndexTable) else None
    for i in range(len(files)):
        if table is not None:
            if table.type(i) is not EntryType.FILE:
                continue
            holder = table.holder(i)
        else:
            e = files[i]
            if e.type is not EntryType.FILE:
                continue
            holder = e.holder
        if not holder:
            raise ChainError(f"snapshot index entry {_path_at(files, i)!r} names no holding set",
                             hint="the manifest is damaged: restore from another set")
        g = groups.get(holder)
        if g is None:
            g = groups[holder] = array("I")
        g.append(i)
    return groups


_HOLE = 1 << 16  # all-zero blocks of this size (aligned on the file offset) become holes
_ZEROS = bytes(max(archive.CHUNK, _HOLE))
_ZEROS_VIEW = memoryview(_ZEROS)


def _write_member(tar: archive.TarStream, fd: int) -> str:
    """Copy the current member into the new, empty file ``fd``; return the SHA-256 of its bytes.
    Zeros are not written (the file stays sparse: unwritten ranges of a new file read as zeros):
    a whole all-zero read is skipped, and inside other reads every all-zero block (64 KiB, aligned
    on the file offset, or the partial ones at either end); the size is set at the end."""
    h = hashlib.sha256()
    pos = 0
    hole_at_end = False
    while chunk := tar.read(archive.CHUNK):
        h.update(chunk)
        n = len(chunk)
        hole_at_end = _ZEROS.startswith(chunk) or _write_sparse(fd, chunk, pos)
        pos += n
    if hole_at_end:
        os.ftruncate(fd, pos)
    return h.hexdigest()


def _write_sparse(fd: int, data: bytes, pos: int) -> bool:
    """``pwrite`` ``data`` at ``pos`` except its all-zero blocks; True if it ended in one."""
    n = len(data)
    view = memoryview(data)
    start = 0  # data[start:] is not written yet
    a, b = 0, min(n, (-pos) % _HOLE or _HOLE)  # the first block ends at an aligned file offset
    while a < n:
        if data.startswith(_ZEROS_VIEW[:b - a], a):
            if a > start:
                _pwrite_all(fd, view[start:a], pos + start)
            start = b
        a, b = b, min(n, b + _HOLE)
    if start < n:
        _pwrite_all(fd, view[start:], pos + start)
        return False
    return True


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        k = os.pwrite(fd, view, offset)
        view = view[k:]
        offset += k


def restore_database(repo: LocalRepository, m: Manifest, target_db: DatabaseUrl, *, replace: bool,
                     jobs: int = 1, safe: SafeTarget | None = None, rel: str | None = None,
                     decryptor_for: DecryptorFor = _plain) -> dict[str, int]:
    """Restore the set's dump into ``target_db`` (checked by ``preflight``: engine, live guard).
    With ``safe`` and ``rel``, ``target_db`` is a SQLite file inside the restore target: it is
    written there by the rules of the file restore (relative to directory descriptors, no link
    followed, recorded for a rollback)."""
    art = m.artifact("database")
    if m.database is None or art is None:
        raise RestoreError(f"set {m.id} has no database dump", hint="pick another set")
    adapter = adapter_for(target_db)
    chunks: Iterable[bytes] = archive.iter_decompressed(repo.set_dir(m.id) / art.name, decryptor=decryptor_for(m))
    if safe is not None and rel is not None:
        counts = _restore_sqlite_in_target(adapter, chunks, safe, check_rel(rel), replace=replace)
    else:
        with repo.scratch("restore") as work:  # a fresh name; cleaned by the next run if killed
            counts = adapter.restore(chunks, m.database, target_db, replace=replace, workdir=work, jobs=jobs)
    diff = {t: (n, counts.get(t)) for t, n in m.database.tables.items() if counts.get(t) != n}
    if diff:
        t, (want, got) = next(iter(diff.items()))
        raise IntegrityError(f"restored database differs from the manifest: {t} has {got} rows, expected {want}",
                             hint="the dump may be damaged; verify the set")
    return counts


def _restore_sqlite_in_target(adapter: object, chunks: Iterable[bytes], safe: SafeTarget, rel: str, *,
                              replace: bool) -> dict[str, int]:
    from erp_backup.adapters.databases.sqlite import COMPANIONS, SqliteAdapter

    if not isinstance(adapter, SqliteAdapter):
        raise RestoreError(f"the database inside the target must be SQLite, not {type(adapter).__name__}",
                           hint="give --target-database")
    parent, _, name = rel.rpartition("/")
    dfd = safe.dir_fd(parent)
    names = [name, *(name + s for s in COMPANIONS)]
    before = {n: _ino(dfd, n) for n in names}
    try:
        return adapter.restore_at(chunks, dfd, name, replace=replace, where=safe.path(rel))
    finally:
        for n in names:
            safe.settle(f"{parent}/{n}" if parent else n, before[n])


# ----------------------------------------------------------------------------- preflight and the whole restore


def resolve_target_database(target: str | None, live: DatabaseUrl | None) -> DatabaseUrl | None:
    """The restore target with its credentials. Passwords never travel in flow parameters or argv:
    a target on the live database's server (same engine and user) reuses its password; otherwise
    ``$ERP_BACKUP_TARGET_DB_PASSWORD``. A target without a user takes the live database's user."""
    if not target:
        return None
    url = parse_database_url(target, key="target_database")
    if url.password:
        raise ConfigError("target_database contains a password",
                          hint="leave it out: it is taken from the configured database (same server and "
                          "user) or from $ERP_BACKUP_TARGET_DB_PASSWORD")
    pw = os.environ.get("ERP_BACKUP_TARGET_DB_PASSWORD", "")
    if not pw and live is not None and live.engine == url.engine and live.user == (url.user or live.user) \
            and live.with_name(url.name).same_database(url):
        pw = live.password
    user = url.user or (live.user if url.engine != "sqlite" and live is not None else "")
    return dataclasses.replace(url, user=user, password=pw)


def _target_empty(target: Path) -> bool:
    return not target.exists() or (target.is_dir() and not any(target.iterdir()))


def _pick_named(repo: LocalRepository, backup_id: str) -> Manifest:
    """``--backup ID``: that set, intact, with every set its restore reads present and intact."""
    bid = BackupId(backup_id)
    found = repo.inspect(bid)
    if found is None:
        raise RestoreError(f"backup set {backup_id} not found in {repo.root}", hint="see `erp-backup list`")
    hint = "pick another set (`erp-backup list`); `erp-backup verify ID` says more"
    if isinstance(found, chain.Damaged):
        raise RestoreError(f"backup set {bid} is damaged: {found.reason}", hint=hint)
    deps = {d: repo.inspect(d) for d in found.depends_on}
    problem = chain.chain_problem(found, [d for d, x in deps.items() if isinstance(x, Manifest)],
                                  [x for x in deps.values() if isinstance(x, chain.Damaged)])
    if problem is not None:
        raise ChainError(f"backup set {bid} cannot be restored: it {problem}",
                         hint=hint + ", or fetch the set it needs from remote storage")
    return found


_NEEDS_ALL = None
_NEEDS_FILES = frozenset({"files"})


def _pick_newest(repo: LocalRepository, at: datetime | None, level: str = "quick",
                 settings: Settings | None = None) -> tuple[Manifest, tuple[str, ...]]:
    """The newest set finished at or before ``at`` (None: the newest) that a restore can read whole:
    intact manifests (``scan``), every set it needs present, and — the quick level — the artifacts
    the restore reads matching their checksums (its own; the files archive of each set it needs);
    ``level="full"`` also verifies the set and its chain deeply (``verify.verify_sets``).
    Every newer set passed over is named, with why: in the error when none is left, else as notes."""
    found = repo.scan()
    if not found.committed and not found.damaged:
        raise ChainError(f"there is no committed backup set in {repo.root}",
                         hint="check [storage] local_dir, or run a backup first")
    by_id = {m.id: m for m in found.committed}
    from erp_backup import verdicts

    # a set whose last recorded verification failed is not "valid" (``<id>.verified.json``)
    invalid: dict[BackupId, str] = {k: v.removeprefix("its ") for k, v in verdicts.failed(repo.root).items()}
    checked: dict[tuple[BackupId, bool], str | None] = {}
    while True:
        sel = chain.select_for_time(found.committed, at, damaged=found.damaged, invalid=invalid)
        bad = None
        for member, whole in ((sel.chosen, True), *((by_id[d], False) for d in sel.chosen.depends_on)):
            key = (member.id, whole)
            if key not in checked:
                checked[key] = verifier.artifacts_problem(repo, member, _NEEDS_ALL if whole else _NEEDS_FILES)
            if checked[key] is not None:
                bad = (member.id, checked[key])
                break
        if bad is None and level == "full":
            deep = verifier.verify_sets(repo, [sel.chosen.id.value], level="full", settings=settings)[0]
            if not deep.ok:
                bad = (sel.chosen.id, deep.problems[0].removeprefix(f"{sel.chosen.id}: "))
        if bad is None:
            break
        invalid[bad[0]] = bad[1] or ""
    notes = tuple(f"skipped {s.id}: it {s.reason}" for s in sel.skipped)
    if notes:
        notes += (f"restoring {sel.chosen.id} (finished {sel.chosen.finished_at:%Y-%m-%dT%H:%M:%SZ}), "
                  f"the newest set that can be restored whole",)
    return sel.chosen, notes


def _same_database(a: DatabaseUrl, b: DatabaseUrl) -> bool:
    """``same_database``, with SQLite paths resolved on this machine: a target reached through a
    symlink, a relative path or ``..`` is still the live file."""
    if a.engine == b.engine == "sqlite":
        ra, rb = os.path.realpath(a.name), os.path.realpath(b.name)
        if ra == rb:
            return True
        try:
            return os.path.samefile(ra, rb)
        except OSError:
            return False
    return a.same_database(b)


def _pick_set(repo: LocalRepository, backup_id: str | None, at: datetime | None, level: str = "quick",
              settings: Settings | None = None) -> tuple[Manifest, tuple[str, ...]]:
    """(the set to restore, notes for the operator: the newer sets skipped and why)."""
    if backup_id:
        return _pick_named(repo, backup_id), ()
    return _pick_newest(repo, at, level, settings)


def _check_age(m: Manifest, max_age_s: float | None, now: datetime | None) -> None:
    """The newest valid set (no --backup/--at) must not be older than ``[restore] max_age``."""
    if max_age_s is None:
        return
    from erp_backup.core.objectives import human

    age = ((now or datetime.now(UTC)) - m.finished_at).total_seconds()
    if age > max_age_s:
        raise RestoreError(f"the newest valid set {m.id} finished {human(age)} ago, more than [restore] max_age "
                           f"({human(max_age_s)})", hint="pass --allow-old to restore it anyway, or name a set "
                           "with --backup ID (`erp-backup list`)")


def preflight(repo: LocalRepository, req: RestoreRequest, *, live: DatabaseUrl | None,
              target_db: DatabaseUrl | None = None, settings: Settings | None = None,
              max_age_s: float | None = None, now: datetime | None = None) -> RestorePlan:
    """Every check of a restore, before anything is written (and, from the CLI, before Prefect
    starts): something to restore into, the set, the target directory, the target database
    (engine, no password in it, the live-database guard), the jobs; with ``[encryption]`` the
    signatures of the sets it reads and that they can be decrypted here (``settings``)."""
    if req.target_dir is None and not req.target_database and target_db is None:
        raise ConfigError("nothing to restore into", hint="give --target-dir and/or --target-database")
    if req.jobs < 1:
        raise ConfigError(f"--jobs {req.jobs}: must be 1 or more", hint="e.g. --jobs 2")
    at = req.at
    if at is not None:  # a time without a zone (from the UI or the API) is UTC, as on the command line
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if req.verify not in ("quick", "full"):
        raise ConfigError(f"--verify {req.verify!r}: must be quick or full", hint="e.g. --verify full")
    m, notes = _pick_set(repo, req.backup_id, at, req.verify, settings)
    if not req.backup_id and at is None and not req.allow_old:
        _check_age(m, max_age_s, now)
    target_dir = os.path.abspath(req.target_dir) if req.target_dir is not None else None
    if target_dir is not None:
        t = Path(target_dir)
        if t.is_symlink():
            raise RestoreError(f"target {t} is a symbolic link",
                               hint=f"give the directory itself: --target-dir {os.path.realpath(t)}")
        if t.exists() and not t.is_dir():
            raise RestoreError(f"target {t} is a file, not a directory", hint="give a directory for --target-dir")
        if not _target_empty(t) and not req.force:
            raise RestoreError(f"target directory {t} is not empty",
                               hint="restore into a new directory, or pass --force to write over it")
    if target_db is None:
        target_db = resolve_target_database(req.target_database, live)
    if target_db is None and m.database is not None and m.database.engine == "sqlite" and target_dir is not None \
            and not os.path.isabs(m.database.database):  # an absolute one (outside the project) needs a URL
        target_db = DatabaseUrl("sqlite", os.path.join(target_dir, check_rel(m.database.database)))
    database_rel = None
    if target_db is not None and target_db.engine == "sqlite" and target_dir is not None:
        database_rel = _inside(target_dir, target_db.name)
    into_live = False
    if target_db is not None:
        if m.database is None or m.artifact("database") is None:
            raise RestoreError(f"set {m.id} has no database dump", hint="pick another set, or leave out the target "
                               "database")
        if target_db.engine != m.database.engine:
            raise RestoreError(f"set {m.id} holds a {m.database.engine} dump; cannot restore it into "
                               f"{target_db.engine}", hint="give a --target-database of the same engine")
        into_live = live is not None and _same_database(target_db, live)
        if into_live and not req.yes:
            raise RestoreError(f"{target_db.redacted()} is the live database",
                               hint="pass --yes to overwrite the live database, or restore into another one")
    encryption.check_restorable(settings, repo, m, files=target_dir is not None, database=target_db is not None,
                                hash_artifacts=bool(req.backup_id))
    if target_db is None:
        target_text = None
    elif req.target_database:
        target_text = req.target_database  # as given: no password (checked), options kept
    else:
        target_text = dataclasses.replace(target_db, password="").redacted()
    return RestorePlan(set_id=m.id.value, target_dir=target_dir, target_database=target_text,
                       replace=req.force or req.yes, into_live=into_live, jobs=req.jobs,
                       keep_setid=req.keep_setid, database_rel=database_rel, notes=notes)


def _inside(target_dir: str, path: str) -> str | None:
    """``path`` relative to ``target_dir`` if it lies inside it. Both are compared as this machine
    resolves them today (links outside the target followed, the target's own entries not yet
    restored), so a target database spelled through a link to the target is still inside it and is
    written by the file restore's rules (a review found such a file written through a link the set
    had just created)."""
    full, root = os.path.abspath(path), os.path.realpath(target_dir)
    if os.path.realpath(full) == root:
        raise ConfigError(f"the SQLite target database {path} is the target directory",
                          hint="give a file path to --target-database")
    # the nearest ancestor that is the target, however spelled; what lies below it is taken as
    # written (a link planted inside the target is replaced by the file restore, never followed)
    below: list[str] = []
    cur = full
    while True:
        cur, name = os.path.split(cur)
        if not name:
            return None
        below.insert(0, name)
        if os.path.realpath(cur) == root:
            return check_rel("/".join(below))


def manifest_to_restore(repo: LocalRepository, sid: BackupId, settings: Settings | None) -> Manifest:
    """The whole manifest a restore works from. With ``sign = true`` read once and checked against the
    signed ``SHA256SUMS``: a manifest swapped since the preflight (a flow run starts seconds after
    it) is refused, not restored (a review restored a planted archive through one)."""
    if settings is not None and encryption.signs(settings):
        return encryption.signed_manifest(settings, repo, sid)[0]
    return repo.read_manifest(sid)


def execute(repo: LocalRepository, plan: RestorePlan, target_db: DatabaseUrl | None, *,
            settings: Settings | None = None) -> RestoreReport:
    """Restore what ``plan`` says; ``target_db`` is its database with credentials
    (``resolve_target_database``). If it fails, what it created in the target directory is
    removed again, and the error says what it had already replaced there (``--force``).
    ``settings``: its ``[encryption]`` (signatures checked again, encrypted sets decrypted)."""
    m = manifest_to_restore(repo, BackupId(plan.set_id), settings)
    with encryption.restore_decryptor(settings, repo, m, files=plan.target_dir is not None) as decryptor_for:
        return _execute(repo, plan, target_db, m, decryptor_for)


def _execute(repo: LocalRepository, plan: RestorePlan, target_db: DatabaseUrl | None, m: Manifest,
             decryptor_for: DecryptorFor) -> RestoreReport:
    t0 = time.monotonic()
    repo.clean_leftovers()  # scratch directories of killed runs
    rel = plan.database_rel if plan.target_dir is not None and target_db is not None else None
    if plan.target_dir is not None:
        check_set(repo, m, rel)
    safe = SafeTarget(Path(plan.target_dir)) if plan.target_dir is not None else None
    files = None
    tables: dict[str, int] = {}
    try:
        if safe is not None:
            files = restore_files(repo, m, safe, keep_setid=plan.keep_setid, decryptor_for=decryptor_for)
        if target_db is not None:
            tables = restore_database(repo, m, target_db, replace=plan.replace, jobs=plan.jobs, safe=safe, rel=rel,
                                      decryptor_for=decryptor_for)
    except BaseException as e:
        note = safe.rollback() if safe is not None else ""
        if isinstance(e, BackupError):
            if note:
                e.message = f"{e.message}; {note}"
                e.args = (str(e),)
            raise
        if isinstance(e, OSError):
            where = f" ({e.filename})" if e.filename else ""
            raise RestoreError(f"restore failed: {e.strerror or e}{where}" + (f"; {note}" if note else ""),
                               hint="fix the cause (free space, permissions), then restore again") from e
        raise
    finally:
        if safe is not None:
            safe.close()
    notes: list[str] = []
    if target_db is None and m.database is not None:
        notes.append("database not restored: pass --target-database URL")
    counts = files or FilesRestored((), 0, 0, 0, 0)
    if counts.setid_dropped:
        notes.append(f"dropped the setuid/setgid bits of {counts.setid_dropped} path(s) "
                     f"({_examples(counts.setid_examples, counts.setid_dropped)}): "
                     "pass --keep-setid to restore them as recorded")
    return RestoreReport(set_id=m.id.value, target_dir=plan.target_dir or "", sets_read=counts.sets_read,
                         files=counts.files, dirs=counts.dirs, symlinks=counts.symlinks, bytes=counts.bytes,
                         database=plan.target_database if target_db is not None else None, db_tables=tables,
                         duration_s=time.monotonic() - t0, notes=plan.notes + tuple(notes))


def target_database_of(plan: RestorePlan, live: DatabaseUrl | None) -> DatabaseUrl | None:
    """The plan's target database with its credentials (resolved again where the restore runs)."""
    if plan.target_database is None:
        return None
    if plan.target_database.startswith("sqlite:"):
        return parse_database_url(plan.target_database, key="target_database")
    return resolve_target_database(plan.target_database, live)


def restore(repo: LocalRepository, *, target_dir: Path | None, backup_id: str | None = None,
            at: datetime | None = None, target_db: DatabaseUrl | None = None, live_db: DatabaseUrl | None = None,
            force: bool = False, yes: bool = False, jobs: int = 1, keep_setid: bool = False,
            settings: Settings | None = None) -> RestoreReport:
    """Preflight, then restore: the engine without Prefect (tests, the demo's checks)."""
    req = RestoreRequest(target_dir=str(target_dir) if target_dir is not None else None, backup_id=backup_id,
                         at=at, target_database=None, force=force, yes=yes, jobs=jobs, keep_setid=keep_setid)
    plan = preflight(repo, req, live=live_db, target_db=target_db, settings=settings)
    if target_db is None and plan.target_database is not None:  # the SQLite file inside target_dir
        target_db = parse_database_url(plan.target_database, key="target_database")
    return execute(repo, plan, target_db, settings=settings)
