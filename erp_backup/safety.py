"""The safety copy of an in-place restore: exactly what the restore will overwrite or delete.

``<local_dir>/.safety-<UTC time>-<set id>/`` (0700):

* ``files/<rel>``: a copy (0600) of every live file the restore replaces or deletes;
* ``database.raw``: a dump of the live database made with our own dump adapter (0600);
* ``safety.json`` (0600, written last, rewritten as the state moves): the metadata of every saved
  path (type, mode, owner, mtime, link target), the directories whose metadata the restore changes,
  the paths the restore creates, the database facts, and ``state``: ``copying`` (the copy is being
  made: nothing was changed yet), ``restoring`` (the copy is complete and the restore changes the
  live project: if it was killed, this is the only copy of what was there — ``erp-backup restore
  --put-back DIR --yes``), ``completed``, ``rolled-back``, ``rollback-failed`` (put it back),
  ``putting-back`` (a put-back began changing the live project and did not finish: run it again) or
  ``put-back``.

The next successful backup removes the copies in state ``completed``, ``rolled-back``, ``put-back`` or
``copying`` (``release``); it keeps the others and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from erp_backup.core.errors import StorageError
from erp_backup.core.models import DatabaseInfo, EntryType, FileEntry

PREFIX = ".safety-"
RECORD = "safety.json"
FILES = "files"
DUMP = "database.raw"
DONE_STATES = ("completed", "rolled-back", "put-back", "copying")
NEEDS_PUT_BACK = ("restoring", "rollback-failed", "putting-back")
CHUNK = 1 << 20


def entry_to_json(e: FileEntry) -> dict[str, object]:
    return {"path": e.path, "type": e.type.value, "mode": e.mode, "mtime_ns": e.mtime_ns, "size": e.size,
            "uid": e.uid, "gid": e.gid, "target": e.target}


def entry_from_json(d: dict[str, object]) -> FileEntry:
    return FileEntry(path=str(d["path"]), type=EntryType(str(d["type"])), mode=int(d["mode"]),  # type: ignore[call-overload]
                     mtime_ns=int(d["mtime_ns"]), size=int(d.get("size") or 0),  # type: ignore[call-overload]
                     uid=int(d["uid"]), gid=int(d["gid"]),  # type: ignore[call-overload]
                     target=None if d.get("target") is None else str(d["target"]))


@dataclass(frozen=True)
class SafetyCopy:
    """Where a safety copy lives and what it holds (read back with ``load``)."""

    path: Path
    set_id: str
    root: str
    saved: tuple[FileEntry, ...] = ()  # live paths the restore replaces or deletes (files, links, dirs)
    dirs: tuple[FileEntry, ...] = ()  # live directories kept whose metadata the restore sets
    created: tuple[str, ...] = ()  # paths the restore creates (removed on a put-back)
    database: DatabaseInfo | None = None
    database_url: str | None = None  # redacted
    state: str = "copying"

    @property
    def files_dir(self) -> Path:
        return self.path / FILES

    @property
    def dump_path(self) -> Path:
        return self.path / DUMP

    def write(self, state: str | None = None) -> SafetyCopy:
        """Write ``safety.json`` (atomically, 0600) with ``state``; the new value."""
        new = self if state is None else SafetyCopy(self.path, self.set_id, self.root, self.saved, self.dirs,
                                                     self.created, self.database, self.database_url, state)
        doc = {"state": new.state, "set": new.set_id, "root": new.root,
               "updated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "saved": [entry_to_json(e) for e in new.saved], "dirs": [entry_to_json(e) for e in new.dirs],
               "created": list(new.created), "database_url": new.database_url,
               "database": asdict(new.database) if new.database else None}
        tmp = new.path / f".{RECORD}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, new.path / RECORD)
        return new


def create_dir(local_dir: Path, set_id: str, now: datetime) -> Path:
    # microseconds: two in-place restores in one second (run one after the other: the repository
    # lock keeps them from overlapping) must not collide
    path = local_dir / f"{PREFIX}{now:%Y%m%dT%H%M%S.%fZ}-{set_id}"
    try:
        os.mkdir(path, 0o700)
        os.mkdir(path / FILES, 0o700)
    except FileExistsError:
        raise StorageError(f"safety copy {path} already exists",
                           hint="another in-place restore started at the same instant; wait and run again") from None
    except OSError as e:
        raise StorageError(f"cannot create the safety copy {path}: {e.strerror}",
                           hint="check free space and permissions of the backup directory") from e
    return path


def copy_out(root: Path, e: FileEntry, dest_root: Path) -> None:
    """Copy the live regular file ``root/e.path`` (never through a link) to ``dest_root/e.path`` (0600)."""
    src = os.open(root / e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise StorageError(f"{root / e.path} changed type while the safety copy was made",
                               hint="stop whatever writes into the project (the [restore] stop commands), "
                               "then run again")
        dest = dest_root / e.path
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(src, CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(src)


def not_ours(path: Path) -> str | None:
    """Why ``path`` is not a safety copy this user made, or None. The backup directory is untrusted
    input (whoever can write it could plant a ``.safety-*`` directory): a safety copy is only ever
    created by this user with modes 0700/0600, so one that another user owns or may write — its
    directory, its record, its ``files/`` — is not ours, and putting it back would write someone
    else's files (links, set-id bits, owners) into the live project as this user."""
    me = os.geteuid()
    for p in (path, path / RECORD, path / FILES):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as e:
            return f"{p} cannot be examined: {e.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return f"{p} is a symbolic link"
        if st.st_uid != me:
            return f"{p} belongs to uid {st.st_uid}, not to this user (uid {me})"
        if st.st_mode & 0o022:
            return f"{p} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def open_saved(copy: SafetyCopy, rel: str) -> int:
    """A read descriptor of the saved regular file ``files/<rel>``, no path component followed
    through a link."""
    fd = os.open(copy.files_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        parts = rel.split("/")
        for name in parts[:-1]:
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        out = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(out).st_mode):
        os.close(out)
        raise StorageError(f"{copy.files_dir / rel} in the safety copy is not a regular file",
                           hint="the safety copy was changed after it was made: put it back by hand, or restore "
                           "a set instead")
    return out


def load(path: Path) -> SafetyCopy:
    """Read a safety copy's record back; every path in it checked like a set's index paths."""
    from erp_backup.restore import check_rel

    doc = json.loads((path / RECORD).read_text(encoding="utf-8"))
    db = doc.get("database")
    saved = tuple(entry_from_json(d) for d in doc["saved"])
    dirs = tuple(entry_from_json(d) for d in doc["dirs"])
    created = tuple(str(p) for p in doc["created"])
    for rel in (*(e.path for e in saved + dirs), *created):
        check_rel(rel)
    return SafetyCopy(path, doc["set"], doc["root"], saved, dirs, created,
                      DatabaseInfo(**db) if db else None, doc.get("database_url"), doc["state"])


def copies(local_dir: Path) -> list[Path]:
    if not local_dir.is_dir():
        return []
    return sorted(p for p in local_dir.iterdir() if p.name.startswith(PREFIX) and p.is_dir() and not p.is_symlink())


STATES = (*DONE_STATES, *NEEDS_PUT_BACK)


def state_of(path: Path) -> str:
    """The copy's state; ``damaged`` when its record is not one we wrote (never removed automatically)."""
    try:
        doc = json.loads((path / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "copying"  # no record yet: killed before the copy was made, nothing was changed
    state = doc.get("state") if isinstance(doc, dict) else None
    return state if isinstance(state, str) and state in STATES else "damaged"


def release(local_dir: Path) -> tuple[list[str], list[str]]:
    """After a successful backup: remove the safety copies of finished restores. (removed, kept with why)."""
    removed, kept = [], []
    for p in copies(local_dir):
        st = state_of(p)
        if st in DONE_STATES:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        else:
            kept.append(f"safety copy {p} kept (state {st}): it may be the only copy of what an interrupted "
                        f"in-place restore overwrote; `erp-backup restore --put-back {p} --yes` puts it back")
    return removed, kept


def sizes(paths: Iterable[Path]) -> int:
    total = 0
    for p in paths:
        for dirpath, _dirs, files in os.walk(p):
            for n in files:
                try:
                    total += os.lstat(os.path.join(dirpath, n)).st_size
                except OSError:
                    pass
    return total
