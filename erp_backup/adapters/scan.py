"""Walk the project tree with include/exclude rules (stat only, no content read)."""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from erp_backup.core.errors import SourceError
from erp_backup.core.models import _SHARED, EntryType, FileEntry, shared_int


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


_TYPE_OF = {stat.S_IFREG: EntryType.FILE, stat.S_IFDIR: EntryType.DIR, stat.S_IFLNK: EntryType.SYMLINK}
_FILE = EntryType.FILE


def _entry(rel: str, st: os.stat_result, target: str | None = None) -> FileEntry | None:
    # runs once per path of the tree (200,000 on a big one): plain positional arguments, and the
    # shared ints looked up inline (``shared_int`` only for a value not seen yet)
    mode = st.st_mode
    typ = _TYPE_OF.get(mode & 0o170000)
    if typ is None:
        return None
    perm, uid, gid = mode & 0o7777, st.st_uid, st.st_gid
    sh = _SHARED
    return FileEntry(rel, typ, sh[perm] if perm in sh else shared_int(perm), st.st_mtime_ns,
                     st.st_size if typ is _FILE else 0, sh[uid] if uid in sh else shared_int(uid),
                     sh[gid] if gid in sh else shared_int(gid), st.st_ino, None, None, target)


def _first(t: tuple[str, str, os.stat_result, str]) -> str:
    return t[0]


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
    """Every file, directory and symlink under ``root`` selected by the rules, sorted by path.

    ``auto_exclude``: absolute paths left out whatever the rules say (the live
    SQLite database and its companions, the backup directory itself)."""
    result = ScanResult(entries=[])
    result.entries.extend(iter_tree(root, include, exclude, auto_exclude, result.skipped))
    result.entries.sort(key=lambda e: e.path)
    return result


def iter_tree(root: Path, include: Iterable[str] = (".",), exclude: Iterable[str] = (),
              auto_exclude: Iterable[Path] = (), skipped: list[tuple[str, str]] | None = None
              ) -> Iterator[FileEntry]:
    """``scan_tree``'s entries one at a time, as they are found (in path order for the whole tree,
    ``include = ["."]``; include by include otherwise: ``iter_sorted`` sorts those): a
    consumer that keeps only some of them (the change plan keeps the parent's entry for an
    unchanged file) never holds the whole scan. What is skipped, and why, goes to ``skipped``.
    The root is checked here, before the walk starts."""
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
    return _walk_all(root, list(include), rules, [] if skipped is None else skipped)


def iter_sorted(root: Path, include: Iterable[str] = (".",), exclude: Iterable[str] = (),
                auto_exclude: Iterable[Path] = (), skipped: list[tuple[str, str]] | None = None
                ) -> Iterator[FileEntry]:
    """``iter_tree``'s entries sorted by path (what ``scan_tree`` lists). The whole tree streams in
    that order as it is walked; a list of include paths is collected and sorted first."""
    found = iter_tree(root, include, exclude, auto_exclude, skipped)
    if _whole(include):
        return found
    return iter(sorted(found, key=_path))


def _path(e: FileEntry) -> str:
    return e.path


def _whole(include: Iterable[str]) -> bool:
    return [PurePosixPath(i).as_posix().strip("/") for i in include] in ([""], ["."])


def _walk_all(root: Path, include: list[str], rules: Excluder, skipped: list[tuple[str, str]]
              ) -> Iterator[FileEntry]:
    # overlapping include paths could find a path twice; the whole tree (the default) cannot.
    # ``walked``: directories already walked (an include's ancestor is listed, not walked: a later
    # include that covers it still walks it)
    whole = _whole(include)
    seen: set[str] | None = None if whole else set()
    walked: set[str] | None = None if whole else set()

    def entry(rel: str, st: os.stat_result, full: str) -> FileEntry | None:
        if seen is not None:
            if rel in seen:
                return None
            seen.add(rel)
        target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
        e = _entry(rel, st, target)
        if e is None:
            skipped.append((rel, f"{_kind_name(st.st_mode)} not backed up"))
        return e

    def listing(rel_dir: str, full_dir: str) -> list[tuple[str, str, os.stat_result, str]]:
        try:
            it = os.scandir(full_dir)
        except OSError as err:
            skipped.append((rel_dir or ".", f"directory not readable: {err.strerror}"))
            return []
        # In path order (what a sorted index holds), not plain depth-first order: a directory's
        # subtree sorts as "name/", after a sibling "name.py" or "name-x" (``.`` and ``-`` sort
        # before ``/``). So each directory is listed twice, as "name" (its own entry) and as
        # "name/" (its subtree), and the keys are sorted together.
        keyed: list[tuple[str, str, os.stat_result, str]] = []
        excluded = rules.excluded
        with it:
            for d in it:
                name = d.name
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if excluded(rel, name):
                    continue
                try:
                    st = d.stat(follow_symlinks=False)
                except OSError as err:
                    skipped.append((rel, f"cannot stat: {err.strerror}"))
                    continue
                keyed.append((name, rel, st, d.path))
                if stat.S_ISDIR(st.st_mode):
                    keyed.append((name + "/", rel, st, d.path))
        keyed.sort(key=_first)
        return keyed

    def walk(rel_dir: str, full_dir: str) -> Iterator[FileEntry]:
        # a stack of listings, not nested generators: each entry is yielded once, not once a level
        stack = [iter(listing(rel_dir, full_dir))]
        while stack:
            for key, rel, st, full in stack[-1]:
                if key[-1] != "/":
                    found = entry(rel, st, full)
                    if found is not None:
                        yield found
                elif walked is None or rel not in walked:
                    if walked is not None:
                        walked.add(rel)
                    stack.append(iter(listing(rel, full)))
                    break
            else:
                stack.pop()

    def visit(rel: str, st: os.stat_result, full: str) -> Iterator[FileEntry]:
        found = entry(rel, st, full)
        if found is not None:
            yield found
        if stat.S_ISDIR(st.st_mode) and (walked is None or rel not in walked):
            if walked is not None:
                walked.add(rel)
            yield from walk(rel, full)

    for inc in include:
        inc_rel = PurePosixPath(inc).as_posix().strip("/")
        if inc_rel in ("", "."):
            if walked is None or "" not in walked:
                if walked is not None:
                    walked.add("")
                yield from walk("", str(root))
            continue
        if ".." in PurePosixPath(inc_rel).parts:
            raise SourceError(f"include path {inc!r} leaves the project root",
                              hint="list paths relative to [project] root, without '..'")
        full = root / inc_rel
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            skipped.append((inc_rel, "included path does not exist"))
            continue
        # ancestors, so that a restore recreates their modes
        parts = PurePosixPath(inc_rel).parts
        for i in range(1, len(parts)):
            anc = "/".join(parts[:i])
            a = entry(anc, os.lstat(root / anc), str(root / anc))
            if a is not None:
                yield a
        if rules.excluded(inc_rel, parts[-1]):
            continue
        yield from visit(inc_rel, st, str(full))
