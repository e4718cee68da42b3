"""Pure chain choices over an untrusted repository: damaged sets, broken chains, sets that failed a
check. ``select_for_time`` (restore), ``parent_selection`` (backup), ``header_problem`` (a manifest
that parses but does not fit its directory)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erp_backup.core import chain
from erp_backup.core.chain import Damaged, Skipped
from erp_backup.core.errors import ChainError
from erp_backup.core.models import BackupId, BackupKind, Manifest

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
FULL, INCR, DIFF = BackupKind.FULL, BackupKind.INCREMENTAL, BackupKind.DIFFERENTIAL
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mk(started: datetime, kind: BackupKind, *, deps: tuple[BackupId, ...] = (), parent: BackupId | None = None,
       took: timedelta = timedelta(minutes=5), tags: tuple[str, ...] = ()) -> Manifest:
    i = BackupId.make(started, kind, tags)
    return Manifest(id=i, kind=kind, started_at=started, finished_at=started + took, host="h", tool_version="0.1.0",
                    source_root="/srv/erp", parent=parent if kind is not FULL else None, tags=tags,
                    base=deps[0] if deps else i, depends_on=deps)


# ----------------------------------------------------------------------------- examples


def chain_of_five() -> tuple[Manifest, ...]:
    """F1 (02:00), I1 (03:00) on F1, F2 (04:00), I2 (05:00) on F2, D2 (06:00) on F2."""
    f1 = mk(T0, FULL)
    i1 = mk(T0 + timedelta(hours=1), INCR, deps=(f1.id,), parent=f1.id)
    f2 = mk(T0 + timedelta(hours=2), FULL)
    i2 = mk(T0 + timedelta(hours=3), INCR, deps=(f2.id,), parent=f2.id)
    d2 = mk(T0 + timedelta(hours=4), DIFF, deps=(f2.id,), parent=f2.id)
    return f1, i1, f2, i2, d2


LATE = T0 + timedelta(days=1)


def test_a_damaged_full_skips_its_dependents_naming_each_with_its_reason() -> None:
    f1, i1, f2, i2, d2 = chain_of_five()
    sel = chain.select_for_time([f1, i1, i2, d2], LATE, damaged=[Damaged(f2.id, "manifest.json is not valid JSON")])
    assert sel.chosen == i1
    assert [s.id for s in sel.skipped] == [d2.id, i2.id, f2.id]
    assert sel.skipped[0].reason == f"needs {f2.id}, which is damaged: manifest.json is not valid JSON"
    assert sel.skipped[2].reason == "is damaged: manifest.json is not valid JSON"


def test_a_missing_and_a_failed_member_are_named_too() -> None:
    f1, i1, f2, i2, d2 = chain_of_five()
    sel = chain.select_for_time([f1, i1, i2, d2], LATE)  # f2 is gone
    assert sel.chosen == i1 and all(s.reason == f"needs {f2.id}, which is missing" for s in sel.skipped)
    sel = chain.select_for_time([f1, i1, f2, i2, d2], LATE, invalid={f2.id: "files.tar.zst: checksum mismatch"})
    assert sel.chosen == i1
    assert [str(s) for s in sel.skipped] == [
        f"{d2.id} needs {f2.id}, which failed verification: files.tar.zst: checksum mismatch",
        f"{i2.id} needs {f2.id}, which failed verification: files.tar.zst: checksum mismatch",
        f"{f2.id} failed verification: files.tar.zst: checksum mismatch"]


def test_only_sets_newer_than_the_choice_and_not_after_at_are_reported() -> None:
    f1, i1, f2, i2, d2 = chain_of_five()
    old_damaged = Damaged(BackupId.make(T0 - timedelta(days=3), FULL), "SHA256SUMS is missing")
    future_damaged = Damaged(BackupId.make(LATE + timedelta(days=1), INCR), "SHA256SUMS is missing")
    sel = chain.select_for_time([f1, i1, f2, i2, d2], LATE, damaged=[old_damaged, future_damaged])
    assert sel == chain.Selection(d2, ())
    sel = chain.select_for_time([f1, i1, f2, i2, d2], None, damaged=[old_damaged, future_damaged])
    assert sel.chosen == d2 and [s.id for s in sel.skipped] == [future_damaged.id]  # latest: no upper bound


def test_nothing_left_names_every_skipped_set_in_one_line() -> None:
    f1, i1, f2, i2, d2 = chain_of_five()
    with pytest.raises(ChainError) as ei:
        chain.select_for_time([i1, i2, d2], LATE, damaged=[Damaged(f1.id, "x"), Damaged(f2.id, "y")])
    msg = str(ei.value)
    assert "\n" not in msg and "no restorable backup set finished at or before 2026-11-29T02:00:00Z" in msg
    for s in (f1, i1, f2, i2, d2):
        assert s.id.value in msg
    assert f"{i1.id} needs {f1.id}, which is damaged: x" in msg and "verify" in msg


def test_no_set_at_all_and_too_early_keep_their_messages() -> None:
    f1, *_ = chain_of_five()
    with pytest.raises(ChainError, match="no committed backup set"):
        chain.select_for_time([], LATE)
    with pytest.raises(ChainError, match="oldest set finished at 2026-11-28T02:05:00Z"):
        chain.select_for_time([f1], T0)


def test_parent_selection_never_builds_on_a_damaged_set_or_a_broken_chain() -> None:
    f1, i1, f2, i2, d2 = chain_of_five()
    # the newest set is damaged: the incremental builds on the one before, and says so
    parent, passed = chain.parent_selection(INCR, [f1, i1, f2, i2], [Damaged(d2.id, "bad")])
    assert parent == i2 and passed == (Skipped(d2.id, "is damaged: bad"),)
    # the full of the newest chain is damaged: nothing of that chain is built on
    parent, passed = chain.parent_selection(INCR, [f1, i1, i2, d2], [Damaged(f2.id, "bad")])
    assert parent == i1 and [p.id for p in passed] == [d2.id, i2.id, f2.id]
    parent, passed = chain.parent_selection(DIFF, [f1, i1, i2, d2], [Damaged(f2.id, "bad")])
    assert parent == f1 and passed == (Skipped(f2.id, "is damaged: bad"),)
    assert chain.parent_selection(DIFF, [i1, i2, d2], [Damaged(f1.id, "a"), Damaged(f2.id, "b")])[0] is None
    assert chain.parent_selection(FULL, [f1], [Damaged(f2.id, "b")]) == (None, ())
    assert chain.parent_for(INCR, [f1, i1, f2, i2], [Damaged(d2.id, "bad")]) == i2


@pytest.mark.parametrize("change, fragment", [
    (dict(id=BackupId("20261128T020001Z-full")), "describes set 20261128T020001Z-full"),
    (dict(kind=INCR), "kind incremental"),
    (dict(tags=("monthly",)), "kind full (monthly)"),
    (dict(parent=BackupId("20261127T020000Z-full")), "names a parent"),
    (dict(depends_on=(BackupId("20261127T020000Z-full"),)), "names a parent or dependencies"),
    (dict(finished_at=T0 - timedelta(seconds=1)), "finished before it started"),
])
def test_header_problem_of_a_full(change: dict[str, object], fragment: str) -> None:
    m = mk(T0, FULL)
    assert chain.header_problem(m, m.id.value) is None
    assert fragment in (chain.header_problem(dataclasses.replace(m, **change), m.id.value) or "")  # type: ignore[arg-type]


@pytest.mark.parametrize("dep", ["20261128T030000Z-incr", "20261128T030001Z-full", "20261129T000000Z-full"])
def test_header_problem_dependencies_must_be_older(dep: str) -> None:
    """A dependency that is the set itself or newer would make a cycle (or a time-travelling chain)."""
    f = mk(T0, FULL)
    i = mk(T0 + timedelta(hours=1), INCR, deps=(f.id,), parent=f.id)
    assert chain.header_problem(i, i.id.value) is None
    bad = dataclasses.replace(i, depends_on=(f.id, BackupId(dep)))
    assert f"its manifest names {dep} as a set it builds on, which is not older" == chain.header_problem(
        bad, i.id.value)
    assert "not older" in (chain.header_problem(dataclasses.replace(i, parent=BackupId(dep)), i.id.value) or "")
    assert "names no parent" in (chain.header_problem(dataclasses.replace(i, parent=None), i.id.value) or "")


# ----------------------------------------------------------------------------- properties


@st.composite
def repositories(draw: st.DrawFn) -> tuple[list[Manifest], list[Damaged], set[BackupId], dict[BackupId, str]]:
    """A plausible history (fulls start chains; incrementals need the full and a random part of the
    chain since; differentials need the last full), then damage: some sets damaged, some gone, some
    failing verification. Returns (committed, damaged, gone, invalid)."""
    sets: list[Manifest] = []
    started = T0
    last_full: Manifest | None = None
    for _ in range(draw(st.integers(0, 14))):
        started += timedelta(minutes=draw(st.integers(1, 60 * 30)))
        kind = draw(st.sampled_from([FULL, INCR, INCR, DIFF])) if last_full else FULL
        took = timedelta(minutes=draw(st.integers(0, 120)))
        if kind is FULL:
            m = mk(started, FULL, took=took)
            last_full = m
        else:
            assert last_full is not None
            since = [s.id for s in sets if s.id > last_full.id]
            extra = tuple(d for d in since if kind is INCR and draw(st.booleans()))
            m = mk(started, kind, deps=(last_full.id, *extra), parent=(extra or (last_full.id,))[-1], took=took)
        sets.append(m)
    fate = {m.id: draw(st.sampled_from(["ok", "ok", "ok", "damaged", "gone", "invalid"])) for m in sets}
    committed = [m for m in sets if fate[m.id] in ("ok", "invalid")]
    damaged = [Damaged(m.id, f"reason-{m.id}") for m in sets if fate[m.id] == "damaged"]
    gone = {m.id for m in sets if fate[m.id] == "gone"}
    invalid = {m.id: f"bad-{m.id}" for m in sets if fate[m.id] == "invalid"}
    return draw(st.permutations(committed)), draw(st.permutations(damaged)), gone, invalid


def restorable(m: Manifest, committed: list[Manifest], invalid: dict[BackupId, str]) -> bool:
    """The oracle: the set and every set it needs are committed and not known bad."""
    ids = {c.id for c in committed}
    return m.id not in invalid and all(d in ids and d not in invalid for d in m.depends_on)


@FAST
@given(repositories(), st.integers(-120, 60 * 30 * 16), st.booleans())
def test_select_for_time_chooses_the_newest_restorable_and_names_every_newer_one(
        repo: tuple[list[Manifest], list[Damaged], set[BackupId], dict[BackupId, str]], minutes: int,
        latest: bool) -> None:
    committed, damaged, _, invalid = repo
    at = None if latest else T0 + timedelta(minutes=minutes)
    window = [m for m in committed if at is None or m.finished_at <= at]
    good = [m for m in window if restorable(m, committed, invalid)]
    try:
        sel = chain.select_for_time(committed, at, damaged=damaged, invalid=invalid)
    except ChainError as e:
        assert not good, f"{e} although {good[0].id} is restorable"
        msg = str(e)
        assert "\n" not in msg
        for m in window:  # every set the restore could have wanted is named
            assert m.id.value in msg
        for d in damaged:
            if at is None or d.id.timestamp <= at:
                assert d.id.value in msg and d.reason in msg
        return
    best = max(good, key=lambda m: (m.finished_at, m.id))
    assert sel.chosen == best
    newer = {m.id for m in window if (m.finished_at, m.id) > (best.finished_at, best.id)}
    newer_damaged = {d.id for d in damaged if d.id > best.id and (at is None or d.id.timestamp <= at)}
    assert {s.id for s in sel.skipped} == newer | newer_damaged
    assert len(sel.skipped) == len({s.id for s in sel.skipped})
    for s in sel.skipped:  # each reason names what is wrong: the set itself or the member it needs
        bad_member = s.id if s.id in invalid or s.id in newer_damaged else None
        assert bad_member is not None or s.reason.startswith("needs 2"), s
        named = BackupId(s.reason.split()[1].rstrip(",")) if s.reason.startswith("needs") else s.id
        assert named in invalid or named in {d.id for d in damaged} or named not in {m.id for m in committed}
    stamps = [next((m.finished_at for m in committed if m.id == s.id), s.id.timestamp) for s in sel.skipped]
    assert stamps == sorted(stamps, reverse=True)


@FAST
@given(repositories(), st.sampled_from([INCR, DIFF]))
def test_parent_selection_builds_only_on_an_intact_chain(
        repo: tuple[list[Manifest], list[Damaged], set[BackupId], dict[BackupId, str]], kind: BackupKind) -> None:
    committed, damaged, _, _ = repo
    parent, passed = chain.parent_selection(kind, committed, damaged)
    eligible = [m for m in committed if kind is INCR or m.kind is FULL]
    intact = [m for m in eligible if restorable(m, committed, {})]
    if not intact:
        assert parent is None
    else:
        assert parent == max(intact, key=lambda m: m.id)
        assert parent.id not in {d.id for d in damaged}
    floor = parent.id if parent else None
    expect = {m.id for m in eligible if floor is None or m.id > floor} | {
        d.id for d in damaged if (kind is INCR or d.id.kind is FULL) and (floor is None or d.id > floor)}
    assert {p.id for p in passed} == expect
    assert [p.id for p in passed] == sorted(expect, reverse=True)
