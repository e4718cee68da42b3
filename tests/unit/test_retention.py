"""Retention: which sets to keep, why, and in what order to remove the rest."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erp_backup.core.errors import BackupError, ChainError, ConfigError
from erp_backup.core.models import BackupId, BackupKind, Manifest
from erp_backup.core.retention import Decision, Policy, SetRef, apply_policy, removal_order

FULL, INCR, DIFF = BackupKind.FULL, BackupKind.INCREMENTAL, BackupKind.DIFFERENTIAL
NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def at(day: int, hour: int = 2, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, 0, tzinfo=UTC)


def ref(started: datetime, kind: BackupKind, *deps: SetRef, monthly: bool = False, valid: bool = True,
        took: timedelta = timedelta(0)) -> SetRef:
    tags = ("monthly",) if monthly else ()
    return SetRef(id=BackupId.make(started, kind, tags), kind=kind, tags=tags, finished_at=started + took,
                  depends_on=tuple(d.id for d in deps), valid=valid)


def decide(sets: Sequence[SetRef], policy: Policy | None = None, now: datetime = NOW) -> dict[str, Decision]:
    return {d.id.value: d for d in apply_policy(sets, policy or Policy(), now)}


def kept(decisions: dict[str, Decision]) -> set[str]:
    return {k for k, d in decisions.items() if d.keep}


# --------------------------------------------------------------------------- age


def test_expired_full_is_removed_with_its_age() -> None:
    old, new = ref(at(20), FULL), ref(at(27), FULL)
    d = decide([old, new])
    assert not d[old.id.value].keep
    assert d[old.id.value].reason == "full from 2026-11-20 02:00 UTC, 8 days old > 7 days"
    assert d[new.id.value].keep
    assert d[new.id.value].reason == "full from 2026-11-27 02:00 UTC, 1 day old <= 7 days"


def test_age_exactly_at_the_limit_is_kept() -> None:
    edge = ref(NOW - timedelta(days=7), FULL)
    newer = ref(at(27), FULL)
    d = decide([edge, newer])
    assert d[edge.id.value].keep
    assert "7 days old <= 7 days" in d[edge.id.value].reason


def test_age_is_shown_with_enough_precision_to_be_truthful() -> None:
    slightly_old = ref(NOW - timedelta(days=7, hours=9, minutes=36), FULL)
    d = decide([slightly_old, ref(at(27), FULL)])
    assert d[slightly_old.id.value].reason.endswith("7.4 days old > 7 days")


def test_incrementals_are_aged_in_hours() -> None:
    full = ref(at(26), FULL)
    old = ref(at(27, 2), INCR, full)  # 25 hours
    edge = ref(at(27, 3), INCR, full)  # 24 hours exactly; every file of `old` changed again
    new = ref(at(28, 2), INCR, edge, full)
    d = decide([full, old, edge, new])
    assert d[old.id.value] == Decision(
        old.id, False, "incremental from 2026-11-27 02:00 UTC, 25 hours old > 24 hours")
    assert d[edge.id.value].reason == "incremental from 2026-11-27 03:00 UTC, 24 hours old <= 24 hours"
    assert d[edge.id.value].keep


def test_age_is_measured_from_finished_at_not_the_id() -> None:
    # started 7 days 1 hour ago, but finished 2 hours later: 6 days 23 hours old
    slow = ref(NOW - timedelta(days=7, hours=1), FULL, took=timedelta(hours=2))
    d = decide([slow, ref(at(27), FULL)])
    assert d[slow.id.value].keep


def test_differentials_are_kept_30_days_by_default() -> None:
    full = ref(at(1), FULL)
    diff = ref(at(2), DIFF, full)
    newer_diff = ref(at(27), DIFF, full)
    d = decide([full, diff, newer_diff])
    assert d[diff.id.value].keep
    assert d[diff.id.value].reason.endswith("26 days old <= 30 days")


def test_monthly_full_uses_the_monthly_age() -> None:
    young = ref(at(1, month=2), FULL, monthly=True)  # ~300 days
    old = ref(at(1, month=11, year=2025), FULL, monthly=True)  # ~392 days
    newest = ref(at(27), FULL)
    d = decide([young, old, newest])
    assert d[young.id.value].keep
    assert d[young.id.value].reason.startswith("monthly full from 2026-02-01")
    assert d[young.id.value].reason.endswith("<= 365 days")
    assert not d[old.id.value].keep
    assert d[old.id.value].reason == "monthly full from 2025-11-01 02:00 UTC, 392 days old > 365 days"


def test_remote_policy_keeps_everything_30_days() -> None:
    remote = Policy(full=timedelta(days=30), incremental=timedelta(days=30), differential=timedelta(days=30))
    full = ref(at(1), FULL)
    incr = ref(at(2), INCR, full)
    incr2 = ref(at(3), INCR, incr, full)
    assert kept(decide([full, incr, incr2], remote)) == {full.id.value, incr.id.value, incr2.id.value}


# --------------------------------------------------------------------------- dependencies


def test_full_needed_by_a_kept_differential_outlives_its_age() -> None:
    full = ref(at(10), FULL)  # 18 days old
    diff = ref(at(25, 1), DIFF, full)  # 3 days old
    newer_full = ref(at(27), FULL)
    d = decide([full, diff, newer_full])
    assert d[full.id.value].keep
    assert d[full.id.value].reason == ("needed by 20261125T010000Z-diff (kept), "
                                       "although full from 2026-11-10 02:00 UTC, 18 days old > 7 days")


def test_dependencies_are_kept_transitively_and_the_reason_names_the_direct_dependent() -> None:
    full = ref(at(20), FULL)
    i1 = ref(at(21), INCR, full)
    i2 = ref(at(22), INCR, i1)  # lists only its parent: the closure must still reach the full
    i3 = ref(at(28, 1), INCR, i2)
    newer_full = ref(at(27), FULL)
    d = decide([full, i1, i2, i3, newer_full])
    assert kept(d) == {full.id.value, i1.id.value, i2.id.value, i3.id.value, newer_full.id.value}
    assert d[i2.id.value].reason.startswith(f"needed by {i3.id} (kept)")
    assert d[i1.id.value].reason.startswith(f"needed by {i2.id} (kept)")
    assert d[full.id.value].reason.startswith(f"needed by {i1.id} (kept)")


def test_reason_names_every_kept_dependent_newest_first() -> None:
    full = ref(at(1), FULL)
    diffs = [ref(at(day), DIFF, full) for day in (2, 3, 4, 5, 6)]
    d = decide([full, *diffs, ref(at(27), FULL)])
    assert d[full.id.value].reason.startswith(
        "needed by 20261106T020000Z-diff, 20261105T020000Z-diff, 20261104T020000Z-diff and 2 more (kept)")


def test_a_removed_set_does_not_keep_its_base() -> None:
    full = ref(at(10), FULL)
    old_diff = ref(at(11), DIFF, full)  # 17 days: within 30 days, so kept, and so is the full
    policy = Policy(differential=timedelta(days=10))  # now it is expired
    newest = ref(at(27), FULL)
    newest_diff = ref(at(27, 5), DIFF, newest)
    d = decide([full, old_diff, newest, newest_diff], policy)
    assert kept(d) == {newest.id.value, newest_diff.id.value}


def test_unknown_dependencies_are_ignored() -> None:
    gone = BackupId("20261101T020000Z-full")
    orphan = SetRef(BackupId("20261127T030000Z-diff"), DIFF, (), at(27, 3), (gone,))
    d = decide([orphan])
    assert d[orphan.id.value].keep


# --------------------------------------------------------------------------- newest valid full


def test_newest_valid_full_is_never_removed() -> None:
    strict = Policy(full=timedelta(0), incremental=timedelta(0), differential=timedelta(0),
                    monthly=timedelta(0), keep_last=0)
    older, newest = ref(at(1), FULL), ref(at(2), FULL)
    d = decide([older, newest], strict)
    assert kept(d) == {newest.id.value}
    assert d[newest.id.value].reason.startswith("newest valid full: never removed")


def test_invalid_full_is_not_the_newest_valid_full() -> None:
    good = ref(at(1), FULL)
    bad = ref(at(2), FULL, valid=False)
    d = decide([good, bad], Policy(keep_last=0))
    assert d[good.id.value].keep
    assert d[good.id.value].reason.startswith("newest valid full: never removed")
    assert not d[bad.id.value].keep
    assert d[bad.id.value].reason == (
        "full from 2026-11-02 02:00 UTC (last verification failed), 26 days old > 7 days")


def test_invalid_set_within_its_age_is_kept() -> None:
    good = ref(at(20), FULL)
    bad = ref(at(27), FULL, valid=False)
    d = decide([good, bad])
    assert d[bad.id.value].keep
    assert "(last verification failed)" in d[bad.id.value].reason


def test_monthly_counts_as_the_newest_valid_full() -> None:
    monthly = ref(at(1, month=1, year=2025), FULL, monthly=True)  # ~2 years old
    d = decide([monthly], Policy(keep_last=0))
    assert d[monthly.id.value].keep
    assert d[monthly.id.value].reason.startswith("newest valid full: never removed, although monthly full")


def test_no_valid_full_at_all_removes_expired_invalid_fulls() -> None:
    bad = ref(at(1), FULL, valid=False)
    d = decide([bad], Policy(keep_last=0))
    assert not d[bad.id.value].keep


# --------------------------------------------------------------------------- keep_last


def test_keep_last_keeps_the_newest_of_each_kind() -> None:
    full = ref(at(1), FULL)
    diff = ref(at(2), DIFF, full)
    i1 = ref(at(3), INCR, diff, full)
    i2 = ref(at(4), INCR, diff, full)  # every file of i1 changed again: i2 does not read i1
    d = decide([full, diff, i1, i2], Policy(differential=timedelta(days=1)))
    assert kept(d) == {full.id.value, diff.id.value, i2.id.value}
    assert d[i2.id.value].reason.startswith("newest incremental set, kept by keep_last=1, although")
    assert d[diff.id.value].reason.startswith("newest differential set, kept by keep_last=1, although")
    assert not d[i1.id.value].keep


def test_keep_last_counts_invalid_sets_too() -> None:
    full = ref(at(1), FULL)
    bad = ref(at(2), INCR, full, valid=False)
    d = decide([full, bad])
    assert d[bad.id.value].keep


def test_keep_last_two() -> None:
    full = ref(at(1), FULL)
    incrs = [ref(at(day), INCR, full) for day in (2, 3, 4, 5)]
    d = decide([full, *incrs], Policy(keep_last=2))
    assert kept(d) == {full.id.value, incrs[2].id.value, incrs[3].id.value}
    assert d[incrs[2].id.value].reason.startswith("one of the 2 newest incremental sets, kept by keep_last=2")


def test_keep_last_zero_keeps_only_what_rules_require() -> None:
    full = ref(at(1), FULL)
    incr = ref(at(2), INCR, full)
    assert kept(decide([full, incr], Policy(keep_last=0))) == {full.id.value}


# --------------------------------------------------------------------------- clock skew


def test_set_finished_in_the_future_is_kept_and_says_why() -> None:
    full = ref(at(27), FULL)
    future = ref(at(29), INCR, full)
    d = decide([full, future])
    assert d[future.id.value].keep
    assert d[future.id.value].reason == (
        "incremental finished at 2026-11-29 02:00 UTC, after now (2026-11-28 03:00 UTC): "
        "kept until its age can be judged (clock skew?)")


def test_future_sets_do_not_take_the_keep_last_or_newest_full_slots() -> None:
    full = ref(at(1), FULL)
    incr = ref(at(2), INCR, full)
    future_full = ref(at(30), FULL)
    future_incr = ref(at(30, 3), INCR, future_full)
    d = decide([full, incr, future_full, future_incr])
    assert kept(d) == {full.id.value, incr.id.value, future_full.id.value, future_incr.id.value}
    assert d[full.id.value].reason.startswith("newest valid full")
    assert d[incr.id.value].reason.startswith("newest incremental set")


# --------------------------------------------------------------------------- shape and input checks


def test_one_decision_per_set_in_id_order_whatever_the_input_order() -> None:
    full = ref(at(1), FULL)
    sets = [full, *(ref(at(day), INCR, full) for day in range(2, 20)), ref(at(20), DIFF, full)]
    expected = apply_policy(sets, Policy(), NOW)
    assert [d.id for d in expected] == sorted(s.id for s in sets)
    shuffled = list(sets)
    random.Random(7).shuffle(shuffled)
    assert apply_policy(shuffled, Policy(), NOW) == expected


def test_empty_input() -> None:
    assert apply_policy([], Policy(), NOW) == []
    assert removal_order([], []) == []


def test_duplicate_sets_are_refused() -> None:
    full = ref(at(1), FULL)
    with pytest.raises(BackupError, match="listed twice"):
        apply_policy([full, full], Policy(), NOW)


def test_naive_times_are_refused() -> None:
    with pytest.raises(BackupError, match="naive"):
        apply_policy([ref(at(1), FULL)], Policy(), datetime(2026, 11, 28))


@pytest.mark.parametrize("kwargs", [{"keep_last": -1}, {"full": timedelta(days=-1)}, {"keep_last": True}])
def test_policy_values_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_setref_from_manifest_adds_the_base() -> None:
    full_id = BackupId("20261120T020000Z-full")
    diff_id = BackupId("20261125T010000Z-diff")
    m = Manifest(id=BackupId("20261126T010000Z-incr"), kind=INCR, started_at=at(26, 1),
                 finished_at=at(26, 2), host="erp", tool_version="0.1.0", source_root="/srv/erp",
                 parent=diff_id, base=full_id, depends_on=(diff_id,))
    r = SetRef.from_manifest(m, valid=False)
    assert r == SetRef(m.id, INCR, (), at(26, 2), (full_id, diff_id), valid=False)


# --------------------------------------------------------------------------- removal order


def test_removal_order_removes_dependents_before_their_bases_newest_first() -> None:
    full = ref(at(1), FULL)
    i1 = ref(at(2), INCR, full)
    i2 = ref(at(3), INCR, i1, full)
    diff = ref(at(4), DIFF, full)
    other_full = ref(at(5), FULL)
    newest = ref(at(27), FULL)
    sets = [full, i1, i2, diff, other_full, newest]
    decisions = apply_policy(sets, Policy(differential=timedelta(days=10), keep_last=0), NOW)
    assert removal_order(decisions, sets) == [other_full.id, diff.id, i2.id, i1.id, full.id]


def test_removal_order_refuses_to_strip_a_kept_set() -> None:
    full = ref(at(1), FULL)
    diff = ref(at(2), DIFF, full)
    bad = [Decision(full.id, False, "x"), Decision(diff.id, True, "y")]
    with pytest.raises(ChainError, match=f"kept set {diff.id} depends on it"):
        removal_order(bad, [full, diff])


def test_removal_order_refuses_unknown_sets() -> None:
    with pytest.raises(ChainError, match="unknown"):
        removal_order([Decision(BackupId("20261101T020000Z-full"), False, "x")], [])


def test_removal_order_refuses_cycles() -> None:
    a_id, b_id = BackupId("20261101T020000Z-incr"), BackupId("20261102T020000Z-incr")
    a = SetRef(a_id, INCR, (), at(1), (b_id,))
    b = SetRef(b_id, INCR, (), at(2), (a_id,))
    with pytest.raises(ChainError, match="cycle"):
        removal_order([Decision(a_id, False, "x"), Decision(b_id, False, "y")], [a, b])


# --------------------------------------------------------------------------- properties

START = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def histories(draw: st.DrawFn) -> list[SetRef]:
    """A plausible repository: fulls and monthly fulls start chains; incrementals chain to the
    previous set (listing the full and a random part of the chain in between); differentials
    depend on the last full. Random gaps, durations and verification results; shuffled."""
    sets: list[SetRef] = []
    started = START
    last_full: SetRef | None = None
    prev: SetRef | None = None
    for _ in range(draw(st.integers(0, 24))):
        started += timedelta(minutes=draw(st.integers(1, 60 * 24 * 12)))
        choice = draw(st.sampled_from(["full", "monthly", "incr", "incr", "diff"]))
        if last_full is None or prev is None:
            choice = draw(st.sampled_from(["full", "monthly"]))
        kind = {"full": FULL, "monthly": FULL, "incr": INCR, "diff": DIFF}[choice]
        tags = ("monthly",) if choice == "monthly" else ()
        deps: tuple[BackupId, ...] = ()
        if choice == "diff":
            assert last_full is not None
            deps = (last_full.id,)
        elif choice == "incr":
            assert last_full is not None and prev is not None
            chain = (prev.id, *prev.depends_on)
            deps = tuple(d for d in chain if d == last_full.id or draw(st.booleans()))
        s = SetRef(id=BackupId.make(started, kind, tags), kind=kind, tags=tags,
                   finished_at=started + timedelta(minutes=draw(st.integers(0, 240))),
                   depends_on=deps, valid=draw(st.sampled_from([True, True, True, False])))
        sets.append(s)
        prev = s
        if kind is FULL:
            last_full = s
    return draw(st.permutations(sets))


policies = st.builds(
    Policy,
    full=st.integers(0, 40).map(lambda d: timedelta(days=d)),
    incremental=st.integers(0, 96).map(lambda h: timedelta(hours=h)),
    differential=st.integers(0, 60).map(lambda d: timedelta(days=d)),
    monthly=st.integers(0, 400).map(lambda d: timedelta(days=d)),
    keep_last=st.integers(0, 3),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[SetRef], Policy, datetime]:
    sets = draw(histories())
    last = max((s.finished_at for s in sets), default=START)
    # mostly after the last set, sometimes before it (clock skew)
    now = last + timedelta(hours=draw(st.integers(-72, 24 * 120)))
    return sets, draw(policies), now


def newest(s: SetRef) -> tuple[datetime, BackupId]:
    return (s.finished_at, s.id)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _split(sets: Sequence[SetRef], policy: Policy, now: datetime) -> tuple[list[Decision], set[BackupId]]:
    decisions = apply_policy(sets, policy, now)
    return decisions, {d.id for d in decisions if not d.keep}


@FAST
@given(scenarios())
def test_prop_one_decision_per_set_with_a_reason(case: tuple[list[SetRef], Policy, datetime]) -> None:
    sets, policy, now = case
    decisions = apply_policy(sets, policy, now)
    assert [d.id for d in decisions] == sorted(s.id for s in sets)
    assert all(d.reason for d in decisions)


@FAST
@given(scenarios())
def test_prop_no_kept_set_depends_on_a_removed_set(case: tuple[list[SetRef], Policy, datetime]) -> None:
    sets, policy, now = case
    _, removed = _split(sets, policy, now)
    for s in sets:
        if s.id not in removed:
            assert not removed.intersection(s.depends_on), s


@FAST
@given(scenarios())
def test_prop_newest_valid_full_is_kept(case: tuple[list[SetRef], Policy, datetime]) -> None:
    sets, policy, now = case
    _, removed = _split(sets, policy, now)
    valid_fulls = [s for s in sets if s.kind is FULL and s.valid]
    if valid_fulls:  # newest: latest finished_at, equal times broken by id (the later start)
        assert max(valid_fulls, key=newest).id not in removed
        present = [s for s in valid_fulls if s.finished_at <= now]
        if present:
            assert max(present, key=newest).id not in removed


@FAST
@given(scenarios())
def test_prop_sets_within_their_age_are_kept_and_removed_sets_are_expired(
        case: tuple[list[SetRef], Policy, datetime]) -> None:
    sets, policy, now = case
    _, removed = _split(sets, policy, now)
    for s in sets:
        within = now - s.finished_at <= policy.max_age(s)  # includes the future (negative age)
        if within:
            assert s.id not in removed, s
        if s.id in removed:
            assert not within, s


@FAST
@given(scenarios())
def test_prop_every_kept_set_is_justified(case: tuple[list[SetRef], Policy, datetime]) -> None:
    """Nothing is kept without a rule: young, newest valid full, keep_last, or needed."""
    sets, policy, now = case
    _, removed = _split(sets, policy, now)
    present = [s for s in sets if s.finished_at <= now]
    valid_fulls = [s for s in present if s.kind is FULL and s.valid]
    newest_full = max(valid_fulls, key=newest).id if valid_fulls else None
    by_kind = {kind: sorted((s for s in present if s.kind is kind), key=newest, reverse=True)
               for kind in BackupKind}
    last_n = {s.id for group in by_kind.values() for s in group[: policy.keep_last]}
    needed = {d for s in sets if s.id not in removed for d in s.depends_on}
    for s in sets:
        if s.id not in removed:
            assert (now - s.finished_at <= policy.max_age(s) or s.id == newest_full
                    or s.id in last_n or s.id in needed), s


@FAST
@given(scenarios())
def test_prop_removal_order_puts_dependents_first(case: tuple[list[SetRef], Policy, datetime]) -> None:
    sets, policy, now = case
    decisions, removed = _split(sets, policy, now)
    order = removal_order(decisions, sets)
    assert len(order) == len(set(order)) and set(order) == removed
    position = {rid: i for i, rid in enumerate(order)}
    by_id = {s.id: s for s in sets}
    for rid in order:
        for dep in by_id[rid].depends_on:
            if dep in removed:
                assert position[rid] < position[dep], (rid, dep)


@FAST
@given(scenarios())
def test_prop_policy_is_idempotent(case: tuple[list[SetRef], Policy, datetime]) -> None:
    sets, policy, now = case
    decisions, removed = _split(sets, policy, now)
    survivors = [s for s in sets if s.id not in removed]
    again = apply_policy(survivors, policy, now)
    assert all(d.keep for d in again)
    assert again == [d for d in decisions if d.keep]
