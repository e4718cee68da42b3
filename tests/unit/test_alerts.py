"""Alert audiences: which automation reaches which audience, the integrity classes, the setup's
targets per audience (all offline: the e2e test in tests/e2e/test_operations.py delivers them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erp_backup import alerts
from erp_backup.core.errors import (
    ConfigError,
    CryptoError,
    DatabaseError,
    IntegrityError,
    RestoreError,
    StorageError,
)
from erp_backup.prefect_setup import AUTOMATIONS_FILE, drop_unset_actions, notify_urls, render_automations

ADMINS, SECURITY = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
SECURITY_ALERTS = {"erp-backup: integrity check failed", "erp-backup: restore test missed RTO/RPO"}


def rendered(security: str | None) -> dict[str, list[str]]:
    autos = drop_unset_actions(render_automations(AUTOMATIONS_FILE.read_text(), {
        "NOTIFY_BLOCK_ID": ADMINS, "NOTIFY_SECURITY_BLOCK_ID": security,
        "LATE_INCREMENTAL_S": 4500, "LATE_FULL_S": 93600}))
    return {a["name"]: [x["block_document_id"] for x in a["actions"]] for a in autos}


def test_administrators_get_every_alert_the_security_team_only_theirs() -> None:
    routes = rendered(SECURITY)
    assert all(ADMINS in blocks for blocks in routes.values()), routes
    assert {n for n, blocks in routes.items() if SECURITY in blocks} == SECURITY_ALERTS
    assert routes["erp-backup: incremental late"] == [ADMINS]  # lateness is the administrators' alone


def test_without_security_targets_only_the_administrators_actions_remain() -> None:
    routes = rendered(None)
    assert set(routes) >= SECURITY_ALERTS
    assert all(blocks == [ADMINS] for blocks in routes.values()), routes


def test_an_automation_left_without_actions_is_refused() -> None:
    with pytest.raises(ConfigError, match="no action left"):
        drop_unset_actions([{"name": "x", "actions": [{"type": "send-notification", "block_document_id": None}]}])


def test_the_integrity_automation_matches_the_event_the_flows_emit() -> None:
    import yaml

    doc = yaml.safe_load(AUTOMATIONS_FILE.read_text())
    (auto,) = [a for a in doc["automations"] if a["name"] == "erp-backup: integrity check failed"]
    assert auto["trigger"]["expect"] == [alerts.INTEGRITY_EVENT]
    assert auto["trigger"]["match"]["prefect.resource.id"] == "erp-backup.set.*"


@pytest.mark.parametrize(("problem", "cls"), [
    ("set 20261129T010000Z-full: bad signature: SHA256SUMS does not match SHA256SUMS.sig", "signature"),
    ("set 20261129T010000Z-full: SHA256SUMS is not signed (no SHA256SUMS.sig)", "signature"),
    ("set X: SHA256SUMS.sig is signed by an untrusted key ABCD", "signature"),
    ("20261129T010000Z-full/files.tar.zst: sha256 mismatch", "checksum"),
    ("20261129T010000Z-full: needs set Y, which is no longer in /b", "checksum"),
    ("20261129T010000Z-full/manifest.json is readable by group or others (mode 0644, should be 0600)", "permission"),
    ("cannot read /b/x/files.tar.zst: [Errno 13] Permission denied", "permission"),
])
def test_problem_classes(problem: str, cls: str) -> None:
    assert alerts.classify(problem) == cls


@given(st.text(max_size=200), st.sampled_from(["signature", "not signed", "signed by"]), st.text(max_size=50))
def test_a_signature_problem_is_always_a_signature_problem(before: str, word: str, after: str) -> None:
    assert alerts.classify(before + word + after) == "signature"


@given(st.text(max_size=300))
def test_every_problem_has_a_class(problem: str) -> None:
    assert alerts.classify(problem) in alerts.CLASSES


def test_refusals_that_are_not_about_integrity_send_no_security_alert() -> None:
    assert alerts.classify_error(CryptoError("wrong passphrase for the restore key", hint="h")) is None
    assert alerts.classify_error(DatabaseError("cannot connect", hint="h")) is None
    bad = CryptoError("set X: bad signature: SHA256SUMS does not match", hint="h")
    assert alerts.classify_error(bad) == "signature"
    assert alerts.classify_error(IntegrityError("set X does not match its signed checksums: sha256", hint="h")) \
        == "checksum"
    assert alerts.classify_error(PermissionError(13, "Permission denied")) == "permission"
    damaged = RestoreError("backup set X is damaged: SHA256SUMS and manifest.json disagree on the artifacts' "
                           "checksums", hint="pick another set")
    assert alerts.classify_error(damaged) == "checksum"
    assert alerts.classify_error(RestoreError("target directory /x is not empty", hint="h")) is None
    assert alerts.classify_error(StorageError("cannot read /b: permission denied", hint="h")) == "permission"


def test_exposed_files_names_wide_modes_and_follows_no_link(tmp_path: Path) -> None:
    d = tmp_path / "20261129T010000Z-full"
    d.mkdir(mode=0o700)
    (d / "SHA256SUMS").write_text("x")
    os.chmod(d / "SHA256SUMS", 0o600)
    assert alerts.exposed_files(d) == []
    (d / "files.tar.zst").write_text("x")
    os.chmod(d / "files.tar.zst", 0o640)
    outside = tmp_path / "outside"
    outside.write_text("x")
    os.chmod(outside, 0o666)
    (d / "link").symlink_to(outside)
    os.chmod(d, 0o750)
    got = alerts.exposed_files(d)
    assert len(got) == 2 and all(alerts.classify(p) == "permission" for p in got), got
    assert "0750" in got[0] and "files.tar.zst" in got[1] and "0640" in got[1]
    assert alerts.exposed_files(tmp_path / "gone") == []


def test_emitting_without_a_prefect_api_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert alerts.emit_integrity("20261129T010000Z-full", "bad signature", "signature", "verify") is False
    with pytest.raises(ValueError):
        alerts.emit_integrity("x", "p", "nonsense", "verify")


def test_security_targets_from_the_command_line_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERP_BACKUP_NOTIFY_SECURITY", raising=False)
    opt, env = "--notify-security", "ERP_BACKUP_NOTIFY_SECURITY"
    assert notify_urls(None, opt, env) is None  # keep the stored ones
    assert notify_urls(["none"], opt, env) == ()
    monkeypatch.setenv("SEC_HOOKS", "json://127.0.0.1:9/a json://127.0.0.1:9/b")
    assert notify_urls(["env:SEC_HOOKS"], opt, env) == ("json://127.0.0.1:9/a", "json://127.0.0.1:9/b")
    monkeypatch.setenv(env, "json://127.0.0.1:9/c")
    assert notify_urls(None, opt, env) == ("json://127.0.0.1:9/c",)
    with pytest.raises(ConfigError, match="--notify-security URL with scheme 'nope'"):
        notify_urls(["nope://x"], opt, env)
    with pytest.raises(ConfigError, match="cannot be combined"):
        notify_urls(["none", "json://127.0.0.1:9/a"], opt, env)


def test_one_event_per_failed_set_then_one_for_the_rest() -> None:
    from erp_backup.verify import VerifyReport

    ok = VerifyReport("20261129T000000Z-full", "full")
    sig = VerifyReport("20261129T010000Z-incr", "quick", ("a: sha256 mismatch", "set x: bad signature: SHA256SUMS"))
    bad = [VerifyReport(f"20261129T0{i}0000Z-incr", "full", (f"{i}: sha256 mismatch",)) for i in range(2, 10)]
    events = alerts.planned_events([ok, sig, *bad, VerifyReport("20261129T110000Z-incr", "full",
                                                                 ("f is readable by group or others",))])
    assert len(events) == alerts.MAX_EVENTS + 1
    assert events[0] == (sig.set_id, "set x: bad signature: SHA256SUMS", "signature")  # signature wins
    assert [c for _, _, c in events[1:alerts.MAX_EVENTS]] == ["checksum"] * (alerts.MAX_EVENTS - 1)
    sid, problem, cls = events[-1]
    assert sid == "5 more sets" and cls == "permission" and "20261129T110000Z-incr" in problem
    assert alerts.planned_events([ok]) == []
