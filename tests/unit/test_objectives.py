"""Recovery objectives (pure): durations, the largest gap between restorable sets, extrapolation;
what an in-place restore writes, saves and deletes; the [restore]/[restore_test] config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erp_backup.core.errors import ConfigError
from erp_backup.core.models import BackupId, BackupKind, EntryType, FileEntry, Manifest
from erp_backup.core.objectives import extrapolate, human, max_gap, parse_duration
from erp_backup.inplace import changes
from tests.conftest import make_settings

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
H = 3600.0


@pytest.mark.parametrize(("text", "seconds"), [("4h", 4 * H), ("90m", 5400), ("1h30m", 5400), ("2d", 172800),
                                               ("30s", 30), (3600, 3600), ("3600", 3600), ("1.5h", 5400)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "4x", "h", "-1h", 0, True, "1h-", None, [1]])
def test_bad_durations_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(bad)


def test_gap_names_the_sets_around_it() -> None:
    sets = [("a", NOW - timedelta(hours=6)), ("b", NOW - timedelta(hours=5)), ("c", NOW - timedelta(hours=2)),
            ("d", NOW - timedelta(hours=1))]
    g = max_gap(sets, NOW)
    assert g is not None and g.seconds == 3 * H and (g.after, g.before) == ("b", "c")


def test_gap_from_the_window_start_when_an_older_set_exists() -> None:
    sets = [("old", NOW - timedelta(days=3)), ("x", NOW - timedelta(hours=20)), ("y", NOW - timedelta(hours=19))]
    g = max_gap(sets, NOW)
    assert g is not None and g.seconds == 4 * H and g.after is None and g.before == "x"


def test_short_history_counts_from_its_first_set() -> None:
    sets = [("x", NOW - timedelta(hours=3)), ("y", NOW - timedelta(hours=2, minutes=30))]
    g = max_gap(sets, NOW)
    assert g is not None and g.seconds == 1800
    assert max_gap(sets[:1], NOW) is None


times = st.lists(st.integers(min_value=0, max_value=3 * 86400), min_size=2, max_size=40, unique=True)


@given(times)
def test_gap_is_bounded_by_the_window_and_every_consecutive_pair(offsets: list[int]) -> None:
    sets = [(str(o), NOW - timedelta(seconds=o)) for o in offsets]
    g = max_gap(sets, NOW)
    inside = sorted(o for o in offsets if o <= 86400)
    if g is None:
        assert len(inside) < 2 and not (inside and len(inside) < len(offsets))
        return
    assert 0 <= g.seconds <= 86400
    pts = sorted(set(inside + ([86400] if len(inside) < len(offsets) and inside else [])))
    assert g.seconds == max(b - a for a, b in zip(pts, pts[1:], strict=False))


@given(st.floats(0.01, 1e5), st.integers(1, 10**12), st.integers(0, 10**12))
def test_extrapolation_never_below_the_measure_and_linear(t: float, restored: int, current: int) -> None:
    x = extrapolate(t, restored, current)
    assert x >= t
    if current > restored:
        assert x == pytest.approx(t * current / restored)


def test_human() -> None:
    assert human(3 * H) == "3h" and human(90) == "90 s" and human(2 * 86400 + 60) == "2d 1m"
    assert human(3.5 * H) == "3h 30m" and human(86400) == "1d" and human(4.2) == "4.2 s"


def fe(path: str, kind: EntryType = EntryType.FILE, size: int = 1, mtime: int = 1, mode: int = 0o644,
       target: str | None = None) -> FileEntry:
    return FileEntry(path, kind, mode, mtime, size if kind is EntryType.FILE else 0, 0, 0, target=target)


def manifest(files: list[FileEntry]) -> Manifest:
    return Manifest(BackupId("20261129T100000Z-full"), BackupKind.FULL, NOW, NOW, "h", "t", "/srv", files=tuple(files))


def test_changes_write_only_what_differs_and_delete_what_the_set_lacks() -> None:
    index = [fe("a", EntryType.DIR), fe("a/same"), fe("a/changed", size=2), fe("new"), fe("clash"),
             fe("link", EntryType.SYMLINK, target="a/same")]
    live = [fe("a", EntryType.DIR), fe("a/same"), fe("a/changed", size=3), fe("extra"),
            fe("clash", EntryType.DIR), fe("clash/inner"), fe("link", EntryType.SYMLINK, target="elsewhere")]
    c = changes(manifest(index), live)
    assert {e.path for e in c.write} == {"a/changed", "new", "clash", "link"}
    assert {e.path for e in c.delete} == {"extra", "clash", "clash/inner"}
    assert {e.path for e in c.saved} == {"a/changed", "extra", "clash/inner", "link", "clash"}
    assert {e.path for e in c.dirs} == {"a"}
    assert set(c.created) == {"new", "clash"}


def test_restore_config_keys(tmp_path: object) -> None:
    from erp_backup.config import settings_from_dict

    base = make_settings(tmp_path)  # type: ignore[arg-type]
    data = {"storage": {"local_dir": str(base.storage.local_dir)},
            "restore": {"stop": [["systemctl", "stop", "gunicorn"]], "max_age": "2h", "command_timeout": "90s"},
            "restore_test": {"rto_target": "3h", "rpo_target": "30m"}}
    s = settings_from_dict(data)
    assert s.restore.max_age == 2 * H and s.restore.command_timeout == 90
    assert s.restore_test.rto_target == 3 * H and s.restore_test.rpo_target == 1800
    for bad in ({"restore": {"stop": [[]]}}, {"restore": {"stop": "systemctl stop x"}},
                {"restore_test": {"rpo_target": "soon"}}, {"restore": {"shell": "x"}}):
        with pytest.raises(ConfigError):
            settings_from_dict({**data, **bad})
    assert settings_from_dict({**data, "restore": {"max_age": "off"}}).restore.max_age is None
