"""Which committed backup sets to keep and which to remove. Pure.

``apply_policy`` gives every set exactly one :class:`Decision` with a sentence
that says why; the prune flow logs and reports those sentences. It never touches
storage and takes ``now`` as a parameter. ``removal_order`` turns the decisions
into a safe deletion sequence (dependents before the sets they build on).

Rules (DESIGN §3), in the order a kept set's reason is chosen:

1. a set that finished after ``now`` is kept (clock skew: we cannot age it);
2. a set no older than its kind's maximum age is kept (``monthly``-tagged fulls
   use ``Policy.monthly``); its age is ``now - finished_at``;
3. the newest *valid* full (a monthly archive counts as a full) is never removed;
4. the ``keep_last`` newest sets of each kind are kept (valid or not);
5. every set that a kept set depends on is kept, transitively, and the reason
   names the kept dependents.

"Newest" means the latest ``finished_at``; equal times are broken by id (the
later start). Everything else is removed. Invalid sets (last verification failed) age like
any other set, but never count as the newest valid full.

Re-applying the policy to the kept sets at the same ``now`` removes nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from erp_backup.core.errors import BackupError, ChainError, ConfigError
from erp_backup.core.models import MONTHLY_TAG, BackupId, BackupKind, Manifest, utc


@dataclass(frozen=True)
class SetRef:
    """What retention needs to know about one committed backup set."""

    id: BackupId
    kind: BackupKind
    tags: tuple[str, ...]
    finished_at: datetime  # timezone-aware
    depends_on: tuple[BackupId, ...]  # sets whose archives a restore of this set reads
    valid: bool = True  # the last verification passed

    @property
    def is_monthly(self) -> bool:
        return self.kind is BackupKind.FULL and MONTHLY_TAG in self.tags

    @property
    def label(self) -> str:
        """``full``, ``monthly full``, ``incremental`` or ``differential``."""
        return f"{MONTHLY_TAG} full" if self.is_monthly else self.kind.value

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, valid: bool = True) -> SetRef:
        """Build from a manifest header. The base full is added to ``depends_on``
        (conservatively: a restore may not read it when every file changed)."""
        deps = set(manifest.depends_on)
        if manifest.base is not None:
            deps.add(manifest.base)
        deps.discard(manifest.id)
        return cls(
            id=manifest.id,
            kind=manifest.kind,
            tags=manifest.tags,
            finished_at=manifest.finished_at,
            depends_on=tuple(sorted(deps)),
            valid=valid,
        )


@dataclass(frozen=True)
class Policy:
    """Maximum ages per kind, plus a floor of newest sets kept per kind.

    The defaults are the local-storage policy; remote storage uses another
    instance, e.g. ``Policy(full=30d, incremental=30d, differential=30d)``."""

    full: timedelta = timedelta(days=7)
    incremental: timedelta = timedelta(hours=24)
    differential: timedelta = timedelta(days=30)
    monthly: timedelta = timedelta(days=365)
    keep_last: int = 1  # always keep at least this many newest sets of each kind (like restic --keep-last)

    def __post_init__(self) -> None:
        for name in ("full", "incremental", "differential", "monthly"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value < timedelta(0):
                raise ConfigError(f"retention {name} age {value!r} is not a duration of zero or more",
                                  hint="set it in days or hours, e.g. 7 days")
        if isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int) or self.keep_last < 0:
            raise ConfigError(f"retention keep_last {self.keep_last!r} is not a whole number of zero or more",
                              hint="use 1 to always keep the newest set of each kind")

    def max_age(self, ref: SetRef) -> timedelta:
        if ref.is_monthly:
            return self.monthly
        return {
            BackupKind.FULL: self.full,
            BackupKind.INCREMENTAL: self.incremental,
            BackupKind.DIFFERENTIAL: self.differential,
        }[ref.kind]


@dataclass(frozen=True)
class Decision:
    id: BackupId
    keep: bool
    reason: str  # one human sentence


# --------------------------------------------------------------------------- formatting

_UNITS: tuple[tuple[timedelta, str], ...] = (
    (timedelta(days=1), "day"),
    (timedelta(hours=1), "hour"),
    (timedelta(minutes=1), "minute"),
    (timedelta(seconds=1), "second"),
)


def _unit_for(limit: timedelta) -> tuple[timedelta, str]:
    for size, name in _UNITS:
        if limit >= 2 * size:
            return size, name
    return _UNITS[-1]


def _num(x: float, digits: int) -> str:
    text = f"{x:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{x:.0f}"
    return text if text != "-0" else "0"


def _plural(text: str, name: str) -> str:
    return f"{text} {name}" if text == "1" else f"{text} {name}s"


def _compare(age: timedelta, limit: timedelta) -> str:
    """``8 days old > 7 days``: both in the limit's unit, with enough decimals to be truthful."""
    size, name = _unit_for(limit)
    a, lim = age / size, limit / size
    op = ">" if age > limit else "<="
    for digits in range(7):
        a_text, lim_text = _num(a, digits), _num(lim, digits)
        shown_a, shown_lim = float(a_text), float(lim_text)
        if (shown_a > shown_lim) == (age > limit) and (shown_a == shown_lim) == (age == limit):
            break
    else:  # a difference too small to show in this unit: fall back to exact durations
        a_text, lim_text = str(age), str(limit)
        return f"{a_text} old {op} {lim_text}"
    return f"{_plural(a_text, name)} old {op} {_plural(lim_text, name)}"


def _when(dt: datetime) -> str:
    return f"{dt.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _age_clause(ref: SetRef, age: timedelta, limit: timedelta) -> str:
    bad = " (last verification failed)" if not ref.valid else ""
    return f"{ref.label} from {_when(ref.finished_at)}{bad}, {_compare(age, limit)}"


def _names(ids: Iterable[BackupId], most: int = 3) -> str:
    ordered = sorted(ids, reverse=True)  # newest first
    shown = ", ".join(i.value for i in ordered[:most])
    rest = len(ordered) - most
    return f"{shown} and {rest} more" if rest > 0 else shown


# --------------------------------------------------------------------------- policy


def _newest_key(ref: SetRef) -> tuple[datetime, BackupId]:
    return (ref.finished_at, ref.id)


def _index(sets: Sequence[SetRef]) -> dict[BackupId, SetRef]:
    by_id: dict[BackupId, SetRef] = {}
    for ref in sets:
        if ref.id in by_id:
            raise BackupError(f"backup set {ref.id} is listed twice",
                              hint="list each committed set once (is a copy mixed in from another root?)")
        by_id[ref.id] = ref
    return by_id


def apply_policy(sets: Sequence[SetRef], policy: Policy, now: datetime) -> list[Decision]:
    """One decision per set, ordered by id."""
    now = utc(now)
    by_id = _index(sets)
    finished = {ref.id: utc(ref.finished_at) for ref in sets}

    reasons: dict[BackupId, str] = {}  # kept sets and why
    expired: dict[BackupId, str] = {}  # age clause of sets older than their limit
    present: list[SetRef] = []  # not in the future

    for ref in sets:
        done = finished[ref.id]
        if done > now:
            reasons[ref.id] = (f"{ref.label} finished at {_when(done)}, after now ({_when(now)}): "
                               "kept until its age can be judged (clock skew?)")
            continue
        present.append(ref)
        age, limit = now - done, policy.max_age(ref)
        clause = _age_clause(ref, age, limit)
        if age <= limit:
            reasons[ref.id] = clause
        else:
            expired[ref.id] = clause

    valid_fulls = [r for r in present if r.kind is BackupKind.FULL and r.valid]
    if valid_fulls:
        newest = max(valid_fulls, key=_newest_key)
        if newest.id not in reasons:
            reasons[newest.id] = f"newest valid full: never removed, although {expired[newest.id]}"

    if policy.keep_last:
        for kind in BackupKind:
            of_kind = sorted((r for r in present if r.kind is kind), key=_newest_key, reverse=True)
            which = (f"newest {kind.value} set" if policy.keep_last == 1
                     else f"one of the {policy.keep_last} newest {kind.value} sets")
            for ref in of_kind[: policy.keep_last]:
                if ref.id not in reasons:
                    reasons[ref.id] = (f"{which}, kept by keep_last={policy.keep_last}, "
                                       f"although {expired[ref.id]}")

    # Whatever a kept set depends on is kept too, transitively; the reason names its kept dependents.
    kept = set(reasons)
    needed_by: dict[BackupId, set[BackupId]] = {}
    stack = sorted(kept)
    while stack:
        dependent = stack.pop()
        for dep in by_id[dependent].depends_on:
            if dep == dependent or dep not in by_id:
                continue  # a missing base is the chain checker's business, not retention's
            needed_by.setdefault(dep, set()).add(dependent)
            if dep not in kept:
                kept.add(dep)
                stack.append(dep)
    for dep in kept - reasons.keys():
        reasons[dep] = f"needed by {_names(needed_by[dep])} (kept), although {expired[dep]}"

    return [
        Decision(i, True, reasons[i]) if i in reasons else Decision(i, False, expired[i])
        for i in sorted(by_id)
    ]


def removal_order(decisions: Iterable[Decision], sets: Sequence[SetRef]) -> list[BackupId]:
    """The ids to remove, each after every removed set that depends on it (dependents first).

    Among sets free to go, the newest goes first. Refuses (``ChainError``) when a
    kept set would lose something it depends on, when a decision names an unknown
    set, or when the dependencies form a cycle."""
    by_id = _index(sets)
    decided = list(decisions)
    remove = {d.id for d in decided if not d.keep}
    unknown = sorted(remove - by_id.keys())
    if unknown:
        raise ChainError(f"cannot order the removal of unknown backup set(s) {_names(unknown)}",
                         hint="pass the same sets that the decisions were made from")
    keep = by_id.keys() - remove
    for kept_id in sorted(keep):
        lost = sorted(d for d in by_id[kept_id].depends_on if d in remove)
        if lost:
            raise ChainError(f"refusing to remove {_names(lost)}: kept set {kept_id} depends on it",
                             hint="re-run the retention policy; decisions must keep what kept sets need")

    # Kahn's algorithm over edges dependent -> base, restricted to removed sets.
    waiting_on: dict[BackupId, int] = dict.fromkeys(remove, 0)  # removed dependents not yet removed
    bases: dict[BackupId, set[BackupId]] = {}
    for rid in remove:
        mine = {d for d in by_id[rid].depends_on if d in remove and d != rid}
        bases[rid] = mine
        for base in mine:
            waiting_on[base] += 1
    ready = sorted(i for i, n in waiting_on.items() if n == 0)  # popped from the end: newest first
    order: list[BackupId] = []
    while ready:
        rid = ready.pop()
        order.append(rid)
        for base in bases[rid]:
            waiting_on[base] -= 1
            if waiting_on[base] == 0:
                ready.append(base)
        ready.sort()
    if len(order) != len(remove):
        stuck = sorted(remove - set(order))
        raise ChainError(f"backup sets {_names(stuck)} depend on each other in a cycle",
                         hint="their manifests are damaged; check them with `erp-backup verify`")
    return order

