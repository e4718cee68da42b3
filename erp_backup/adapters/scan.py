"""Walk the project tree with include/exclude rules (stat only, no content read)."""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from erp_backup.core.errors import SourceError
from erp_backup.core.models import EntryType, FileEntry


@dataclass
class ScanResult:
    entries: list[FileEntry]
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Excluder:
    """Exclude rules, as users write them in .gitignore-like lists.

    * ``*.pyc``, ``venv``, ``__pycache__`` (no slash): match any path component's name;
    * ``apps/*/tmp`` (slash inside): match the relative path;
    * ``/media`` (leading slash): anchored at the project root.
    """

    def __init__(self, patterns: Iterable[str], extra_paths: Iterable[str] = ()) -> None:
        name_pats, path_pats = [], []
        for p in patterns:
            p = p.strip().rstrip("/")
            if not p:
                continue
            if "/" in p:
                path_pats.append(fnmatch.translate(p.lstrip("/")))
            else:
                name_pats.append(fnmatch.translate(p))
        self._name = re.compile("|".join(name_pats)) if name_pats else None
        self._path = re.compile("|".join(path_pats)) if path_pats else None
        self._exact = set(extra_paths)

    def excluded(self, rel: str, name: str) -> bool:
        if rel in self._exact:
            return True
        if self._name is not None and self._name.match(name):
            return True
        return self._path is not None and bool(self._path.match(rel))


def _entry(rel: str, st: os.stat_result, target: str | None = None) -> FileEntry | None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        typ = EntryType.FILE
    elif stat.S_ISDIR(mode):
        typ = EntryType.DIR
    elif stat.S_ISLNK(mode):
        typ = EntryType.SYMLINK
    else:
        return None
    return FileEntry(
        path=rel,
        type=typ,
        mode=stat.S_IMODE(mode),
        mtime_ns=st.st_mtime_ns,
        size=st.st_size if typ is EntryType.FILE else 0,
        uid=st.st_uid,
        gid=st.st_gid,
        ino=st.st_ino,
        target=target,
    )


def _kind_name(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def scan_tree(root: Path, include: Iterable[str] = (".",), exclude: Iterable[str] = (),
              auto_exclude: Iterable[Path] = ()) -> ScanResult:
    """Every file, directory and symlink under ``root`` selected by the rules.

    ``auto_exclude``: absolute paths left out whatever the rules say (the live
    SQLite database and its companions, the backup directory itself)."""
    root = Path(root)
    try:
        st_root = os.stat(root)
    except FileNotFoundError as e:
        raise SourceError(f"project root {root} does not exist",
                          hint="set [project] root in the config to the Django project directory") from e
    except PermissionError as e:
        raise SourceError(f"project root {root} is not readable: {e.strerror}",
                          hint="run the backup as root or give the backup user read access") from e
    if not stat.S_ISDIR(st_root.st_mode):
        raise SourceError(f"project root {root} is not a directory", hint="set [project] root to a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SourceError(f"project root {root} is not readable",
                          hint="run the backup as root or give the backup user read access")

    root_abs = root.resolve()
    extra: list[str] = []
    for p in auto_exclude:
        try:
            rel = Path(p).resolve().relative_to(root_abs)
        except ValueError:
            continue
        extra.append(rel.as_posix())
    rules = Excluder(exclude, extra)
    result = ScanResult(entries=[])
    seen: set[str] = set()

    def add(rel: str, st: os.stat_result, full: str) -> bool:
        if rel in seen:
            return False
        target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
        e = _entry(rel, st, target)
        if e is None:
            result.skipped.append((rel, f"{_kind_name(st.st_mode)} not backed up"))
            return False
        seen.add(rel)
        result.entries.append(e)
        return e.type is EntryType.DIR

    def walk(rel_dir: str, full_dir: str) -> None:
        try:
            it = os.scandir(full_dir)
        except OSError as e:
            result.skipped.append((rel_dir or ".", f"directory not readable: {e.strerror}"))
            return
        with it:
            children = sorted(it, key=lambda d: d.name)
        for d in children:
            rel = f"{rel_dir}/{d.name}" if rel_dir else d.name
            if rules.excluded(rel, d.name):
                continue
            try:
                st = d.stat(follow_symlinks=False)
            except OSError as e:
                result.skipped.append((rel, f"cannot stat: {e.strerror}"))
                continue
            if add(rel, st, d.path):
                walk(rel, d.path)

    for inc in include:
        inc_rel = PurePosixPath(inc).as_posix().strip("/")
        if inc_rel in ("", "."):
            walk("", str(root))
            continue
        if ".." in PurePosixPath(inc_rel).parts:
            raise SourceError(f"include path {inc!r} leaves the project root",
                              hint="list paths relative to [project] root, without '..'")
        full = root / inc_rel
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            result.skipped.append((inc_rel, "included path does not exist"))
            continue
        # ancestors, so that a restore recreates their modes
        parts = PurePosixPath(inc_rel).parts
        for i in range(1, len(parts)):
            anc = "/".join(parts[:i])
            add(anc, os.lstat(root / anc), str(root / anc))
        if rules.excluded(inc_rel, parts[-1]):
            continue
        if add(inc_rel, st, str(full)):
            walk(inc_rel, str(full))
    result.entries.sort(key=lambda e: e.path)
    return result
