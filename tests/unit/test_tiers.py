"""Data tiers: the [tiers] section, which paths are critical, the tiers' targets and late windows,
and the Nagios verdict per tier (pure: no I/O but a config file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erp_backup import nagios, tiers
from erp_backup.config import settings_from_dict
from erp_backup.core.errors import ConfigError
from erp_backup.nagios_config import NagiosConfig

H = 3600.0


def test_defaults_are_the_strategys_and_the_restore_test_targets_stay_the_critical_ones() -> None:
    crit, non = tiers.of(settings_from_dict({}))
    assert (crit.rto_s, crit.rpo_s, non.rto_s, non.rpo_s) == (4 * H, 1 * H, 24 * H, 24 * H)
    assert crit.database and crit.paths == () and crit.covers == "database"
    crit, _ = tiers.of(settings_from_dict({"restore_test": {"rto_target": "3h", "rpo_target": "30m"}}))
    assert (crit.rto_s, crit.rpo_s) == (3 * H, 0.5 * H)  # the existing keys keep working


def test_tiers_section_sets_paths_and_targets() -> None:
    s = settings_from_dict({"project": {"include": ["app", "config", "media"]},
                            "restore_test": {"rpo_target": "30m"},
                            "tiers": {"critical_paths": ["config/", "./media/contracts", "config"],
                                      "critical": {"rto": "2h", "rpo": "15m"},
                                      "non_critical": {"rto": "2d", "rpo": "36h"}}})
    crit, non = tiers.of(s)
    assert crit.paths == ("config", "media/contracts")  # normalised, once each
    assert (crit.rto_s, crit.rpo_s, non.rto_s, non.rpo_s) == (2 * H, 0.25 * H, 48 * H, 36 * H)
    assert crit.covers == "database + config, media/contracts"


@pytest.mark.parametrize("tiers_section", [
    {"critical_paths": ["/etc/erp"]}, {"critical_paths": ["../outside"]}, {"critical_paths": [""]},
    {"critical": {"rto": "soon"}}, {"critical": {"rto": "-1h"}}, {"unknown": 1}, {"critical": {"rtp": "1h"}},
])
def test_bad_tiers_are_refused(tiers_section: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        settings_from_dict({"tiers": tiers_section})


def test_a_critical_path_that_is_never_backed_up_is_refused() -> None:
    s = settings_from_dict({"project": {"include": ["app"]}, "tiers": {"critical_paths": ["config"]}})
    with pytest.raises(ConfigError, match="not under any \\[project\\] include") as e:
        tiers.of(s)
    assert e.value.hint and "include" in e.value.hint


@pytest.mark.parametrize(("path", "roots", "under"), [
    ("config/settings.py", ["config"], True), ("config", ["config"], True), ("configs/x", ["config"], False),
    ("a/b/c", ["."], True), ("media/contracts/1.pdf", ["media/contracts"], True), ("media/x.png", ["media/contracts"],
                                                                                     False),
    ("x", [], False),
])
def test_is_under(path: str, roots: list[str], under: bool) -> None:
    assert tiers.is_under(path, roots) is under


@given(st.lists(st.tuples(st.sampled_from(["config/a", "config/b/c", "app/x", "media/y", "configx"]),
                          st.integers(0, 10**12))),
       st.lists(st.sampled_from(["config", "app", "media"]), unique=True))
def test_critical_share_is_part_of_the_whole(files: list[tuple[str, int]], roots: list[str]) -> None:
    part, total = tiers.critical_share(files, roots)
    assert 0 <= part <= total == sum(n for _, n in files)
    assert part == sum(n for p, n in files if any(p == r or p.startswith(r + "/") for r in roots))


@given(st.floats(1, 400 * 86400))
def test_late_window_leaves_a_grace_after_the_rpo(rpo: float) -> None:
    w = tiers.late_window(rpo)
    assert rpo + 900 - 1 <= w <= rpo * 1.09 + 901


def test_late_windows_of_the_default_tiers_are_setups_defaults(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from erp_backup.prefect_setup import DEFAULT_LATE_FULL_S, DEFAULT_LATE_INCREMENTAL_S

    assert (tiers.late_window(H), tiers.late_window(24 * H)) == (DEFAULT_LATE_INCREMENTAL_S, DEFAULT_LATE_FULL_S)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[tiers.critical]\nrpo = "30m"\n[tiers.non_critical]\nrpo = "12h"\n')
    assert tiers.setup_windows(str(cfg)) == (0.5 * H + 900, 13 * H)
    monkeypatch.delenv("ERP_BACKUP_CONFIG", raising=False)
    with pytest.raises(ConfigError):
        tiers.setup_windows(str(tmp_path / "missing.toml"))  # a config named and missing is an error


def doc(rpo_s: float, non_s: float) -> dict[str, object]:
    return {"kinds": {"full": {"set": "f", "age_seconds": rpo_s, "verification": {"outcome": "passed"}}},
            "rpo": {"seconds": rpo_s},
            "tiers": {"critical": {"seconds": rpo_s}, "non_critical": {"seconds": non_s}},
            "restore_test": None, "problems": [], "usage": {}}


def test_nagios_judges_the_non_critical_tier_against_its_own_thresholds() -> None:
    t = NagiosConfig(full_age=("100d", "200d"), rpo=("10d", "20d"), non_critical_rpo=("2h", "3h")).thresholds()
    v = nagios.evaluate(doc(2.5 * H, 2.5 * H), t)
    assert v.code == nagios.WARNING and "non-critical tier RPO 2h 30m (limit 2h)" in v.line, v.line
    assert "rpo_non_critical_s=9000;7200;10800" in v.line.split("|")[1]
    v = nagios.evaluate(doc(60, 60), NagiosConfig().thresholds())
    assert v.code == nagios.OK and "rpo_non_critical_s=60;86400;172800" in v.line, v.line


def test_nagios_rpo_thresholds_follow_the_tiers_unless_set() -> None:
    t = NagiosConfig().thresholds((0.5 * H, 12 * H))
    assert (t.rpo, t.non_critical_rpo) == ((0.5 * H, H), (12 * H, 24 * H))
    t = NagiosConfig(rpo=("2h", "3h")).thresholds((0.5 * H, 12 * H))  # set in [nagios]: kept
    assert (t.rpo, t.non_critical_rpo) == ((2 * H, 3 * H), (12 * H, 24 * H))
    d, static = NagiosConfig().thresholds((H, 24 * H)), NagiosConfig().thresholds()
    assert (d.rpo, d.non_critical_rpo) == (static.rpo, static.non_critical_rpo)  # the default tiers: the same
