"""The prune plan (policy + safety rails): golden histories with their expected decisions, the rails
as properties of random histories, and the ``[retention]`` config."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erp_backup.config import RetentionPolicyConfig, Settings, settings_from_dict
from erp_backup.core.errors import ConfigError
from erp_backup.core.models import MONTHLY_TAG, BackupId, BackupKind
from erp_backup.core.prune_plan import Unreadable, plan_prune
from erp_backup.core.retention import SetRef
from erp_backup.prune import policy_of

GOLDEN = Path(__file__).parent / "golden" / "prune"
CASES = sorted(GOLDEN.glob("*.json"))


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ref(d: dict[str, Any]) -> SetRef:
    bid = BackupId(d["id"])
    return SetRef(id=bid, kind=bid.kind, tags=(MONTHLY_TAG,) if bid.value.endswith("-monthly") else (),
                  finished_at=_time(d["finished"]), depends_on=tuple(BackupId(x) for x in d.get("depends_on", [])),
                  valid=d.get("valid", True))


def test_there_are_golden_histories() -> None:
    assert len(CASES) >= 7


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_history(path: Path) -> None:
    case = json.loads(path.read_text())
    where = case["where"]
    defaults = Settings().retention
    cfg = RetentionPolicyConfig(**case["policy"]) if "policy" in case else getattr(defaults, where)
    sets = [_ref(d) for d in case["sets"]]
    unreadable = [Unreadable(u["id"], u["reason"]) for u in case.get("unreadable", [])]
    if "refused" in case:
        with pytest.raises(ConfigError) as e:
            plan_prune(sets, policy_of(cfg), _time(case["now"]), where=where, unreadable=unreadable)
        assert case["refused"] in str(e.value)
        return
    plan = plan_prune(sets, policy_of(cfg), _time(case["now"]), where=where, unreadable=unreadable)
    rows = {r.id: r for r in plan.rows()}
    assert set(rows) == set(case["expect"]), "every set gets exactly one row"
    for sid, (action, reason) in case["expect"].items():
        assert rows[sid].where == where
        assert (rows[sid].action, reason in rows[sid].reason) == (action, True), (sid, rows[sid].reason)
    assert [i.value for i in plan.order] == case["order"]


# ----------------------------------------------------------------------------- rails as properties

T0 = datetime(2026, 1, 1, 2, tzinfo=UTC)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[SetRef], datetime]:
    """Chains as the scheduler makes them: fulls, incrementals on the newest set, differentials on
    the newest full, some sets failing verification, random gaps."""
    sets: list[SetRef] = []
    t = T0
    last_full: SetRef | None = None
    for _ in range(draw(st.integers(1, 30))):
        t += timedelta(hours=draw(st.integers(1, 60)))
        kind = draw(st.sampled_from([BackupKind.FULL, BackupKind.INCREMENTAL, BackupKind.DIFFERENTIAL]))
        monthly = kind is BackupKind.FULL and draw(st.booleans()) and draw(st.booleans())
        if last_full is None:
            kind = BackupKind.FULL
        tags = (MONTHLY_TAG,) if monthly else ()
        deps: tuple[BackupId, ...] = ()
        if kind is BackupKind.INCREMENTAL:
            parent = sets[-1]
            deps = tuple(sorted({parent.id, *parent.depends_on}))
        elif kind is BackupKind.DIFFERENTIAL:
            assert last_full is not None
            deps = (last_full.id,)
        ref = SetRef(BackupId.make(t, kind, tags), kind, tags, t + timedelta(minutes=5), deps,
                     valid=draw(st.integers(0, 5)) > 0)
        sets.append(ref)
        if kind is BackupKind.FULL:
            last_full = ref
    now = t + timedelta(hours=draw(st.integers(-30, 24 * 400)))
    return sets, now


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.sampled_from(["local", "remote"]), st.integers(0, 2))
def test_rails_hold_for_any_history(hist: tuple[list[SetRef], datetime], where: str, keep_last: int) -> None:
    sets, now = hist
    cfg = getattr(Settings().retention, where).model_copy(update={"keep_last": keep_last})
    try:
        plan = plan_prune(sets, policy_of(cfg), now, where=where)
    except ConfigError as e:  # refused: only when the policy alone would remove every set
        assert keep_last == 0 and "would remove every" in e.message
        return
    kept = {d.id for d in plan.decisions if d.keep}
    by_id = {s.id: s for s in sets}
    removed = [d.id for d in plan.decisions if not d.keep]
    assert kept, "never every set"
    assert sorted(plan.order) == sorted(removed)
    valid_fulls = [s for s in sets if s.kind is BackupKind.FULL and s.valid and s.finished_at <= now]
    if valid_fulls:
        newest = max(valid_fulls, key=lambda s: (s.finished_at, s.id))
        assert newest.id in kept
        assert all(s.id in kept for s in sets if (s.finished_at, s.id) > (newest.finished_at, newest.id))
    else:
        assert not removed, "no valid full: nothing removed"
    for k in kept:
        assert not set(by_id[k].depends_on) & set(removed), f"kept {k} lost a dependency"
    position = {bid: i for i, bid in enumerate(plan.order)}
    for bid in plan.order:  # dependents go first
        for dep in by_id[bid].depends_on:
            if dep in position:
                assert position[dep] > position[bid]
    for s in sets:
        if s.finished_at > now:
            assert s.id in kept


# ----------------------------------------------------------------------------- config


def test_defaults_are_the_strategy() -> None:
    r = Settings().retention
    assert (r.local.full_days, r.local.incremental_hours, r.local.differential_days, r.local.monthly_days) == \
        (7, 24, 7, 365)
    assert (r.remote.full_days, r.remote.incremental_hours, r.remote.differential_days, r.remote.monthly_days) == \
        (30, 24, 30, 365)
    assert r.after_backup and r.leftover_grace_hours == 24
    p = policy_of(r.remote)
    assert (p.full, p.differential, p.monthly) == (timedelta(days=30), timedelta(days=30), timedelta(days=365))


@pytest.mark.parametrize(("section", "value", "key"), [
    ({"local": {"full_days": -1}}, None, "retention.local.full_days"),
    ({"remote": {"incremental_hours": "soon"}}, None, "retention.remote.incremental_hours"),
    ({"local": {"keep_last": 1.5}}, None, "retention.local.keep_last"),
    ({"remote": {"monthly_days": float("inf")}}, None, "retention.remote.monthly_days"),
    ({"local": {"weekly_days": 7}}, None, "retention.local.weekly_days"),
    ({"leftover_grace_hours": -3}, None, "retention.leftover_grace_hours"),
    ({"after_backup": "sometimes"}, None, "retention.after_backup"),
    ({"after_backup": "yes"}, None, "retention.after_backup"),
    ({"local": {"keep_last": True}}, None, "retention.local.keep_last"),
    ({"remote": {"full_days": 0, "incremental_hours": 0, "differential_days": 0, "monthly_days": 0,
                 "keep_last": 0}}, None, "retention.remote"),
])
def test_invalid_retention_fails_at_start_naming_the_key(section: dict[str, Any], value: None, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings_from_dict({"retention": section}, source="cfg.toml")
    assert f"config cfg.toml: {key}" in str(e.value)


def test_a_partial_section_keeps_the_other_defaults() -> None:
    s = settings_from_dict({"retention": {"remote": {"full_days": 60}}})
    assert s.retention.remote.full_days == 60 and s.retention.remote.differential_days == 30
    assert s.retention.local.full_days == 7
