"""What a new backup set must archive, given the reference snapshot. Pure.

The reference is the parent's snapshot index (the previous set for an
incremental, the last full for a differential, nothing for a full). A file is
archived again when its stat data differ (size, mtime_ns, inode, mode, owner);
unchanged files are carried over, pointing at the set that already holds their
bytes. Content is hashed only for what is archived.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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
