"""An untrusted store: a damaged set is listed as damaged, never built on, never restored, and never
stops the other sets from being backed up, listed, verified or restored. Its dependents are named
with the member they lack.

One history, built once: F1 (02:00), I1 (03:00, on F1), F2 (04:00), I2 (05:00, on F2), D2 (06:00, on F2).
Each test works on its own copy of it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from erp_backup import cli
from erp_backup import verify as verifier
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.backup import choose_parent
from erp_backup.config import Settings
from erp_backup.core import manifest as mf
from erp_backup.core.chain import Damaged
from erp_backup.core.errors import ChainError, IntegrityError, RestoreError
from erp_backup.core.models import Artifact, BackupId, BackupKind, Manifest
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from tests.conftest import (
    cli_env,
    diff_states,
    flip_byte,
    make_settings,
    make_small_project,
    run_cli,
    tree_state,
    write_config,
    write_file,
)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
LATE = T0 + timedelta(days=1)
MANIFEST, SUMS, FILES = "manifest.json", "SHA256SUMS", "files.tar.zst"
NAMES = ("F1", "I1", "F2", "I2", "D2")


@dataclass
class History:
    settings: Settings
    repo: LocalRepository
    ids: dict[str, str]  # F1 ... D2 -> set id
    states: dict[str, dict[str, tuple[object, ...]]]  # the project tree each set captured
    config: Path

    def dir(self, name: str) -> Path:
        return self.repo.set_dir(self.ids[name])


def _settings(base: Path) -> Settings:
    return make_settings(base, root=base / "erp", key_files=["manage.py"])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("history")
    root = make_small_project(base / "erp")
    s = _settings(base)
    plan = [("F1", BackupKind.FULL), ("I1", BackupKind.INCREMENTAL), ("F2", BackupKind.FULL),
            ("I2", BackupKind.INCREMENTAL), ("D2", BackupKind.DIFFERENTIAL)]
    ids, states = {}, {}
    for n, (name, kind) in enumerate(plan):
        write_file(root / f"app/step{n}.py", f"step = {n}\n" * (n + 1))
        ids[name] = run_backup(s, kind, now=T0 + timedelta(hours=n)).manifest.id.value
        states[name] = tree_state(root)
    (base / "ids.json").write_text(json.dumps({"ids": ids, "states": {k: {p: list(v) for p, v in st.items()}
                                                                       for k, st in states.items()}}))
    return base


@pytest.fixture
def h(built: Path, tmp_path: Path) -> History:
    base = tmp_path / "w"
    shutil.copytree(built, base, symlinks=True)
    s = _settings(base)
    data = json.loads((base / "ids.json").read_text())
    states = {k: {p: tuple(v) for p, v in st.items()} for k, st in data["states"].items()}
    return History(s, LocalRepository(s.storage.local_dir), data["ids"], states,
                   write_config(tmp_path / "config.toml", s))


def reseal(set_dir: Path, text: bytes) -> None:
    """Write ``text`` as the manifest with a matching SHA256SUMS: a consistent, crafted set."""
    m = mf.loads(text)
    (set_dir / MANIFEST).write_bytes(text)
    sums = [*m.artifacts, Artifact(MANIFEST, "manifest", len(text), hashlib.sha256(text).hexdigest())]
    (set_dir / SUMS).write_text(mf.sha256sums(sums))


def _edit_header(d: Path, field: str) -> None:
    """Change one byte of one header field so that the manifest still parses."""
    text = (d / MANIFEST).read_text()
    m = re.search(rf'"{field}": "[^"]*?(\d)', text)
    assert m is not None, field
    i = m.start(1)
    (d / MANIFEST).write_text(text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:])
    mf.loads((d / MANIFEST).read_bytes())  # still a manifest


def _crafted(d: Path, **change: object) -> None:
    m = mf.loads((d / MANIFEST).read_bytes())
    reseal(d, mf.dumps(replace(m, **change)).encode())  # type: ignore[arg-type]


def _raw_edit(d: Path, old: str, new: str) -> None:
    """Edit the manifest's text so that the model refuses a value, and re-seal SHA256SUMS by hand:
    a consistent set on disk whose manifest no longer describes a possible set."""
    text = (d / MANIFEST).read_text()
    assert old in text, old
    data = text.replace(old, new, 1).encode()
    (d / MANIFEST).write_bytes(data)
    lines = [ln for ln in (d / SUMS).read_text().splitlines() if not ln.endswith(f"  {MANIFEST}")]
    (d / SUMS).write_text("".join(f"{ln}\n" for ln in [*lines, f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}"]))


def _json_edit(d: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Change the manifest's decoded JSON (written back in json.dumps' own layout) and re-seal
    SHA256SUMS by hand: values no tool writes, in a consistent set."""
    doc = json.loads((d / MANIFEST).read_bytes())
    change(doc)
    data = json.dumps(doc, indent=2).encode()
    (d / MANIFEST).write_bytes(data)
    lines = [ln for ln in (d / SUMS).read_text().splitlines() if not ln.endswith(f"  {MANIFEST}")]
    (d / SUMS).write_text("".join(f"{ln}\n" for ln in [*lines, f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}"]))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


# every way a manifest can stop being trustworthy (applied to F2)
MANIFEST_DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped-first-byte": lambda d: flip_byte(d / MANIFEST, 0, 0x01),
    "flipped-middle-byte": lambda d: flip_byte(d / MANIFEST, (d / MANIFEST).stat().st_size // 2, 0x01),
    "changed-id": lambda d: _edit_header(d, "id"),
    "changed-kind": lambda d: (d / MANIFEST).write_text((d / MANIFEST).read_text().replace(
        '"kind": "full"', '"kind": "incremental"', 1)),
    "changed-finished_at": lambda d: _edit_header(d, "finished_at"),
    "truncated": lambda d: _truncate(d / MANIFEST),
    "empty": lambda d: (d / MANIFEST).write_bytes(b""),
    "manifest-deleted": lambda d: (d / MANIFEST).unlink(),
    "sums-deleted": lambda d: (d / SUMS).unlink(),
    "sums-flipped-artifact-line": lambda d: flip_byte(d / SUMS, 3, 0x01),
    "sums-flipped-manifest-line": lambda d: flip_byte(d / SUMS, (d / SUMS).read_text().index(MANIFEST) - 5, 0x01),
    "crafted-other-id": lambda d: _crafted(d, id=BackupId("20261128T040001Z-full")),
    "crafted-other-kind": lambda d: _crafted(d, kind=BackupKind.DIFFERENTIAL),
    "crafted-newer-dependency": lambda d: _crafted(d, depends_on=(BackupId("20261128T070000Z-full"),)),
    # values the model refuses (a review found these stopped list, backup and restore --at)
    "parent-not-an-id": lambda d: _raw_edit(d, '"parent": null', '"parent": "garbage"'),
    "dependency-not-an-id": lambda d: _raw_edit(d, '"depends_on": []', '"depends_on": ["../../etc"]'),
    # a review's: every command (list, verify, restore, backup) ended in an AttributeError traceback
    "tables-not-an-object": lambda d: _json_edit(d, lambda m: m["database"].update(tables=[1])),
    "negative-row-count": lambda d: _json_edit(d, lambda m: m["database"].update(tables={"t": -1})),
}


def list_json(h: History, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert cli.main(["--config", str(h.config), "list", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["sets"]  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- 1. a damaged manifest


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE))
def test_a_damaged_manifest_is_listed_as_damaged_and_blocks_nothing(h: History, damage: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    f2 = h.ids["F2"]
    MANIFEST_DAMAGE[damage](h.dir("F2"))

    # list: every set directory once, by its own name; F2 damaged with a reason; its dependents broken
    rows = {r["id"]: r for r in list_json(h, capsys)}
    assert sorted(rows) == sorted(h.ids.values())  # no set that does not exist, none hidden
    assert rows[f2]["status"] == "damaged" and rows[f2]["reason"], rows[f2]
    assert rows[f2]["finished_at"] is None and rows[f2]["size_bytes"] is None  # nothing of it is trusted
    for n in ("I2", "D2"):
        assert rows[h.ids[n]]["status"] == "broken" and f2 in str(rows[h.ids[n]]["reason"])
    for n in ("F1", "I1"):
        assert rows[h.ids[n]]["status"] == "committed" and rows[h.ids[n]]["reason"] is None

    # never a parent, never blocking: an incremental builds on I1 (the newest intact chain) and says why
    parent, _, _ = choose_parent(h.settings, BackupKind.INCREMENTAL, h.repo)
    assert parent is not None and parent.id.value == h.ids["I1"]
    parent, _, _ = choose_parent(h.settings, BackupKind.DIFFERENTIAL, h.repo)
    assert parent is not None and parent.id.value == h.ids["F1"]
    incr = run_backup(h.settings, BackupKind.INCREMENTAL, now=T0 + timedelta(hours=6))
    assert incr.manifest.parent == BackupId(h.ids["I1"])
    assert f2 not in {d.value for d in incr.manifest.depends_on}
    assert any(f2 in w and "not building on" in w for w in incr.report.warnings), incr.report.warnings
    full = run_backup(h.settings, BackupKind.FULL, now=T0 + timedelta(hours=7))
    assert full.manifest.depends_on == ()

    # restore --at: the newest restorable set before the new ones (I1), naming what it skipped and why
    rep = restore(h.repo, target_dir=h.settings.storage.local_dir.parent / "r", at=T0 + timedelta(hours=5, minutes=30))
    assert rep.set_id == h.ids["I1"]
    assert not diff_states(h.states["I1"], tree_state(h.settings.storage.local_dir.parent / "r"))
    notes = "\n".join(rep.notes)
    for n in ("D2", "I2", "F2"):
        assert f"skipped {h.ids[n]}" in notes, notes
    assert f"needs {f2}, which is damaged" in notes


@pytest.mark.parametrize("field", ["parent", "id", "finished_at", "started_at"])
def test_a_one_byte_header_change_that_parses_never_shows_a_set_that_does_not_exist(
        h: History, field: str, capsys: pytest.CaptureFixture[str]) -> None:
    i2 = h.ids["I2"]
    _edit_header(h.dir("I2"), field)
    rows = {r["id"]: r for r in list_json(h, capsys)}
    assert sorted(rows) == sorted(h.ids.values())
    assert rows[i2]["status"] == "damaged" and "does not match its checksum in SHA256SUMS" in str(rows[i2]["reason"])
    assert rows[i2]["parent"] is None and rows[i2]["finished_at"] is None
    assert all(r["status"] == "committed" for k, r in rows.items() if k != i2)  # D2 needs F2 only
    parent, _, _ = choose_parent(h.settings, BackupKind.INCREMENTAL, h.repo)
    assert parent is not None and parent.id.value == h.ids["D2"]


def test_a_remembered_look_never_hides_a_later_change(h: History, monkeypatch: pytest.MonkeyPatch) -> None:
    """``inspect`` remembers its result for a backup run's repeated looks, keyed by the files' stat:
    a same-size change made right after a look (file times tick coarsely) is still seen."""
    looks: list[str] = []
    real = LocalRepository._inspect

    def counting(self: LocalRepository, backup_id: BackupId, d: Path) -> object:
        looks.append(backup_id.value)
        return real(self, backup_id, d)

    monkeypatch.setattr(LocalRepository, "_inspect", counting)
    f2, d2 = BackupId(h.ids["F2"]), BackupId(h.ids["D2"])
    assert isinstance(h.repo.inspect(d2), Manifest)  # just copied: too fresh to remember
    flip_byte(h.dir("D2") / MANIFEST, 0, 0x01)  # at once, same size
    assert isinstance(h.repo.inspect(d2), Damaged)
    time.sleep(0.3)
    assert isinstance(h.repo.inspect(f2), Manifest) and isinstance(h.repo.inspect(f2), Manifest)
    assert looks.count(f2.value) == 1  # remembered: still for a while, unchanged
    flip_byte(h.dir("F2") / MANIFEST, (h.dir("F2") / MANIFEST).stat().st_size // 2, 0x01)
    assert isinstance(h.repo.inspect(f2), Damaged) and looks.count(f2.value) == 2


def test_a_damaged_newest_set_makes_the_latest_restore_fall_back_naming_it(h: History) -> None:
    MANIFEST_DAMAGE["flipped-first-byte"](h.dir("D2"))
    rep = restore(h.repo, target_dir=h.settings.storage.local_dir.parent / "r")
    assert rep.set_id == h.ids["I2"]
    assert rep.notes[0].startswith(f"skipped {h.ids['D2']}: it is damaged: manifest.json")
    assert not diff_states(h.states["I2"], tree_state(h.settings.storage.local_dir.parent / "r"))


@pytest.mark.parametrize("damage", ["flipped-first-byte", "changed-id", "sums-deleted", "manifest-deleted"])
def test_restore_of_a_named_damaged_set_or_one_that_needs_it_is_refused_clearly(h: History, damage: str) -> None:
    MANIFEST_DAMAGE[damage](h.dir("F2"))
    target = h.settings.storage.local_dir.parent / "r"
    with pytest.raises(RestoreError) as ei:
        restore(h.repo, target_dir=target, backup_id=h.ids["F2"])
    assert f"backup set {h.ids['F2']} is damaged" in str(ei.value) and "another set" in str(ei.value)
    for n in ("I2", "D2"):
        with pytest.raises(ChainError) as ce:
            restore(h.repo, target_dir=target, backup_id=h.ids[n])
        assert f"{h.ids[n]} cannot be restored: it needs {h.ids['F2']}, which is damaged" in str(ce.value)
    assert not target.exists()
    with pytest.raises(IntegrityError, match="is damaged"):
        h.repo.read_header(BackupId(h.ids["F2"]))


def test_a_dependency_that_is_gone_is_named(h: History) -> None:
    shutil.rmtree(h.dir("F2"))
    with pytest.raises(ChainError, match=f"needs {h.ids['F2']}, which is missing"):
        restore(h.repo, target_dir=h.settings.storage.local_dir.parent / "r", backup_id=h.ids["D2"])
    rep = restore(h.repo, target_dir=h.settings.storage.local_dir.parent / "r", at=LATE)
    assert rep.set_id == h.ids["I1"] and f"needs {h.ids['F2']}, which is missing" in rep.notes[0]


def test_a_lone_damaged_full_promotes_or_fails_naming_it(h: History, tmp_path: Path) -> None:
    for n in ("F1", "F2"):
        MANIFEST_DAMAGE["flipped-first-byte"](h.dir(n))
    with pytest.raises(ChainError) as ei:
        choose_parent(h.settings, BackupKind.INCREMENTAL, h.repo)
    assert "no full backup" in str(ei.value) and h.ids["F2"] in str(ei.value) and "is damaged" in str(ei.value)
    s = make_settings(tmp_path / "w", root=h.settings.project.root, missing_parent="full",
                      key_files=["manage.py"])
    res = run_backup(s, BackupKind.INCREMENTAL, now=LATE)
    assert res.manifest.kind is BackupKind.FULL and res.plan.promoted


# ----------------------------------------------------------------------------- 3. restore --at, broken artifacts


ARTIFACT_DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped": lambda d: flip_byte(d / FILES, (d / FILES).stat().st_size // 2, 0x01),
    "truncated": lambda d: _truncate(d / FILES),
    "deleted": lambda d: (d / FILES).unlink(),
}


@pytest.mark.parametrize("damage", list(ARTIFACT_DAMAGE))
@pytest.mark.parametrize("at", [LATE, None], ids=["at", "latest"])
def test_restore_at_skips_sets_whose_chain_fails_its_checksums_naming_each(h: History, damage: str,
                                                                           at: datetime | None) -> None:
    ARTIFACT_DAMAGE[damage](h.dir("F2"))
    target = h.settings.storage.local_dir.parent / "r"
    rep = restore(h.repo, target_dir=target, at=at)
    assert rep.set_id == h.ids["I1"]
    assert not diff_states(h.states["I1"], tree_state(target))
    f2 = h.ids["F2"]
    assert rep.notes[:3] == tuple(
        f"skipped {h.ids[n]}: it " + (f"needs {f2}, which failed verification: " if n != "F2" else
                                      "failed verification: ") + rep.notes[2].split("failed verification: ")[1]
        for n in ("D2", "I2", "F2"))
    assert FILES in rep.notes[2] and f"restoring {h.ids['I1']}" in rep.notes[3]


def test_a_bad_database_dump_only_skips_the_set_that_restores_it(h: History) -> None:
    """D2 needs F2's files, not F2's dump: a broken F2 dump leaves D2 restorable; a broken D2 dump does not."""
    db = next(p for p in h.dir("F2").iterdir() if p.name.startswith("db."))
    flip_byte(db, db.stat().st_size // 2, 0x01)
    rep = restore(h.repo, target_dir=h.settings.storage.local_dir.parent / "r1", at=LATE)
    assert rep.set_id == h.ids["D2"] and not any("skipped" in n for n in rep.notes), rep.notes
    db = next(p for p in h.dir("D2").iterdir() if p.name.startswith("db."))
    flip_byte(db, db.stat().st_size // 2, 0x01)
    rep = restore(h.repo, target_dir=h.settings.storage.local_dir.parent / "r2", at=LATE)
    assert rep.set_id == h.ids["I2"]
    assert rep.notes[0].startswith(f"skipped {h.ids['D2']}: it failed verification: {h.ids['D2']}/{db.name}")


def test_restore_at_with_nothing_left_names_every_set_it_skipped(h: History) -> None:
    ARTIFACT_DAMAGE["flipped"](h.dir("F1"))
    MANIFEST_DAMAGE["truncated"](h.dir("F2"))
    target = h.settings.storage.local_dir.parent / "r"
    with pytest.raises(ChainError) as ei:
        restore(h.repo, target_dir=target, at=LATE)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("no restorable backup set finished at or before")
    for n in NAMES:
        assert h.ids[n] in msg
    assert f"{h.ids['I1']} needs {h.ids['F1']}, which failed verification" in msg
    assert f"{h.ids['D2']} needs {h.ids['F2']}, which is damaged" in msg
    assert not target.exists()


# ----------------------------------------------------------------------------- 2. verify follows the chain


VERIFY_DAMAGE: dict[str, Callable[[Path], None]] = {
    **{f"files-{k}": v for k, v in ARTIFACT_DAMAGE.items()},
    "manifest-flipped": MANIFEST_DAMAGE["flipped-middle-byte"],
    "sums-deleted": MANIFEST_DAMAGE["sums-deleted"],
}


@pytest.mark.parametrize("damage", list(VERIFY_DAMAGE))
@pytest.mark.parametrize("level", ["quick", "full"])
def test_verify_fails_every_set_that_needs_a_broken_one(h: History, damage: str, level: str) -> None:
    VERIFY_DAMAGE[damage](h.dir("F2"))
    f2 = h.ids["F2"]
    reps = {r.set_id: r for r in verifier.verify_sets(h.repo, list(h.ids.values()), level=level)}
    assert not reps[f2].ok
    for n in ("I2", "D2"):
        r = reps[h.ids[n]]
        assert not r.ok and any(p.startswith(f"{h.ids[n]}: needs {f2}, which failed: {f2}") for p in r.problems), \
            r.problems
    for n in ("F1", "I1"):
        assert reps[h.ids[n]].ok, reps[h.ids[n]].problems
    single = verifier.verify_committed(h.repo, h.ids["D2"], level=level)  # one set: its chain still counts
    assert not single.ok and f"needs {f2}, which failed" in single.problems[-1]


@pytest.mark.parametrize("level", ["quick", "full"])
def test_verify_names_a_dependency_that_is_gone_at_both_levels(h: History, level: str) -> None:
    shutil.rmtree(h.dir("F2"))
    rep = verifier.verify_committed(h.repo, h.ids["D2"], level=level)
    assert [p for p in rep.problems if h.ids["F2"] in p] == [
        f"{h.ids['D2']}: needs set {h.ids['F2']}, which is no longer in {h.repo.root}"]


def test_verify_sees_damage_behind_matching_checksums_in_a_dependency(h: History) -> None:
    """F2's archive is corrupt but resealed (every checksum matches): only the full level sees it, and
    then in F2's dependents too."""
    d = h.dir("F2")
    data = bytearray((d / FILES).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / FILES).write_bytes(bytes(data))
    m = mf.loads((d / MANIFEST).read_bytes())
    arts = tuple(replace(a, size=len(data), sha256=hashlib.sha256(data).hexdigest()) if a.role == "files" else a
                 for a in m.artifacts)
    reseal(d, mf.dumps(replace(m, artifacts=arts)).encode())
    assert verifier.verify_committed(h.repo, h.ids["I2"], level="quick").ok
    rep = verifier.verify_committed(h.repo, h.ids["I2"], level="full")
    assert any(f"needs {h.ids['F2']}, which failed: {h.ids['F2']}/{FILES}" in p for p in rep.problems), rep.problems


def test_a_bad_dump_of_a_dependency_does_not_fail_its_dependents(h: History) -> None:
    db = next(p for p in h.dir("F2").iterdir() if p.name.startswith("db."))
    flip_byte(db, db.stat().st_size // 2, 0x01)
    reps = {r.set_id: r for r in verifier.verify_sets(h.repo, list(h.ids.values()), level="full")}
    assert not reps[h.ids["F2"]].ok and reps[h.ids["I2"]].ok and reps[h.ids["D2"]].ok


def test_each_set_is_verified_once_per_run(h: History, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = verifier.verify_dir

    def counting(set_dir: Path, *a: object, **kw: object) -> verifier.VerifyReport:
        calls.append(set_dir.name)
        return real(set_dir, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(verifier, "verify_dir", counting)
    ARTIFACT_DAMAGE["flipped"](h.dir("F2"))
    reps = verifier.verify_sets(h.repo, [h.ids[n] for n in ("D2", "I2", "I1", "F2", "F1")], level="full")
    assert sorted(calls) == sorted(h.ids.values())  # F2 once, though D2, I2 and itself need it
    assert [r.ok for r in reps] == [False, False, True, False, True]


# ----------------------------------------------------------------------------- the CLI, end to end


def test_cli_list_and_show_of_a_damaged_set(h: History) -> None:
    MANIFEST_DAMAGE["flipped-first-byte"](h.dir("F2"))
    f2 = h.ids["F2"]
    res = run_cli("--config", str(h.config), "list")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith(f2))
    assert "damaged" in line
    assert f"(damaged: {f2}: manifest.json" in res.stdout and f"erp-backup verify {f2}" in res.stdout
    assert f"(broken: {h.ids['D2']}: it needs {f2}, which is damaged" in res.stdout
    res = run_cli("--config", str(h.config), "show", f2)
    assert res.returncode != 0 and "DAMAGED" in res.stdout
    assert res.stderr.strip().splitlines()[-1].startswith(f"erp-backup: error: backup set {f2} is damaged")
    res = run_cli("--config", str(h.config), "show", h.ids["I2"])
    assert res.returncode == 0 and f"BROKEN: it needs {f2}, which is damaged" in res.stdout
    res = run_cli("--config", str(h.config), "show", h.ids["I1"])
    assert res.returncode == 0 and "status       committed" in res.stdout


def test_cli_backup_and_restore_at_go_on_past_a_damaged_set(h: History) -> None:
    """Before: `backup incremental` and `restore --at` both stopped at "is not valid JSON"."""
    MANIFEST_DAMAGE["flipped-first-byte"](h.dir("F2"))
    res = run_cli("--config", str(h.config), "backup", "incremental", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    new = res.stdout.strip().splitlines()[-1]
    assert new.endswith("-incr") and h.repo.read_header(BackupId(new)).parent == BackupId(h.ids["I1"])
    target = h.settings.storage.local_dir.parent / "r"
    res = run_cli("--config", str(h.config), "restore", "--at", "2026-11-28T07:30:00Z", "--target-dir", str(target),
                  timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert h.ids["I1"] in res.stdout  # the table names the set restored
    for n in ("D2", "I2", "F2"):
        assert f"skipped {h.ids[n]}" in out, out[-3000:]
    assert not diff_states(h.states["I1"], tree_state(target))


def test_cli_verify_prints_the_table_and_names_every_failing_set(h: History) -> None:
    ARTIFACT_DAMAGE["flipped"](h.dir("F2"))
    res = run_cli("--config", str(h.config), "verify", timeout=300)
    assert res.returncode != 0
    rows = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln[:1].isdigit()}
    assert sorted(rows) == sorted(h.ids.values()), res.stdout  # the table, every set, before the error
    for n, ok in (("F1", True), ("I1", True), ("F2", False), ("I2", False), ("D2", False)):
        assert ("passed" in rows[h.ids[n]]) is ok and ("FAILED" in rows[h.ids[n]]) is not ok, rows[h.ids[n]]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("erp-backup: error: verification failed for 3 sets")
    for n in ("F2", "I2", "D2"):
        assert h.ids[n] in last
    assert f"needs {h.ids['F2']}, which failed" in last


# index entries whose values the restore cannot apply (a review had each end the restore in an
# OverflowError traceback): the set is refused in one line, by restore and verify alike
INDEX_DAMAGE: dict[str, tuple[str, object]] = {
    "mode beyond 07777": ("mode", "77777777777"),
    "mtime beyond time_t": ("mtime_ns", 10**40),
    "mtime far before 1970": ("mtime_ns", -(10**30)),
    "uid beyond uid_t": ("uid", 2**40),
    "negative uid": ("uid", -5),
    "negative gid": ("gid", -1),
    "negative size": ("size", -1),
}


@pytest.mark.parametrize("damage", list(INDEX_DAMAGE))
def test_an_index_entry_the_restore_cannot_apply_is_one_error_line(h: History, damage: str) -> None:
    key, value = INDEX_DAMAGE[damage]

    def change(m: dict[str, Any]) -> None:
        entry = next(e for e in m["files"] if e["path"] == "manage.py")
        entry[key] = value

    _json_edit(h.dir("F1"), change)
    target = h.settings.storage.local_dir.parent / "r"
    env_args = ("--config", str(h.config))
    for args in (["restore", "--backup", h.ids["F1"], "--target-dir", str(target)], ["verify", h.ids["F1"]]):
        res = run_cli(*env_args, *args, env=cli_env(ERP_BACKUP_RUNNER="plain"))
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("erp-backup: error:")]
        assert len(errors) == 1 and "malformed" in errors[0], res.stderr[-2000:]
    assert not target.exists()
