"""What a new backup set must archive, given the reference snapshot. Pure.

The reference is the parent's snapshot index (the previous set for an
incremental, the last full for a differential, nothing for a full). A file is
archived again when its stat data differ (size, mtime_ns, inode, mode, owner);
unchanged files are carried over, pointing at the set that already holds their
bytes. Content is hashed only for what is archived.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from erp_backup.core.errors import IntegrityError
from erp_backup.core.models import EntryType, FileEntry


@dataclass(frozen=True)
class ChangePlan:
    archive: tuple[FileEntry, ...]  # new or changed entries (files, dirs, symlinks), sorted by path
    carried: tuple[FileEntry, ...]  # unchanged files/dirs/links, holder and sha256 from the reference
    deleted: tuple[str, ...]  # paths in the reference that are gone

    @property
    def changed_files(self) -> int:
        return sum(1 for e in self.archive if e.type is EntryType.FILE)

    @property
    def changed_bytes(self) -> int:
        return sum(e.size for e in self.archive if e.type is EntryType.FILE)

    @property
    def scanned(self) -> int:
        return len(self.archive) + len(self.carried)


def plan_changes(current: Iterable[FileEntry], reference: Mapping[str, FileEntry] | None) -> ChangePlan:
    ref = reference or {}
    archive: list[FileEntry] = []
    carried: list[FileEntry] = []
    seen: set[str] = set()
    for entry in current:
        seen.add(entry.path)
        old = ref.get(entry.path)
        if old is not None and old.same_stat(entry) and (entry.type is not EntryType.FILE or old.holder):
            carried.append(old)  # same stat data: the reference entry (with its sha256 and holder) stands
        else:
            archive.append(entry)
    deleted = sorted(p for p in ref if p not in seen)
    archive.sort(key=lambda e: e.path)
    carried.sort(key=lambda e: e.path)
    return ChangePlan(tuple(archive), tuple(carried), tuple(deleted))


def merge_index(archived: Iterable[FileEntry], carried: Iterable[FileEntry]) -> tuple[FileEntry, ...]:
    """The new snapshot index: what this set archived plus what it carried, sorted by path."""
    return tuple(sorted([*archived, *carried], key=lambda e: e.path))


ARCHIVE = "archive"
CARRY = "carry"
DELETED = "deleted"

R = TypeVar("R")
K = TypeVar("K")


class UnsortedIndex(IntegrityError):
    """A reference index (or a scan) that is not strictly sorted by path: the streaming merge cannot
    use it (the caller falls back to ``plan_changes``, which takes any order)."""


def same_stat_carry(current: FileEntry, old: FileEntry) -> FileEntry | None:
    """``plan_changes``' rule: the reference entry stands when its stat data are the same (and a
    file's names the set holding its bytes); None: archive ``current`` again."""
    if old.same_stat(current) and (current.type is not EntryType.FILE or old.holder):
        return old
    return None


def stream_changes(current: Iterable[FileEntry], reference: Iterable[R], ref_path: Callable[[R], str],
                   carry: Callable[[FileEntry, R], K | None]) -> Iterator[tuple[str, FileEntry | K | str]]:
    """``plan_changes`` as a merge of two streams sorted by path, holding neither: yields
    ``(ARCHIVE, entry)``, ``(CARRY, what carry made of the reference)`` and ``(DELETED, path)``, in
    path order. ``reference`` items are whatever the caller reads (index lines, entries);
    ``ref_path`` names their path, ``carry`` returns what stands for an unchanged entry, or None
    when the current one must be archived again. Raises ``UnsortedIndex`` on a stream out of order
    (or with a path twice): nothing it yielded may then be used."""
    refs = iter(reference)
    end = object()
    prev_ref = ""
    first_ref = True

    def next_ref() -> tuple[object, str]:
        nonlocal prev_ref, first_ref
        r = next(refs, end)
        if r is end:
            return end, ""
        p = ref_path(r)  # type: ignore[arg-type]
        if not isinstance(p, str) or (not first_ref and p <= prev_ref):
            raise UnsortedIndex("the reference index is not sorted by path",
                                hint="nothing to do: the plan is made from the whole index instead")
        first_ref = False
        prev_ref = p
        return r, p

    r, rp = next_ref()
    prev = None
    for e in current:
        path = e.path
        if prev is not None and path <= prev:
            raise UnsortedIndex("the scan is not sorted by path", hint="report this as a bug")
        prev = path
        while r is not end and rp < path:
            yield DELETED, rp
            r, rp = next_ref()
        if r is not end and rp == path:
            kept = carry(e, r)  # type: ignore[arg-type]
            r, rp = next_ref()
            if kept is not None:
                yield CARRY, kept
                continue
        yield ARCHIVE, e
    while r is not end:
        yield DELETED, rp
        r, rp = next_ref()
