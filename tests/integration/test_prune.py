"""Prune on a real repository and a real S3 endpoint (moto_server): deletion order, verification
records, leftovers, prune killed half-way (SIGKILL, local and remote mid-delete), dry runs that
change nothing, the prune stage of the backup pipeline and the CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from erp_backup import prune as pruning
from erp_backup import remote_sets as remote_listing
from erp_backup import verdicts
from erp_backup import verify as verifier
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository
from erp_backup.adapters.storage.s3 import S3Store
from erp_backup.backup import CommittedSet
from erp_backup.config import Settings, load_settings
from erp_backup.core import chain
from erp_backup.core.errors import BackupError, ConfigError, LockError, StorageError
from erp_backup.core.models import BackupId, BackupJob
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from tests.conftest import (
    ERROR_PREFIX,
    diff_states,
    flip_byte,
    listing,
    make_settings,
    make_small_project,
    run_cli,
    tree_state,
    write_config,
    write_file,
)
from tests.integration import test_encrypted_sets
from tests.integration.offsite_fixtures import S3Env
from tests.integration.test_faults import small_disk  # noqa: F401  (a real 2 MiB tmpfs)

pytestmark = pytest.mark.integration
host = test_encrypted_sets.host  # the keyrings fixture: backup host (signing key), restore host
REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------- helpers


def history(tmp_path: Path, days: int = 10, incrs: int = 3, **kw: Any) -> tuple[Settings, dict[str, Any]]:
    """``days`` daily fulls (02:00 UTC) with ``incrs`` incrementals after each, the tree state of
    every set recorded (for restores)."""
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, verify="quick", **kw)
    states: dict[str, Any] = {}
    for d in range(days):
        day = T0 + timedelta(days=d)
        states[run_backup(s, BackupJob.FULL, now=day).manifest.id.value] = tree_state(root)
        for h in range(1, incrs + 1):
            write_file(root / "app" / f"day{d % 3}.txt", f"day {d} hour {h}\n" * 20)
            states[run_backup(s, BackupJob.INCREMENTAL, now=day + timedelta(hours=4 * h)).manifest.id.value] = \
                tree_state(root)
    return s, states


def assert_all_restorable(s: Settings, tmp_path: Path, states: dict[str, Any], *, restore_each: bool = False
                          ) -> list[str]:
    """Every set lists as committed with its whole chain; restored, a set is the tree it was taken of."""
    repo = LocalRepository(s.storage.local_dir)
    found = repo.scan()
    assert not found.damaged, found.damaged
    ids = found.committed_ids
    for m in found.committed:
        assert chain.chain_problem(m, ids) is None, (m.id, chain.chain_problem(m, ids))
    picks = [i.value for i in ids] if restore_each else [ids[0].value, ids[-1].value]
    for sid in picks:
        target = tmp_path / f"restored-{sid}"
        restore(repo, target_dir=target, backup_id=sid)
        assert diff_states(states[sid], tree_state(target)) == []
    return [i.value for i in ids]


def list_json(config: Path) -> dict[str, Any]:
    """``list --json`` without each set's ``age`` (it moves with the clock between two calls)."""
    res = run_cli("--config", str(config), "list", "--json")
    assert res.returncode == 0, res.stderr
    doc = dict(json.loads(res.stdout))
    for row in doc["sets"]:
        row.pop("age", None)
    return doc


def place_remote(store: S3Store, repo: LocalRepository, sid: str, *, manifest: bool = True) -> None:
    """What the upload stage leaves: the set's artifacts, SHA256SUMS, and manifest.json last."""
    d = repo.set_dir(sid)
    m = repo.read_header(BackupId(sid))
    for name in [a.name for a in m.artifacts] + [SUMS] + ([MANIFEST] if manifest else []):
        store.put_file(f"{sid}/{name}", d / name)


def remote_sets(store: S3Store) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for o in store.list():
        sid, _, name = o.key.partition("/")
        out.setdefault(sid, set()).add(name)
    return out


def child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=timeout, check=False)


# ----------------------------------------------------------------------------- local


def test_prune_removes_expired_sets_dependents_first_and_every_kept_set_restores(tmp_path: Path) -> None:
    s, states = history(tmp_path)
    now = T0 + timedelta(days=9, hours=23)
    plan = pruning.plan_local(s, now=now)
    doomed = [r.id for r in plan.rows() if r.action == "remove"]
    assert len(doomed) > 10 and [i.value for i in plan.order] != sorted(doomed)
    events: list[tuple[str, str]] = []
    rep = pruning.prune_local(s, now=now, progress=lambda e, n: events.append((e, n)))
    assert list(rep.removed) == [i.value for i in plan.order] == [n for e, n in events if e == "removed"]
    left = assert_all_restorable(s, tmp_path, states, restore_each=True)
    assert sorted(left) == sorted(r.id for r in plan.rows() if r.action == "keep")
    # fulls of the last 7 days, the last day's incrementals: the retention windows
    assert sum(1 for i in left if i.endswith("-full")) == 7
    again = pruning.prune_local(s, now=now)
    assert again.removed == (), "a second prune at the same time removes nothing more"


def test_failed_verification_is_recorded_beside_the_set_and_never_counts_as_newest_valid_full(
        tmp_path: Path) -> None:
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, verify="quick")
    repo = LocalRepository(s.storage.local_dir)
    old = run_backup(s, BackupJob.FULL, now=T0).manifest.id.value
    new = run_backup(s, BackupJob.FULL, now=T0 + timedelta(days=8)).manifest.id.value
    write_file(root / "app" / "late.txt", "late")
    incr = run_backup(s, BackupJob.INCREMENTAL, now=T0 + timedelta(days=8, hours=1)).manifest.id.value
    inside = listing(repo.set_dir(new))
    reports = {r.set_id: r for r in verifier.verify_sets(repo, [old, new, incr], level="quick")}
    assert all(r.ok for r in reports.values())
    record = verdicts.record_path(repo.root, new)
    assert record.parent == repo.root and json.loads(record.read_text())["result"] == "passed"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert listing(repo.set_dir(new)) == inside, "nothing written inside the set"
    sums_before = (repo.set_dir(new) / SUMS).read_bytes()

    flip_byte(repo.set_dir(new) / "files.tar.zst", 40)
    reports = {r.set_id: r for r in verifier.verify_sets(repo, [new], level="quick")}
    assert not reports[new].ok
    saved = json.loads(record.read_text())
    assert saved["result"] == "failed" and saved["id"] == new and "checksum mismatch" in saved["problems"][0]
    assert (repo.set_dir(new) / SUMS).read_bytes() == sums_before
    assert set(verdicts.failed(repo.root)) == {BackupId(new)}

    plan = {r.id: r for r in pruning.plan_local(s, now=T0 + timedelta(days=8, hours=2)).rows()}
    assert plan[old].action == "keep" and plan[old].reason.startswith("newest valid full: never removed")
    assert plan[new].action == "keep" and "(last verification failed)" in plan[new].reason

    # a passing verification later (the set repaired from a copy) makes it count again
    flip_byte(repo.set_dir(new) / "files.tar.zst", 40)
    verifier.verify_sets(repo, [new], level="quick")
    plan = {r.id: r for r in pruning.plan_local(s, now=T0 + timedelta(days=8, hours=2)).rows()}
    assert plan[old].action == "remove"
    pruning.prune_local(s, now=T0 + timedelta(days=8, hours=2))
    assert not verdicts.record_path(repo.root, old).exists(), "a removed set's record goes with it"


def test_a_record_that_cannot_be_read_counts_as_failed(tmp_path: Path) -> None:
    make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, verify="quick")
    repo = LocalRepository(s.storage.local_dir)
    old = run_backup(s, BackupJob.FULL, now=T0).manifest.id.value
    new = run_backup(s, BackupJob.FULL, now=T0 + timedelta(days=8)).manifest.id.value
    verdicts.record_path(repo.root, new).write_text('{"id": "someone else", "result": "passed"}')
    plan = {r.id: r for r in pruning.plan_local(s, now=T0 + timedelta(days=8, hours=1)).rows()}
    assert plan[old].action == "keep" and plan[old].reason.startswith("newest valid full")


def test_leftovers_go_after_the_grace_period_and_never_while_a_backup_holds_the_lock(tmp_path: Path) -> None:
    make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, verify="quick", retention={"leftover_grace_hours": 2})
    repo = LocalRepository(s.storage.local_dir)
    sid = run_backup(s, BackupJob.FULL, now=T0).manifest.id.value
    old = repo.root / "20260301T030000Z-incr.partial"
    young = repo.root / "20260301T040000Z-incr.partial"
    deleting = repo.root / "20260101T020000Z-full.deleting.partial"
    for d in (old, young, deleting):
        d.mkdir()
        (d / "files.tar.zst").write_bytes(b"x" * 100)
    os.utime(old, (time.time() - 3 * 3600,) * 2)
    orphan = verdicts.record(repo.root, "20260101T020000Z-full", ok=True, level="quick")

    # a backup holds the lock (another process): prune waits, then refuses; the dry run says why it keeps
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom erp_backup.adapters.storage.local import LocalRepository\n"
        "with LocalRepository(sys.argv[1]).lock(purpose='full backup'):\n"
        "    print('locked', flush=True)\n    time.sleep(60)\n"), str(repo.root)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        rows = {r.id: r for r in pruning.prune_local(s, dry_run=True).rows()}
        assert rows[old.name].action == "keep" and "a backup is running" in rows[old.name].reason
        with pytest.raises(LockError):
            pruning.prune_local(s, lock_wait_s=0.5)
        assert old.exists() and young.exists()
    finally:
        holder.kill()
        holder.wait()
    rep = pruning.prune_local(s, now=T0 + timedelta(hours=1))
    assert sorted(rep.leftovers_removed) == sorted([old.name, deleting.name])
    assert not old.exists() and not deleting.exists() and young.exists() and not orphan.exists()
    rows = {r.id: r for r in rep.rows()}
    assert rows[young.name].action == "keep" and "<= grace 2.0 h" in rows[young.name].reason
    assert rows[sid].action == "keep"


KILL_LOCAL = """
import os, signal, sys
from erp_backup import prune
from erp_backup.config import load_settings
from datetime import datetime
count = [0]
def progress(event, name):
    if event == "removed":
        count[0] += 1
        if count[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
prune.prune_local(load_settings(sys.argv[1]), now=datetime.fromisoformat(sys.argv[2]), progress=progress)
"""


def test_local_prune_killed_half_way_then_run_again(tmp_path: Path) -> None:
    s, states = history(tmp_path, days=9, incrs=2)
    config = write_config(tmp_path / "cfg.toml", s)
    now = T0 + timedelta(days=8, hours=23)
    expected = sorted(r.id for r in pruning.plan_local(s, now=now).rows() if r.action == "keep")
    before = list_json(config)
    for kill_after in (1, 3):
        res = child(KILL_LOCAL, str(config), now.isoformat(), str(kill_after))
        assert res.returncode == -9, res.stderr
        listed = list_json(config)
        assert listed["sets"] and all(r["status"] == "committed" for r in listed["sets"]), listed
        assert len(listed["sets"]) < len(before["sets"])
        assert_all_restorable(s, tmp_path / f"k{kill_after}", states)
    pruning.prune_local(s, now=now)
    assert assert_all_restorable(s, tmp_path / "end", states, restore_each=True) == expected
    assert list_json(config)["incomplete"] == []


# ----------------------------------------------------------------------------- remote


KILL_REMOTE = """
import os, signal, sys
from prefect_aws import AwsCredentials, S3Bucket
from erp_backup import prune
from erp_backup.adapters.storage.s3 import S3Store
from erp_backup.backup import CommittedSet
from erp_backup.config import load_settings
from datetime import datetime
endpoint, bucket, config, now, kill_after = sys.argv[1:6]
creds = AwsCredentials(aws_access_key_id="AKIDERPBACKUPTEST", aws_secret_access_key="s3-Secret-Key-5521",
                       region_name="us-east-1", aws_client_parameters={"endpoint_url": endpoint})
store = S3Store(S3Bucket(bucket_name=bucket, credentials=creds), "erp")
count = [0]
def progress(event, name):
    if event == "manifest-removed":
        count[0] += 1
        if count[0] == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)  # after the manifest, before the set's other objects
prune.prune_remote(store, load_settings(config), now=datetime.fromisoformat(now), progress=progress)
"""


def test_remote_prune_applies_the_remote_policy_and_survives_a_kill_mid_delete(tmp_path: Path,
                                                                                moto_s3: S3Env) -> None:
    s, _ = history(tmp_path, days=9, incrs=2)
    repo = LocalRepository(s.storage.local_dir)
    store = S3Store(moto_s3.bucket, "erp")
    for i in repo.list_ids():
        place_remote(store, repo, i.value)
    (repo.root / "stray").write_text("x")
    store.put_stream("notes/readme.txt", open(repo.root / "stray", "rb"))  # not ours: left alone
    now = T0 + timedelta(days=8, hours=23)
    # local sets expire after 7 days, remote ones after 30: the remote keeps every full
    remote_plan, _, foreign = pruning.plan_remote(store, s, now=now)
    assert foreign == ["notes/readme.txt"]
    removing = [i.value for i in remote_plan.order]
    assert removing and all(i.endswith("-incr") for i in removing), removing
    local_plan = pruning.plan_local(s, now=now)
    assert any(i.value.endswith("-full") for i in local_plan.order)

    before = list(store.list())  # keys, sizes and times: what any remote listing is made of
    for at in (None, now, now + timedelta(days=400)):
        dry = pruning.run_prune(s, "remote", now=at, dry_run=True, store=store)
        assert list(store.list()) == before and {r.where for r in dry[0].rows()} == {"remote"}

    config = write_config(tmp_path / "cfg.toml", s)
    res = child(KILL_REMOTE, moto_s3.server.endpoint, moto_s3.bucket.bucket_name, str(config), now.isoformat(), "2")
    assert res.returncode == -9, res.stderr
    half = remote_sets(store)
    torn = [sid for sid, names in half.items() if MANIFEST not in names and sid != "notes"]
    assert torn == [removing[1]], "the killed delete left one set without its manifest"
    for sid, names in half.items():  # everything that lists complete is complete
        if MANIFEST in names:
            m = repo.read_header(BackupId(sid))
            assert {a.name for a in m.artifacts} | {SUMS} <= names

    rep = pruning.prune_remote(store, s, now=now)  # the default grace keeps a fresh torn upload
    rows = {r.id: r for r in rep.rows()}
    assert rows[torn[0]].action == "keep" and "incomplete upload" in rows[torn[0]].reason
    assert "its newest object" in rows[torn[0]].reason
    graceless = make_settings(tmp_path, verify="quick", retention={"leftover_grace_hours": 0})
    rep = pruning.prune_remote(store, graceless, now=now)
    assert rep.leftovers_removed == (torn[0],)
    after = remote_sets(store)
    assert sorted(k for k in after if k != "notes") == sorted(
        r.id for r in remote_plan.rows() if r.action == "keep")
    assert after["notes"] == {"readme.txt"}


def test_a_remote_set_whose_manifest_cannot_be_read_is_kept_and_reported(tmp_path: Path, moto_s3: S3Env) -> None:
    s, _ = history(tmp_path, days=2, incrs=1)
    repo = LocalRepository(s.storage.local_dir)
    store = S3Store(moto_s3.bucket, "erp")
    ids = [i.value for i in repo.list_ids()]
    for sid in ids:
        place_remote(store, repo, sid)
    store.put_stream(f"{ids[0]}/{MANIFEST}", open(repo.set_dir(ids[1]) / MANIFEST, "rb"))  # another set's
    store.put_stream("20250101T000000Z-full/manifest.json", open(repo.root / ".lock", "rb"))  # empty
    plan, _, _ = pruning.plan_remote(store, s, now=T0 + timedelta(days=300))
    rows = {r.id: r for r in plan.rows()}
    assert rows[ids[0]].action == "keep" and f"describes set {ids[1]}" in rows[ids[0]].reason
    assert rows["20250101T000000Z-full"].action == "keep" and "cannot be read" in rows["20250101T000000Z-full"].reason


# ----------------------------------------------------------------------------- the stage and the CLI


def test_every_backup_prunes_on_its_own_clock(tmp_path: Path) -> None:
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, verify="quick", retention={})
    repo = LocalRepository(s.storage.local_dir)
    for d in range(10):
        res = run_backup(s, BackupJob.FULL, now=T0 + timedelta(days=d))
        write_file(root / "app" / "x.txt", str(d))
    fulls = [i.value for i in repo.list_ids()]
    # the last 7 days (the one exactly 7 days older stays or goes by the milliseconds each run took)
    assert fulls[-7:] == [f"202603{d:02d}T020000Z-full" for d in range(4, 11)] and len(fulls) in (7, 8)
    assert res.plan.settings.retention.after_backup


def test_cli_prune_dry_run_changes_nothing_and_prints_json_lines(tmp_path: Path) -> None:
    s, _ = history(tmp_path, days=9, incrs=1)
    config = write_config(tmp_path / "cfg.toml", s)
    root = s.storage.local_dir
    (root / "20260301T030000Z-incr.partial").mkdir()
    os.utime(root / "20260301T030000Z-incr.partial", (time.time() - 48 * 3600,) * 2)
    before, files = list_json(config), listing(root)
    res = run_cli("--config", str(config), "prune", "--dry-run", "--json", "--now", "2026-03-20T00:00:00Z",
                  timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert all(set(r) == {"id", "where", "action", "reason"} and r["where"] == "local" for r in rows)
    by_id = {r["id"]: r for r in rows}
    assert {m["id"] for m in before["sets"]} | {"20260301T030000Z-incr.partial"} == set(by_id)
    assert by_id["20260301T030000Z-incr.partial"]["action"] == "remove"
    assert by_id["20260309T020000Z-full"]["reason"].startswith("newest valid full")
    assert sum(r["action"] == "remove" for r in rows) == len(rows) - 2
    assert list_json(config) == before and listing(root) == files


@pytest.mark.parametrize(("args", "words"), [
    (["prune", "--now", "2026-03-20T00:00:00Z"], ["--now is only allowed with --dry-run"]),
    (["prune", "--dry-run", "--now", "next sunday"], ["--now 'next sunday' is not an ISO time"]),
    (["prune", "--remote"], ["no remote store is configured", "[remote]"]),
    (["prune", "--remote", "--all"], ["not allowed with argument"]),
])
def test_cli_prune_refuses_bad_requests_in_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path)
    LocalRepository(s.storage.local_dir).ensure()
    config = write_config(tmp_path / "cfg.toml", s)
    before = listing(tmp_path)
    t = time.monotonic()
    res = run_cli("--config", str(config), *args)
    assert res.returncode != 0 and time.monotonic() - t < 15, "refused before Prefect starts"
    assert all(w in res.stderr for w in words), res.stderr
    if "not allowed" not in words[0]:
        assert res.stderr.strip().splitlines()[-1].startswith(ERROR_PREFIX)
    assert listing(tmp_path) == before


def test_bad_retention_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    make_small_project(tmp_path / "erp")
    config = write_config(tmp_path / "cfg.toml", make_settings(tmp_path))
    config.write_text(config.read_text().replace("full_days = 7", "full_days = -7"))
    with pytest.raises(ConfigError, match="retention.local.full_days"):
        load_settings(config)
    res = run_cli("--config", str(config), "prune", "--dry-run")
    assert res.returncode == 2 and "retention.local.full_days" in res.stderr


# ----------------------------------------------------------------------------- hostile input


def test_crafted_local_entries_are_kept_and_nothing_outside_the_repository_is_touched(tmp_path: Path) -> None:
    s, _ = history(tmp_path, days=10, incrs=0)
    root = s.storage.local_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    os.rename(root / "20260302T020000Z-full", outside / "set")  # an expired set, moved away...
    os.symlink(outside / "set", root / "20260302T020000Z-full")  # ...and linked back
    os.symlink(outside, root / "20260101T000000Z-full.deleting.partial")
    (root / "20260101T000000Z-full").write_text("a file named like a set")
    rep = pruning.prune_local(s, now=T0 + timedelta(days=9, hours=1))
    rows = {r.id: r for r in rep.rows()}
    assert rows["20260302T020000Z-full"].action == "keep" and "symbolic link" in rows["20260302T020000Z-full"].reason
    assert rows["20260101T000000Z-full"].action == "keep" and "not a directory" in rows["20260101T000000Z-full"].reason
    assert "20260301T020000Z-full" in rep.removed
    assert sorted(os.listdir(outside)) == ["precious", "set"] and len(os.listdir(outside / "set")) == 4
    assert not os.path.lexists(root / "20260101T000000Z-full.deleting.partial")  # the link, not its target


def test_crafted_remote_keys_are_left_alone_and_a_dead_endpoint_fails_in_one_line(tmp_path: Path,
                                                                                   moto_factory: Any) -> None:
    server = moto_factory()
    s, _ = history(tmp_path, days=2, incrs=0)
    repo = LocalRepository(s.storage.local_dir)
    store = S3Store(server.bucket(), "erp")
    ids = [i.value for i in repo.list_ids()]
    for sid in ids:
        place_remote(store, repo, sid)
    client = store._client
    client.put_object(Bucket=store.bucket_name, Key=f"erp/{ids[0]}/../../escape", Body=b"x")
    client.put_object(Bucket=store.bucket_name, Key=f"erp/{ids[0]}//double", Body=b"x")
    plan, sets, foreign = pruning.plan_remote(store, s, now=T0 + timedelta(days=60))
    assert sorted(foreign) == sorted([f"{ids[0]}/../../escape", f"{ids[0]}//double"])
    rep = pruning.prune_remote(store, s, now=T0 + timedelta(days=60))
    assert rep.removed == (ids[0],) and any("not part of a backup set" in w for w in rep.warnings)
    assert {o.key for o in store.list()} >= {f"{ids[0]}/../../escape", f"{ids[0]}//double"}
    server.stop()
    with pytest.raises(StorageError) as e:
        pruning.run_prune(s, "remote", store=store)
    assert "does not answer" in str(e.value) and "\n" not in str(e.value)


def test_the_prune_stage_never_fails_the_backup(tmp_path: Path) -> None:
    make_small_project(tmp_path / "erp")
    off = make_settings(tmp_path, verify="quick")
    s = make_settings(tmp_path, verify="quick", retention={})
    repo = LocalRepository(s.storage.local_dir)
    first = run_backup(off, BackupJob.FULL, now=T0)
    second = run_backup(off, BackupJob.FULL, now=T0 + timedelta(days=9))
    with repo.lock(purpose="another backup"):  # another run holds the lock: the stage leaves it
        committed = CommittedSet(second.manifest, second.path, second.verify)
        res = pruning.prune_stage(s, committed, None)
    assert res is not None and res.removed_local == ()
    assert res.warnings == ("prune skipped: another erp-backup run holds the repository lock (the next run prunes)",)
    assert repo.exists(first.manifest.id)
    res = pruning.prune_stage(s, committed, None)
    assert res is not None and res.removed_local == (first.manifest.id.value,) and not repo.exists(first.manifest.id)
    assert pruning.prune_stage(off, committed, None) is None


def test_the_deployable_prune_flow_takes_a_config_path_and_prunes(tmp_path: Path) -> None:
    """``flows/prune.py:prune_flow`` as a deployment runs it: parameters only, no settings object."""
    make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, verify="quick")
    for d in range(3):
        run_backup(s, BackupJob.FULL, now=datetime.now(UTC) - timedelta(days=20 - d))
    config = write_config(tmp_path / "cfg.toml", s)
    code = ("import json, sys\nfrom erp_backup.flows.prune import prune_flow\n"
            "print(json.dumps(prune_flow(where='all', config=sys.argv[1])))\n")
    res = subprocess.run([sys.executable, "-c", code, str(config)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["action"] for r in rows] == ["remove", "remove", "keep"]
    assert [i.value for i in LocalRepository(s.storage.local_dir).list_ids()] == [rows[2]["id"]]


RANDOM_KILL = """
import sys
from erp_backup import prune
from erp_backup.config import load_settings
from datetime import datetime
s = load_settings(sys.argv[1])
print("start", flush=True)
sys.stdin.readline()
prune.prune_local(s, now=datetime.fromisoformat(sys.argv[2]))
print("done", flush=True)
"""


def test_local_prune_killed_at_random_moments_never_leaves_a_set_that_is_not_whole(tmp_path: Path) -> None:
    import random

    s, states = history(tmp_path, days=10, incrs=3)
    config = write_config(tmp_path / "cfg.toml", s)
    repo = LocalRepository(s.storage.local_dir)
    now = T0 + timedelta(days=9, hours=23)
    expected = sorted(r.id for r in pruning.plan_local(s, now=now).rows() if r.action == "keep")
    rng = random.Random(9)
    counts = [len(repo.list_ids())]
    delay = 0.02
    for attempt in range(12):
        if counts[-1] == len(expected):
            break
        proc = subprocess.Popen([sys.executable, "-c", RANDOM_KILL, str(config), now.isoformat()], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == "start"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(rng.uniform(delay / 2, delay))
        proc.kill()
        proc.wait()
        found = repo.scan()
        assert not found.damaged, (attempt, found.damaged)
        ids = found.committed_ids
        assert all(chain.chain_problem(m, ids) is None for m in found.committed), attempt
        assert set(expected) <= {i.value for i in ids}, "a kept set went missing"
        assert all(p.name.endswith(".deleting.partial") for p in repo.partials())
        if len(ids) == counts[-1]:
            delay *= 1.5  # killed before it began deleting: a little later next time
        counts.append(len(ids))
    assert any(len(expected) < n < counts[0] for n in counts), f"no kill landed mid-prune: {counts}"
    print(f"sets after each kill: {counts}")
    pruning.prune_local(s, now=now)
    assert assert_all_restorable(s, tmp_path / "end", states) == expected and repo.partials() == []


def test_prune_works_on_a_full_disk_and_frees_it_for_the_next_backup(
        tmp_path: Path, small_disk: Path) -> None:  # noqa: F811  (the fixture of test_faults)
    make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, verify="quick", backups=small_disk / "bk")
    for d in range(10):
        run_backup(s, BackupJob.FULL, now=T0 + timedelta(days=d))
    with open(small_disk / "filler", "wb") as f:  # what filled it is not ours to remove
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    with pytest.raises(BackupError) as e:  # the backup fails in one line, its partial set gone
        run_backup(s, BackupJob.FULL, now=T0 + timedelta(days=10))
    assert "free space" in str(e.value) and LocalRepository(s.storage.local_dir).partials() == []
    rep = pruning.prune_local(s, now=T0 + timedelta(days=10))
    assert len(rep.removed) >= 2
    (small_disk / "filler").unlink()
    run_backup(s, BackupJob.FULL, now=T0 + timedelta(days=10, hours=1))


# ----------------------------------------------------------------------------- with the real upload (issue #8)


def test_remote_prune_of_encrypted_sets_the_upload_sent_and_remote_verification_feeds_it(
        tmp_path: Path, moto_s3: S3Env, gpg_keys: Any, host: Any) -> None:
    from erp_backup import upload
    from erp_backup.core.models import BackupKind
    from erp_backup.remote_store import store_for
    from erp_backup.remote_verify import verify_remote
    from tests.integration.test_offsite_remote import backup, remote_settings

    s = remote_settings(tmp_path, gpg_keys)
    assert s.remote is not None
    host.backup()
    store = store_for(moto_s3.bucket, s.remote)
    sent = []
    for day in (0, 1, 2, 40, 41):
        at = T0 + timedelta(days=day)
        sid = backup(s, BackupKind.FULL, at)
        assert upload.push(s, store, now=at, newest=sid).uploaded == (sid.value,)
        sent.append(sid.value)
    now = T0 + timedelta(days=41, hours=1)
    plan, sets, _ = pruning.plan_remote(store, s, now=now)
    assert not plan.unreadable and any(n.endswith(".gpg") for n in sets[sent[0]])  # encrypted off-site
    assert [i.value for i in plan.order] == sent[2::-1]  # older than 30 days, newest first
    rep = pruning.prune_remote(store, s, now=now)
    assert rep.removed == tuple(sent[2::-1]) and remote_listing.scan(store).complete == [BackupId(i) for i in sent[3:]]
    assert all(r.ok for r in verify_remote(s, store))

    # the newest remote copy damaged: remote verification records it, retention stops counting it
    key = next(f"{sent[4]}/{n}" for n in sets[sent[4]] if n.startswith("files"))
    store.put_stream(key, open(tmp_path / "keys.asc", "rb"))
    assert not {r.set_id: r for r in verify_remote(s, store)}[sent[4]].ok
    assert verdicts.failed(s.storage.local_dir, "remote").keys() == {BackupId(sent[4])}
    assert verdicts.failed(s.storage.local_dir) == {}, "the local copy is not in question"
    later = {r.id: r for r in pruning.plan_remote(store, s, now=T0 + timedelta(days=75))[0].rows()}
    assert later[sent[3]].reason.startswith("newest valid full: never removed")
    assert "(last verification failed)" in later[sent[4]].reason
