"""Verification records beside the sets: written atomically and privately, read defensively."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from erp_backup import verdicts
from erp_backup.core.models import BackupId

SID = "20261128T020000Z-full"


def test_last_record_wins_and_each_place_has_its_own(tmp_path: Path) -> None:
    (tmp_path / SID).mkdir()
    p = verdicts.record(tmp_path, SID, ok=False, level="full", problems=["files.tar.zst: checksum mismatch"])
    assert p.name == f"{SID}.verified.json" and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert "checksum mismatch" in verdicts.failed(tmp_path)[BackupId(SID)]
    assert verdicts.failed(tmp_path, "remote") == {}
    verdicts.record(tmp_path, SID, ok=True, level="quick")
    assert verdicts.failed(tmp_path) == {}
    verdicts.record(tmp_path, SID, ok=False, level="remote", where="remote", problems=["gone"])
    assert set(verdicts.failed(tmp_path, "remote")) == {BackupId(SID)} and verdicts.failed(tmp_path) == {}
    assert sorted(os.listdir(tmp_path)) == sorted([SID, f"{SID}.verified.json", f"{SID}.remote-verified.json"])


def test_records_that_cannot_vouch_for_their_set_count_as_failed(tmp_path: Path) -> None:
    bad = {
        "20261101T020000Z-full": b"not json",
        "20261102T020000Z-full": json.dumps({"id": SID, "result": "passed"}).encode(),  # another set's
        "20261103T020000Z-full": json.dumps({"id": "20261103T020000Z-full", "result": "fine"}).encode(),
        "20261104T020000Z-full": b"[]",
        "20261105T020000Z-full": b" " * (2 << 20),
    }
    for sid, body in bad.items():
        (tmp_path / f"{sid}.verified.json").write_bytes(body)
    os.symlink("/etc/passwd", tmp_path / "20261106T020000Z-full.verified.json")
    (tmp_path / "nonsense.verified.json").write_text("{}")  # not a set id: ignored
    failed = verdicts.failed(tmp_path)
    assert set(failed) == {BackupId(s) for s in [*bad, "20261106T020000Z-full"]}
    assert all("cannot be read" in why for why in failed.values())


def test_orphans_are_records_whose_set_is_gone(tmp_path: Path) -> None:
    (tmp_path / SID).mkdir()
    verdicts.record(tmp_path, SID, ok=True, level="full")
    gone = verdicts.record(tmp_path, "20261001T020000Z-full", ok=True, level="full")
    assert verdicts.orphans(tmp_path) == [gone]
    verdicts.forget(tmp_path, "20261001T020000Z-full")
    assert verdicts.orphans(tmp_path) == [] and not gone.exists()
