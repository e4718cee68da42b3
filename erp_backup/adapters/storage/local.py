"""The local backup repository: one directory per committed set.

``<root>/<id>.partial/`` while a set is built; renamed to ``<root>/<id>/``
when complete. The rename is the commit: readers ignore ``.partial``.
Directories 0700, files 0600.

Scratch directories of runs (a restore's spool, a verification's temporary files) live in the root
too, named after the process that owns them: ``.scratch-<purpose>-<pid>-<random>`` (``scratch()``,
flock'ed while in use), and those of the current restore/verify code, ``.restore-<set>-<pid>`` and
``erp-backup-verify-[<pid>-]<random>``. ``clean_leftovers()`` removes the ones whose owner is gone
(killed); it never removes one a live process owns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from erp_backup.core import chain
from erp_backup.core import manifest as mf
from erp_backup.core.chain import Damaged
from erp_backup.core.errors import BackupError, IntegrityError, LockError, StorageError
from erp_backup.core.models import BackupId, Manifest

DIR_MODE = 0o700
FILE_MODE = 0o600
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
PARTIAL = ".partial"
LOCK = ".lock"
SCRATCH = ".scratch-"
# scratch directories in the root: (pattern, locked): the pid group names the owner
_SCRATCH_NAMES = (
    (re.compile(r"\.scratch-[a-z]+-(?P<pid>[0-9]+)-[A-Za-z0-9_]+"), True),  # scratch()
    (re.compile(r"\.restore-.+-(?P<pid>[0-9]+)"), False),  # restore_database()
    (re.compile(r"erp-backup-verify-(?:(?P<pid>[0-9]+)-)?[A-Za-z0-9_]+"), False),  # verify's temp dir
)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_stream(path: Path, pieces: Iterable[str]) -> tuple[int, str]:
    """Write text pieces UTF-8 encoded to a new 0600 file, fsync'd; return (size, sha256)."""
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20, closefd=False) as f:
            for piece in pieces:
                data = piece.encode("utf-8")
                h.update(data)
                size += len(data)
                f.write(data)
        os.fsync(fd)
    except OSError as e:
        raise StorageError(f"writing {path} failed: {e.strerror}",
                           hint="free space in the backup directory, then run the backup again") from e
    finally:
        os.close(fd)
    return size, h.hexdigest()


MAX_SUMS = 1 << 20  # a SHA256SUMS larger than this is not one this tool wrote
# set directory -> (stat of manifest.json and SHA256SUMS, what ``inspect`` found): see there
RACY_NS = 200_000_000
_INSPECTED: dict[Path, tuple[object, Manifest | Damaged]] = {}


@dataclass(frozen=True)
class RepoScan:
    """The sets of a repository as ``LocalRepository.scan`` found them, each list oldest first."""

    committed: tuple[Manifest, ...]  # headers (no snapshot index) that passed the cheap checks
    damaged: tuple[Damaged, ...]

    @property
    def committed_ids(self) -> list[BackupId]:
        return [m.id for m in self.committed]

    @property
    def ids(self) -> list[BackupId]:
        """Every set directory, intact or damaged, oldest first."""
        return sorted([*self.committed_ids, *(d.id for d in self.damaged)])


def damaged_error(d: Damaged) -> IntegrityError:
    return IntegrityError(f"backup set {d.id} is damaged: {d.reason}",
                          hint=f"do not use it: `erp-backup verify {d.id}` says more; restore from another set")


def _read_head(path: Path) -> tuple[bytes, bool, str]:
    """(header bytes, whole, sha256 of the file) in one read: the header is the text before the
    snapshot index (``whole`` False), or the whole file when it has no index marker."""
    h = hashlib.sha256()
    marker = mf.FILES_MARKER.encode()
    head: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            h.update(line)
            if line.startswith(marker):
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                return b"".join(head), False, h.hexdigest()
            head.append(line)
    return b"".join(head), True, h.hexdigest()


class LocalRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ---------------------------------------------------------------- setup & locking
    def ensure(self) -> None:
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(self.root, DIR_MODE)
        except OSError as e:
            raise StorageError(f"cannot create backup directory {self.root}: {e.strerror}",
                               hint="create it as root (mode 0700) or set [storage] local_dir") from e
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"backup directory {self.root} is not writable",
                               hint="run as root or fix the directory's owner")

    @contextlib.contextmanager
    def lock(self, wait_s: float = 0.0, purpose: str = "backup") -> Iterator[None]:
        """Exclusive lock on the repository; waits up to ``wait_s`` seconds."""
        self.ensure()
        path = self.root / LOCK
        # the backup directory is untrusted: a planted link (or hard link) there must not make us
        # truncate and write whatever it points to
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
        except OSError as e:
            raise StorageError(f"cannot open the lock file {path}: {e.strerror}"
                               + (" (it is a symbolic link)" if e.errno == errno.ELOOP else ""),
                               hint="remove it (erp-backup recreates it) and find out who put it there") from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise StorageError(f"the lock file {path} is not a plain file of its own "
                               f"({'a hard link' if stat.S_ISREG(st.st_mode) else 'a special file'})",
                               hint="remove it (erp-backup recreates it) and find out who put it there")
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
                        raise LockError(
                            f"another erp-backup run holds the lock on {self.root} ({holder})",
                            hint="wait for it to finish, or raise [backup] lock_wait_s; "
                            "if no erp-backup process is running, the lock frees itself",
                        ) from None
                    time.sleep(0.5)
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                               "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
            with contextlib.suppress(OSError):  # who holds it, for messages; a full disk must not stop a prune
                os.ftruncate(fd, 0)
                os.pwrite(fd, info.encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing releases the flock

    def busy(self) -> bool:
        """True while another process holds the repository lock (a backup is running). Creates
        nothing: a repository without a lock file has no running backup."""
        try:
            fd = os.open(self.root / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the probe's lock, if it got it
        return False

    # ---------------------------------------------------------------- listing
    def list_ids(self) -> list[BackupId]:
        """Sets with a manifest, oldest first (intact or not: see ``scan``). ``.partial`` is ignored."""
        return sorted(i for i in self._set_names() if (self.root / i.value / MANIFEST).is_file())

    def _set_names(self) -> list[BackupId]:
        if not self.root.is_dir():
            return []
        try:
            names = os.listdir(self.root)
        except OSError as e:
            raise StorageError(f"cannot list {self.root}: {e.strerror}", hint="run as root") from e
        return sorted(BackupId(n) for n in names if BackupId.is_valid(n))

    def scan(self) -> RepoScan:
        """Every set directory, checked cheaply: its manifest must match ``SHA256SUMS`` (one read
        and hash of manifest.json), parse, describe this directory and hang together. What does
        not is ``damaged`` with its reason: listed as such, never built on, never restored."""
        committed: list[Manifest] = []
        damaged: list[Damaged] = []
        names = self._set_names()
        present = {self.set_dir(i) for i in names}
        for gone in [p for p in _INSPECTED if p.parent == self.root and p not in present]:
            _INSPECTED.pop(gone, None)
        workers = min(len(names), os.cpu_count() or 1)
        if workers > 1:  # hashing releases the GIL: manifests are hashed on every core
            with ThreadPoolExecutor(workers) as pool:
                looked = list(pool.map(self.inspect, names))
        else:
            looked = [self.inspect(i) for i in names]
        for found in looked:
            if found is None:
                continue  # removed meanwhile (a prune)
            if isinstance(found, Damaged):
                damaged.append(found)
            else:
                committed.append(found)
        return RepoScan(tuple(committed), tuple(damaged))

    def inspect(self, backup_id: BackupId) -> Manifest | Damaged | None:
        """One set, checked as ``scan`` checks it: its header, or why it is damaged; None if there
        is no such set directory. Remembered for the life of the process while neither manifest.json
        nor SHA256SUMS changes (same inode, size, mtime and ctime): a backup run asks several times."""
        d = self.set_dir(backup_id)
        if not os.path.lexists(d):
            return None
        if not d.is_dir():
            return Damaged(backup_id, "it is not a directory")
        now_ns = time.time_ns()
        try:
            stats = (os.stat(d / MANIFEST), os.stat(d / SUMS))
        except OSError:
            return self._inspect(backup_id, d)  # something is missing: quick to tell
        key = tuple((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in stats)
        cached = _INSPECTED.get(d)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = self._inspect(backup_id, d)
        # file times tick coarsely (a few ms): a file changed just before it was looked at could change
        # again with the same times, so only what had been still for a while is remembered ("racy git")
        if now_ns - max(st.st_ctime_ns for st in stats) > RACY_NS:
            _INSPECTED[d] = (key, found)
        return found

    def _inspect(self, backup_id: BackupId, d: Path) -> Manifest | Damaged:
        try:
            with open(d / SUMS, "rb") as f:
                raw = f.read(MAX_SUMS + 1)
        except FileNotFoundError:
            return Damaged(backup_id, f"{SUMS} is missing")
        except OSError as e:
            return Damaged(backup_id, f"cannot read {SUMS}: {e.strerror}")
        if len(raw) > MAX_SUMS:
            return Damaged(backup_id, f"{SUMS} is too large to be a checksum list")
        try:
            sums = mf.parse_sha256sums(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return Damaged(backup_id, f"{SUMS} is not text")
        except IntegrityError as e:
            return Damaged(backup_id, f"{SUMS}: {e.message}")
        expected = sums.pop(MANIFEST, None)
        if expected is None:
            return Damaged(backup_id, f"{SUMS} does not list {MANIFEST}")
        try:
            head, whole, digest = _read_head(d / MANIFEST)
        except FileNotFoundError:
            return Damaged(backup_id, f"{MANIFEST} is missing")
        except OSError as e:
            return Damaged(backup_id, f"cannot read {MANIFEST}: {e.strerror}")
        if digest != expected:
            return Damaged(backup_id, f"{MANIFEST} does not match its checksum in {SUMS}")
        where = f"{backup_id}/{MANIFEST}"
        try:
            m = mf.loads(mf.header_text(head.decode("utf-8")) if not whole else head, where=where)
        except UnicodeDecodeError:
            return Damaged(backup_id, f"{MANIFEST} is not UTF-8 text")
        except IntegrityError as e:
            return Damaged(backup_id, e.message.removeprefix(f"{backup_id}/"))
        except BackupError as e:  # a value the model refuses (e.g. a parent that is not a set id)
            return Damaged(backup_id, f"{MANIFEST}: {e.message}")
        problem = chain.header_problem(m, backup_id.value)
        if problem is not None:
            return Damaged(backup_id, problem)
        if sums != {a.name: a.sha256 for a in m.artifacts}:
            return Damaged(backup_id, f"{SUMS} and {MANIFEST} disagree on the artifacts' checksums")
        return dataclasses.replace(m, files=()) if whole else m

    def partials(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.endswith(PARTIAL) and p.is_dir())

    def set_dir(self, backup_id: BackupId | str) -> Path:
        return self.root / str(backup_id)

    def exists(self, backup_id: BackupId) -> bool:
        return (self.set_dir(backup_id) / MANIFEST).is_file()

    def _require(self, backup_id: BackupId) -> Path:
        d = self.set_dir(backup_id)
        if not (d / MANIFEST).is_file():
            raise StorageError(f"backup set {backup_id} not found in {self.root}",
                               hint="see `erp-backup list` for the committed sets")
        return d

    def read_manifest(self, backup_id: BackupId) -> Manifest:
        """The whole manifest, as it is on disk (not checked against ``SHA256SUMS``: ``verify``
        reports that itself; everything else picks sets through ``scan``/``read_header``)."""
        d = self._require(backup_id)
        where = f"{backup_id}/{MANIFEST}"
        try:
            try:
                with open(d / MANIFEST, encoding="utf-8", newline="") as f:
                    m = mf.load_lines(f, where=where)  # streaming: memory follows the entries only
            except (IntegrityError, UnicodeDecodeError):
                m = mf.loads((d / MANIFEST).read_bytes(), where=where)  # any other valid JSON layout
        except OSError as e:
            raise StorageError(f"cannot read {d / MANIFEST}: {e.strerror}", hint="run as root") from e
        if m.id != backup_id:
            raise IntegrityError(f"{backup_id}/{MANIFEST} describes set {m.id}",
                                 hint="the directory was renamed or damaged; verify it")
        return m

    def read_header(self, backup_id: BackupId) -> Manifest:
        """The manifest without its snapshot index, checked like ``scan`` checks it: cheap, for
        listings and chains. A damaged set raises IntegrityError saying why."""
        found = self.inspect(backup_id)
        if found is None:
            raise StorageError(f"backup set {backup_id} not found in {self.root}",
                               hint="see `erp-backup list` for the committed sets")
        if isinstance(found, Damaged):
            raise damaged_error(found)
        return found

    def headers(self) -> list[Manifest]:
        """The intact sets' headers, oldest first (damaged sets left out: see ``scan``)."""
        return list(self.scan().committed)

    # ---------------------------------------------------------------- building a set
    def begin(self, backup_id: BackupId) -> Path:
        if self.set_dir(backup_id).exists():
            raise StorageError(f"backup set {backup_id} already exists", hint="wait a second and run again")
        partial = self.root / f"{backup_id}{PARTIAL}"
        if partial.exists():
            shutil.rmtree(partial)
        try:
            partial.mkdir(mode=DIR_MODE)
        except OSError as e:
            raise StorageError(f"cannot create {partial}: {e.strerror}",
                               hint="check free space and permissions of the backup directory") from e
        return partial

    def commit(self, backup_id: BackupId) -> Path:
        partial = self.root / f"{backup_id}{PARTIAL}"
        final = self.set_dir(backup_id)
        if not (partial / MANIFEST).is_file():
            raise StorageError(f"{partial} has no manifest; refusing to commit", hint="run the backup again")
        _fsync_dir(partial)
        os.rename(partial, final)
        _fsync_dir(self.root)
        return final

    def discard(self, backup_id: BackupId) -> None:
        partial = self.root / f"{backup_id}{PARTIAL}"
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)

    def clean_partials(self) -> list[str]:
        """Remove leftovers of crashed runs (``.partial`` sets, scratch directories of dead
        processes). Call only while holding the lock."""
        removed = []
        for p in self.partials():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        return removed + self.clean_leftovers()

    # ---------------------------------------------------------------- scratch directories
    @contextlib.contextmanager
    def scratch(self, purpose: str) -> Iterator[Path]:
        """A private (0700) scratch directory in the root for ``purpose`` (``restore``, ``verify``),
        removed on exit. Named after this process and flock'ed while in use, so that
        ``clean_leftovers()`` removes it only once its owner is gone, however it died."""
        if not re.fullmatch(r"[a-z]+", purpose):
            raise ValueError(f"bad scratch purpose {purpose!r}")
        try:
            path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH}{purpose}-{os.getpid()}-", dir=self.root))
        except OSError as e:
            raise StorageError(f"cannot create a scratch directory in {self.root}: {e.strerror}",
                               hint="check free space and permissions of the backup directory") from e
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def clean_leftovers(self) -> list[str]:
        """Remove the scratch directories in the root whose owner process is gone (see the module
        docstring for the names); return their names. Safe while other runs go on: a directory is
        kept while its owner lives (or a child holding its lock), and a legacy verification
        directory without a pid in its name only once the machine has rebooted since."""
        if not self.root.is_dir():
            return []
        removed = []
        for name in sorted(os.listdir(self.root)):
            for pattern, locked in _SCRATCH_NAMES:
                m = pattern.fullmatch(name)
                if m is None:
                    continue
                path = self.root / name
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    break
                if not os.path.isdir(path) or os.path.islink(path):
                    break
                pid = m.group("pid")
                gone = _owner_gone(int(pid), st.st_mtime) if pid else st.st_mtime < _boot_time()
                if gone and _remove_unlocked(path, locked):
                    removed.append(name)
                break
        return removed

    def delete(self, backup_id: BackupId) -> None:
        """Remove a committed set: first un-commit it (rename), then delete."""
        d = self._require(backup_id)
        doomed = self.root / f"{backup_id}.deleting{PARTIAL}"
        os.rename(d, doomed)
        _fsync_dir(self.root)
        shutil.rmtree(doomed)

# ---------------------------------------------------------------- owners of scratch directories


def _boot_time() -> float:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0  # unknown: nothing is older than boot


def _owner_gone(pid: int, modified: float) -> bool:
    """True if process ``pid`` cannot be the one that made a directory last modified at ``modified``:
    it does not exist, is a zombie, or started after that (its pid was reused)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False  # alive but unreadable: keep
    if fields[0] in ("Z", "X"):
        return True
    started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started > modified + 2.0  # 2 s: the resolution of btime and of the start time


def _remove_unlocked(path: Path, locked: bool) -> bool:
    """Remove ``path``; for a ``scratch()`` directory only if no process holds its lock."""
    if not locked:
        shutil.rmtree(path, ignore_errors=True)
        return not path.exists()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return not path.exists()
    finally:
        os.close(fd)
