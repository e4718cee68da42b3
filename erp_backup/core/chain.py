"""Which sets a backup builds on and which sets a restore needs. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from erp_backup.core.errors import ChainError
from erp_backup.core.models import BackupId, BackupKind, EntryType, FileEntry, Manifest


def holders_of(files: Iterable[FileEntry], own: BackupId) -> tuple[BackupId, ...]:
    """The other sets whose archives hold bytes of this snapshot."""
    return tuple(sorted({BackupId(e.holder) for e in files if e.holder and e.holder != own.value}))


def parent_for(kind: BackupKind, committed: Sequence[Manifest]) -> Manifest | None:
    """The set a new backup of ``kind`` compares against (``committed``: headers, any order).

    full -> none; incremental -> the newest set of any kind; differential -> the newest full."""
    if kind is BackupKind.FULL:
        return None
    ordered = sorted(committed, key=lambda m: m.id)
    if kind is BackupKind.DIFFERENTIAL:
        ordered = [m for m in ordered if m.kind is BackupKind.FULL]
    return ordered[-1] if ordered else None


def base_of(parent: Manifest) -> BackupId:
    return parent.id if parent.kind is BackupKind.FULL else (parent.base or parent.id)


def missing_dependencies(target: Manifest, available: Iterable[BackupId]) -> list[BackupId]:
    have = set(available)
    return [d for d in target.depends_on if d not in have]


def select_for_time(committed: Sequence[Manifest], at: datetime,
                    invalid: Iterable[BackupId] = ()) -> Manifest:
    """The newest set finished at or before ``at`` whose whole chain is present and not known bad."""
    bad = set(invalid)
    ids = {m.id for m in committed}
    candidates = sorted((m for m in committed if m.finished_at <= at), key=lambda m: m.finished_at)
    for m in reversed(candidates):
        if m.id in bad or any(d in bad or d not in ids for d in m.depends_on):
            continue
        return m
    if not committed:
        raise ChainError("there is no committed backup set", hint="run `erp-backup backup full` first")
    oldest = min(m.finished_at for m in committed)
    raise ChainError(
        f"no restorable backup set finished at or before {at:%Y-%m-%dT%H:%M:%SZ}",
        hint=f"the oldest set finished at {oldest:%Y-%m-%dT%H:%M:%SZ}; pick a later time (`erp-backup list`)",
    )


def files_by_holder(index: Iterable[FileEntry]) -> Mapping[str, list[FileEntry]]:
    """Group the regular files of a snapshot index by the set that holds their bytes."""
    groups: dict[str, list[FileEntry]] = defaultdict(list)
    for e in index:
        if e.type is EntryType.FILE:
            if not e.holder:
                raise ChainError(f"snapshot index entry {e.path!r} names no holding set",
                                 hint="the manifest is damaged: restore from another set")
            groups[e.holder].append(e)
    return groups
