"""Off-site pieces without a server: which sets the upload sends (catch-up), remote names, [remote] config."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erp_backup import upload
from erp_backup.config import RemoteConfig, settings_from_dict
from erp_backup.core.errors import ConfigError
from erp_backup.core.models import BackupId, Manifest
from erp_backup.remote_sets import safe_name
from erp_backup.upload import to_send
from tests.unit.test_chain import DIFF, FAST, FULL, INCR, T0, mk

REMOTE = RemoteConfig(block="b", catch_up_days=2, catch_up_monthly_days=40)
ENC = {"recipients": ["0123456789ABCDEF0123456789ABCDEF01234567"], "public_keys": "/etc/k.asc",
       "signers": ["0123456789ABCDEF0123456789ABCDEF01234567"]}


def history() -> list[Manifest]:
    """An old monthly (20 days ago), an old full + incremental (10 days ago), a full and two incrementals now."""
    m = mk(T0 - timedelta(days=20), FULL, tags=("monthly",))
    f0 = mk(T0 - timedelta(days=10), FULL)
    i0 = mk(T0 - timedelta(days=10, hours=-1), INCR, deps=(f0.id,), parent=f0.id)
    f1 = mk(T0, FULL)
    i1 = mk(T0 + timedelta(hours=1), INCR, deps=(f1.id,), parent=f1.id)
    i2 = mk(T0 + timedelta(hours=2), INCR, deps=(f1.id, i1.id), parent=i1.id)
    return [m, f0, i0, f1, i1, i2]


def test_catch_up_sends_the_window_oldest_first_and_names_older_sets() -> None:
    m, f0, i0, f1, i1, i2 = history()
    now = T0 + timedelta(hours=2)
    ids, warnings = to_send(REMOTE, history(), set(), now=now)
    assert ids == [m.id, f1.id, i1.id, i2.id]  # the monthly is inside its own, longer window
    assert len(warnings) == 1 and f0.id.value in warnings[0] and i0.id.value in warnings[0]
    ids, warnings = to_send(REMOTE, history(), {f1.id, i1.id, m.id}, now=now)
    assert ids == [i2.id]
    # the newest set always goes, whatever the window; a set outside it takes its missing parent along
    ids, _ = to_send(RemoteConfig(block="b", catch_up_days=0, catch_up_monthly_days=0), history(), set(),
                     now=T0 + timedelta(days=30), newest=i0.id)
    assert ids == [f0.id, i0.id]


def test_the_remote_retention_shortens_the_window() -> None:
    from types import SimpleNamespace

    m, f0, i0, f1, i1, i2 = history()
    kept = SimpleNamespace(full_days=30, incremental_hours=1.5, differential_days=30, monthly_days=365)
    wide = RemoteConfig(block="b", catch_up_days=30, catch_up_monthly_days=400)
    ids, warnings = to_send(wide, history(), set(), now=T0 + timedelta(hours=2), kept=kept)
    # incrementals older than 1.5 h would be pruned remotely at once: not sent (i1 goes as i2's parent)
    assert ids == [m.id, f0.id, f1.id, i1.id, i2.id]
    assert i0.id.value in warnings[0]
    assert upload.window_days(wide, m, kept) == 365 and upload.window_days(wide, f0, None) == 30


def test_explicit_ids_and_a_parent_that_is_nowhere() -> None:
    _, f0, i0, f1, i1, i2 = history()
    ids, warnings = to_send(REMOTE, history(), {f1.id}, now=T0, wanted=[i2.id])
    assert ids == [i1.id, i2.id] and warnings == []
    ids, warnings = to_send(REMOTE, [i1, i2], set(), now=T0, wanted=[i2.id])
    assert ids == [i1.id, i2.id]
    assert len(warnings) == 1 and f1.id.value in warnings[0] and "neither remote nor local" in warnings[0]


@FAST
@given(st.lists(st.sampled_from([FULL, INCR, DIFF]), min_size=1, max_size=12), st.data())
def test_whatever_is_sent_is_oldest_first_and_never_leaves_a_parent_behind(kinds: list, data: st.DataObject) -> None:
    sets: list[Manifest] = []
    for n, kind in enumerate(kinds):
        fulls = [s for s in sets if s.kind is FULL]
        if kind is not FULL and not fulls:
            kind = FULL
        when = T0 + timedelta(hours=n * 7)
        if kind is FULL:
            sets.append(mk(when, FULL))
        elif kind is DIFF:
            sets.append(mk(when, DIFF, deps=(fulls[-1].id,), parent=fulls[-1].id))
        else:
            prev = sets[-1]
            deps = tuple(dict.fromkeys((*prev.depends_on, prev.id)))
            sets.append(mk(when, INCR, deps=deps, parent=prev.id))
    complete = set(data.draw(st.sets(st.sampled_from([s.id for s in sets]))))
    days = data.draw(st.floats(0, 5))
    now = sets[-1].finished_at
    ids, _ = to_send(RemoteConfig(block="b", catch_up_days=days), sets, complete, now=now, newest=sets[-1].id)
    assert ids == sorted(set(ids)) and not complete & set(ids)
    by_id = {s.id: s for s in sets}
    for sid in ids:
        assert all(d in complete or d in ids for d in by_id[sid].depends_on)
    if sets[-1].id not in complete:
        assert ids[-1] == sets[-1].id


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", ".hidden", "x\n", "a..b", "-x", "a" * 201, "é"])
def test_hostile_object_names_are_not_set_files(name: str) -> None:
    assert not safe_name(name)


@pytest.mark.parametrize("name", ["files.tar.zst.gpg", "db.postgresql.pgdump.zst.gpg", "SHA256SUMS.sig", "x_1-2+3"])
def test_set_file_names(name: str) -> None:
    assert safe_name(name)


@pytest.mark.parametrize(("remote", "fragment"), [
    ({"block": ""}, "remote.block"),
    ({"block": "b", "prefix": "../x"}, "remote.prefix"),
    ({"block": "b", "prefix": "a//b"}, "remote.prefix"),
    ({"block": "b", "part_size_mib": 1}, "remote.part_size_mib"),
    ({"block": "b", "bucket": "x"}, "remote.bucket: unknown key"),
])
def test_remote_config_refusals(remote: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings_from_dict({"encryption": ENC, "remote": remote}, source="c.toml")
    assert fragment in str(e.value) and " — " in str(e.value)


def test_remote_config_defaults() -> None:
    s = settings_from_dict({"encryption": ENC, "remote": {"block": "erp-offsite"}}, source="c.toml")
    assert s.remote == RemoteConfig(block="erp-offsite")
    assert (s.remote.prefix, s.remote.catch_up_days, s.remote.catch_up_monthly_days) == ("django_erp", 30, 366)
    assert BackupId.is_valid("20261128T020000Z-full")
