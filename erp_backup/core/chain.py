"""Which sets a backup builds on and which sets a restore needs. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from erp_backup.core.errors import ChainError
from erp_backup.core.models import BackupId, BackupKind, EntryType, FileEntry, Manifest


def holders_of(files: Iterable[FileEntry], own: BackupId) -> tuple[BackupId, ...]:
    """The other sets whose archives hold bytes of this snapshot."""
    holders = {e.holder for e in files} - {None, "", own.value}  # few distinct values: parse those only
    return tuple(sorted(BackupId(h) for h in holders if h))


@dataclass(frozen=True)
class Damaged:
    """A set directory whose manifest cannot be trusted (unreadable, not matching ``SHA256SUMS``,
    describing another set...): it is never listed as committed, built on or restored."""

    id: BackupId
    reason: str


@dataclass(frozen=True)
class Skipped:
    """A set a choice passed over, and why (for the operator: logged, reported, in errors)."""

    id: BackupId
    reason: str

    def __str__(self) -> str:
        return f"{self.id} {self.reason}"


@dataclass(frozen=True)
class Selection:
    """The set a restore uses, and the newer sets it passed over (newest first)."""

    chosen: Manifest
    skipped: tuple[Skipped, ...] = ()


def header_problem(m: Manifest, name: str) -> str | None:
    """What makes a manifest header that parses inconsistent with the set directory ``name`` and
    with itself, or None. Dependencies must be older than the set: chains have no cycles."""
    if m.id.value != name:
        return f"its manifest describes set {m.id}, not {name}"
    if m.kind is not m.id.kind or m.is_monthly != m.id.value.endswith("-monthly"):
        return f"its manifest says kind {m.kind.value}{' (monthly)' if m.is_monthly else ''}, its id says otherwise"
    if m.kind is BackupKind.FULL and (m.parent is not None or m.depends_on):
        return "its manifest says it is a full set but names a parent or dependencies"
    if m.kind is not BackupKind.FULL and m.parent is None:
        return f"its manifest says it is an {m.kind.value} set but names no parent"
    for other in (m.parent, *m.depends_on):
        if other is not None and other >= m.id:
            return f"its manifest names {other} as a set it builds on, which is not older"
    if m.finished_at < m.started_at:
        return "its manifest says it finished before it started"
    return None


def chain_problem(m: Manifest, committed: Iterable[BackupId], damaged: Iterable[Damaged] = (),
                  invalid: Mapping[BackupId, str] | None = None) -> str | None:
    """Why a restore of ``m`` cannot read every set it needs, or None: ``committed`` are the
    intact sets, ``damaged`` the sets with untrustworthy manifests, ``invalid`` sets known to fail
    verification (id -> first problem)."""
    bad = dict(invalid or {})
    if m.id in bad:
        return f"failed verification: {bad[m.id]}"
    have = set(committed)
    why_damaged = {d.id: d.reason for d in damaged}
    for dep in m.depends_on:
        if dep in bad:
            return f"needs {dep}, which failed verification: {bad[dep]}"
        if dep in why_damaged:
            return f"needs {dep}, which is damaged: {why_damaged[dep]}"
        if dep not in have:
            return f"needs {dep}, which is missing"
    return None


def parent_for(kind: BackupKind, committed: Sequence[Manifest], damaged: Iterable[Damaged] = ()) -> Manifest | None:
    """The set a new backup of ``kind`` compares against (see ``parent_selection``)."""
    return parent_selection(kind, committed, damaged)[0]


def parent_selection(kind: BackupKind, committed: Sequence[Manifest],
                     damaged: Iterable[Damaged] = ()) -> tuple[Manifest | None, tuple[Skipped, ...]]:
    """The set a new backup of ``kind`` compares against (``committed``: intact headers, any order),
    and the newer sets passed over because their own chain is broken.

    full -> none; incremental -> the newest set of any kind; differential -> the newest full.
    A set that needs a missing or damaged set is never built on: the new set would need it too.
    Damaged sets are not in ``committed``, so they are never chosen; they are named if newer."""
    if kind is BackupKind.FULL:
        return None, ()
    ordered = sorted(committed, key=lambda m: m.id)
    if kind is BackupKind.DIFFERENTIAL:
        ordered = [m for m in ordered if m.kind is BackupKind.FULL]
    dmg = [d for d in damaged if kind is not BackupKind.DIFFERENTIAL or d.id.kind is BackupKind.FULL]
    ids = [m.id for m in committed]
    skipped: list[Skipped] = []
    chosen = None
    for m in reversed(ordered):
        problem = chain_problem(m, ids, dmg)
        if problem is None:
            chosen = m
            break
        skipped.append(Skipped(m.id, problem))
    skipped += [Skipped(d.id, f"is damaged: {d.reason}") for d in dmg if chosen is None or d.id > chosen.id]
    return chosen, tuple(sorted(skipped, key=lambda s: s.id, reverse=True))


def base_of(parent: Manifest) -> BackupId:
    return parent.id if parent.kind is BackupKind.FULL else (parent.base or parent.id)


def _when(x: Manifest | Damaged) -> datetime:
    """When a set finished, as far as it is known: a damaged set's manifest cannot say, its id
    (the start second) is the best guess."""
    return x.finished_at if isinstance(x, Manifest) else x.id.timestamp


def _stamp(at: datetime) -> str:
    return f"{at:%Y-%m-%dT%H:%M:%SZ}"


def select_for_time(committed: Sequence[Manifest], at: datetime | None, *, damaged: Iterable[Damaged] = (),
                    invalid: Mapping[BackupId, str] | None = None) -> Selection:
    """The newest set finished at or before ``at`` (None: the newest of all) whose whole chain is
    committed, intact and not known bad, plus every newer set in that window it passed over, each
    with its reason (newest first). Raises ChainError naming every such set when none is left.

    ``committed``: headers of intact sets (any order); ``damaged``: sets whose manifest cannot be
    trusted; ``invalid``: sets known to fail verification (id -> first problem)."""
    bad = dict(invalid or {})
    dmg = list(damaged)
    ids = [m.id for m in committed]
    window = sorted((m for m in committed if at is None or m.finished_at <= at),
                    key=lambda m: (m.finished_at, m.id), reverse=True)
    skipped: list[tuple[datetime, Skipped]] = []
    chosen = None
    for m in window:
        problem = chain_problem(m, ids, dmg, bad)
        if problem is None:
            chosen = m
            break
        skipped.append((m.finished_at, Skipped(m.id, problem)))
    skipped += [(_when(d), Skipped(d.id, f"is damaged: {d.reason}")) for d in dmg
                if (at is None or _when(d) <= at) and (chosen is None or d.id > chosen.id)]
    ordered = tuple(s for _, s in sorted(skipped, key=lambda p: (p[0], p[1].id), reverse=True))
    if chosen is not None:
        return Selection(chosen, ordered)
    when = "" if at is None else f" finished at or before {_stamp(at)}"
    if ordered:
        raise ChainError(f"no restorable backup set{when}: " + "; ".join(map(str, ordered)),
                         hint="verify, repair or fetch the sets named (`erp-backup verify`), "
                         "or pick another time (`erp-backup list`)")
    if not committed:
        raise ChainError("there is no committed backup set", hint="run `erp-backup backup full` first")
    oldest = min(m.finished_at for m in committed)
    raise ChainError(
        f"no restorable backup set{when}",
        hint=f"the oldest set finished at {_stamp(oldest)}; pick a later time (`erp-backup list`)",
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
