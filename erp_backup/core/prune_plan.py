"""What a prune does to one store (local directory or remote bucket). Pure: no I/O, no clock.

``plan_prune`` runs the retention policy (``erp_backup.core.retention.apply_policy``) and then
the safety rails, which no configuration can turn off:

1. the newest valid full (a full whose last verification did not fail) is never removed, and
   neither is any set finished after it; with no valid full at all nothing is removed;
2. whatever a kept set depends on stays (transitively);
3. a policy that by itself (ages and ``keep_last``, before rail 1) would remove every set is
   refused (``RetentionRefused``, a ``ConfigError``): a clock far ahead or a policy of zeros, not a decision to act on;
4. a set that cannot be read (``Unreadable``: damaged manifest, incomplete remote copy) is kept
   and reported, never removed.

The plan lists every set once with ``keep``/``remove`` and a sentence; ``order`` is the deletion
sequence (``removal_order``: dependents before the sets they build on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from erp_backup.core.errors import RetentionRefused
from erp_backup.core.models import BackupId, BackupKind, utc
from erp_backup.core.retention import Decision, Policy, SetRef, apply_policy, removal_order

KEEP, REMOVE = "keep", "remove"


@dataclass(frozen=True)
class Unreadable:
    """A set (directory or remote prefix named like a set) whose manifest cannot be used."""

    id: str
    reason: str


@dataclass(frozen=True)
class Leftover:
    """Something that is not a set: a ``.partial`` directory, an incomplete upload."""

    name: str
    remove: bool
    reason: str


@dataclass(frozen=True)
class Row:
    """One line of the plan (the table artifact, ``--json``)."""

    id: str
    where: str  # "local" | "remote"
    action: str  # "keep" | "remove"
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "where": self.where, "action": self.action, "reason": self.reason}


@dataclass(frozen=True)
class PrunePlan:
    where: str
    now: datetime
    decisions: tuple[Decision, ...]  # one per readable set, by id
    order: tuple[BackupId, ...]  # what to remove, in this order
    unreadable: tuple[Unreadable, ...] = ()
    leftovers: tuple[Leftover, ...] = ()
    notes: tuple[str, ...] = ()  # for the log and the report (e.g. "no valid full")

    @property
    def kept(self) -> int:
        return sum(1 for d in self.decisions if d.keep) + len(self.unreadable)

    def rows(self) -> list[Row]:
        """Every set (oldest first), then the leftovers."""
        rows = [Row(d.id.value, self.where, KEEP if d.keep else REMOVE, d.reason) for d in self.decisions]
        rows += [Row(u.id, self.where, KEEP,
                     f"cannot be read ({u.reason}): kept; look at it (`erp-backup verify {u.id}`) "
                     "and remove it by hand once it is beyond repair") for u in self.unreadable]
        rows.sort(key=lambda r: r.id)
        rows += [Row(x.name, self.where, REMOVE if x.remove else KEEP, x.reason) for x in self.leftovers]
        return rows


def _key(ref: SetRef) -> tuple[datetime, BackupId]:
    return (utc(ref.finished_at), ref.id)


def _close(kept: dict[BackupId, str], by_id: Mapping[BackupId, SetRef], reasons: dict[BackupId, str]) -> None:
    """Add to ``kept`` (with a reason) every set a kept set depends on, transitively."""
    stack = sorted(kept)
    while stack:
        dependent = stack.pop()
        for dep in by_id[dependent].depends_on:
            if dep in by_id and dep not in kept:
                kept[dep] = f"needed by {dependent} (kept), although {reasons[dep]}"
                stack.append(dep)


def _policy_keeps_any(sets: Sequence[SetRef], policy: Policy, now: datetime) -> bool:
    """Would the policy by itself (ages, keep_last; before any rail) keep at least one set?"""
    if policy.keep_last and any(utc(r.finished_at) <= now for r in sets):
        return True
    return any(utc(r.finished_at) > now or now - utc(r.finished_at) <= policy.max_age(r) for r in sets)


def plan_prune(sets: Sequence[SetRef], policy: Policy, now: datetime, *, where: str = "local",
               unreadable: Sequence[Unreadable] = (), leftovers: Sequence[Leftover] = ()) -> PrunePlan:
    """The decisions for ``sets`` at ``now`` under ``policy`` plus the rails (module docstring)."""
    now = utc(now)
    raw = apply_policy(sets, policy, now)
    if sets and not _policy_keeps_any(sets, policy, now):
        raise RetentionRefused(f"the {where} retention policy would remove every one of the {len(raw)} set(s) "
                          f"at {now:%Y-%m-%d %H:%M} UTC: refused",
                          hint=f"check [retention.{where}] (keep_last >= 1) and the system clock")
    by_id = {r.id: r for r in sets}
    reasons = {d.id: d.reason for d in raw}
    kept = {d.id: d.reason for d in raw if d.keep}
    notes: list[str] = []
    present = [r for r in sets if utc(r.finished_at) <= now]
    valid_fulls = [r for r in present if r.kind is BackupKind.FULL and r.valid]
    if not valid_fulls:
        if sets:
            notes.append(f"no valid full {where}: nothing is removed until a full backup verifies")
        for r in sets:
            kept.setdefault(r.id, f"no valid full {where}: never removed, although {reasons[r.id]}")
    else:
        newest = max(valid_fulls, key=_key)
        for r in sets:
            if _key(r) > _key(newest) and r.id not in kept:
                kept[r.id] = f"newer than the newest valid full {newest.id}: never removed, although {reasons[r.id]}"
    _close(kept, by_id, reasons)
    have = set(by_id) | {BackupId(u.id) for u in unreadable if BackupId.is_valid(u.id)}
    decisions = []
    for d in raw:
        if d.id in kept:
            missing = sorted(x.value for x in by_id[d.id].depends_on if x not in have)
            why = kept[d.id] + (f" (needs {', '.join(missing)}, which is missing)" if missing else "")
            decisions.append(Decision(d.id, True, why))
        else:
            decisions.append(d)
    order = removal_order(decisions, sets)
    return PrunePlan(where, now, tuple(decisions), tuple(order), tuple(unreadable), tuple(leftovers),
                     tuple(notes))
