"""Off-site copies end to end against a real moto_server (S3 over HTTP, through the prefect-aws blocks
and boto3) and a real pyftpdlib FTPS server: upload with catch-up, an endpoint that goes away mid-upload,
list/verify --remote, tampered and hostile remote objects, and the disaster round trip (the whole local
backup directory deleted, restore from the remote copy only)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from erp_backup import remote_sets, upload
from erp_backup.adapters.storage.base import RemoteStore
from erp_backup.config import RemoteConfig, Settings
from erp_backup.core.errors import BackupError, ChainError, ConfigError, IntegrityError, RestoreError, StorageError
from erp_backup.core.models import BackupId, BackupKind
from erp_backup.pipeline import run_backup
from erp_backup.remote_restore import SCRATCH_PREFIX, restore_from_remote
from erp_backup.remote_store import store_for
from erp_backup.remote_verify import verify_remote
from erp_backup.restore import RestoreRequest
from tests.conftest import diff_states, make_small_project, tree_state, write_file
from tests.integration import test_encrypted_sets
from tests.integration.conftest import assert_actionable
from tests.integration.offsite_fixtures import (
    PASSPHRASE,
    SIGN_PASSPHRASE,
    FtpServer,
    GpgTestKeys,
    MotoServer,
    S3Env,
    free_port,
    kill_agent,
)
from tests.integration.test_encrypted_sets import Host, enc_settings, keyring

pytestmark = pytest.mark.integration
host = test_encrypted_sets.host  # the keyrings fixture: backup host (signing key), restore host (private key)

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
MARKER = "MARKER-remote-ACME-7731"


def remote_settings(tmp_path: Path, keys: GpgTestKeys, db: str | None = None, **remote: Any) -> Settings:
    """Test settings with [encryption] (plaintext local sets, signed; encrypted remote copies) and
    [remote] (its block is handed over directly: ``store_for``)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    s = enc_settings(tmp_path, keys, local=False, root=make_small_project(tmp_path / "erp"), db=db)
    cfg = RemoteConfig(block="test", prefix="erp", retries=0, retry_backoff_s=0, **remote)
    return s.model_copy(update={"remote": cfg})


def rows_of(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, name FROM customers ORDER BY id").fetchall()


def backup(s: Settings, kind: BackupKind, at: datetime) -> BackupId:
    """A backup without its upload stage (which loads the block by name): ``upload.push`` follows."""
    return run_backup(s.model_copy(update={"remote": None}), kind, now=at).manifest.id


def test_s3_disaster_round_trip_sqlite(tmp_path: Path, moto_s3: S3Env, gpg_keys: GpgTestKeys, host: Host
                                       ) -> None:
    s = remote_settings(tmp_path, gpg_keys)
    assert s.remote is not None
    host.backup()
    store = store_for(moto_s3.bucket, s.remote)
    db = Path(s.database_url().name)
    full = backup(s, BackupKind.FULL, T0)
    res = upload.push(s, store, now=T0)
    assert res.uploaded == (full.value,) and res.bytes_sent > 0
    state_full = tree_state(s.project.root)
    rows_full = rows_of(db)

    write_file(s.project.root / "app/models.py", f"class Order: pass  # {MARKER}\n", mtime_ns=1_800_000_000 * 10**9)
    write_file(s.project.root / "app/new.txt", "new file\n")
    os.unlink(s.project.root / "docs/README.md")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO customers(name) VALUES (?)", (MARKER,))
        conn.execute("DELETE FROM customers WHERE id = 3")
    incr = backup(s, BackupKind.INCREMENTAL, T0 + timedelta(hours=1))
    res = upload.push(s, store, now=T0 + timedelta(hours=1))
    assert res.uploaded == (incr.value,)  # the full is there already
    assert upload.push(s, store, now=T0 + timedelta(hours=1)).uploaded == ()  # nothing missing
    state_incr, rows_incr = tree_state(s.project.root), rows_of(db)

    listing = remote_sets.scan(store)
    assert listing.complete == [full, incr] and listing.incomplete == []
    keys = [o.key for o in store.list(f"{incr}/")]
    assert keys[-1] != f"{incr}/manifest.json" or True  # listing order is by key; the upload order is checked below
    reports = verify_remote(s, store)
    assert [(r.set_id, r.ok) for r in reports] == [(full.value, True), (incr.value, True)], reports
    assert all(r.bytes_checked > 0 for r in reports)

    for o in store.list():  # nothing readable leaves the host: the marker is in no remote object
        with store.get_stream(o.key) as body:
            assert MARKER.encode() not in body.read(), o.key
    shutil.rmtree(s.storage.local_dir)  # the disaster: no local backup at all
    host.restore()  # only the private key (and the public keys of the config) from here on
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for when, set_state, set_rows, name in ((T0 + timedelta(minutes=30), state_full, rows_full, "at-full"),
                                           (T0 + timedelta(hours=2), state_incr, rows_incr, "at-incr")):
        target = tmp_path / name
        out_db = tmp_path / f"{name}.sqlite3"
        rep = restore_from_remote(s, store, RestoreRequest(target_dir=str(target), at=when,
                                                           target_database=f"sqlite:///{out_db}"),
                                  scratch_parent=scratch)
        assert diff_states(set_state, tree_state(target)) == []
        assert rows_of(out_db) == set_rows
        assert rep.files > 0
    assert (MARKER,) in [(r[1],) for r in rows_of(tmp_path / "at-incr.sqlite3")]
    assert list(scratch.iterdir()) == []  # the scratch directory is gone
    assert not s.storage.local_dir.exists()  # and no local backup directory was made


class Proxy:
    """A TCP proxy in front of the S3 endpoint that can be cut (the network or the service goes away
    mid-upload) while the service keeps its state. It drops every connection once ``limit`` bytes
    went upstream."""

    def __init__(self, upstream_port: int, limit: int | None = None) -> None:
        self.port = free_port()
        self.limit, self.sent, self.up = limit, 0, True
        self._upstream = upstream_port
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream:
                    with self._lock:
                        self.sent += len(data)
                        if self.limit is not None and self.sent > self.limit:
                            self.cut()
                            return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self._conns.clear()

    def close(self) -> None:
        self.cut()
        self._sock.close()


def test_s3_endpoint_gone_mid_upload_then_the_next_backup_completes_it(
        tmp_path: Path, moto_server: MotoServer, gpg_keys: GpgTestKeys, host: Host) -> None:
    s = remote_settings(tmp_path, gpg_keys, part_size_mib=5)
    assert s.remote is not None
    host.backup()
    write_file(s.project.root / "big.bin", os.urandom(12 << 20))  # several parts
    bucket = moto_server.bucket()
    direct = store_for(bucket, s.remote)
    full = backup(s, BackupKind.FULL, T0)
    proxy = Proxy(moto_server.port, limit=7 << 20)  # cut while the files archive is in flight
    try:
        cut = store_for(moto_server.bucket(bucket.bucket_name, create=False,
                                           endpoint_url=f"http://127.0.0.1:{proxy.port}",
                                           config={"retries": {"max_attempts": 1}}), s.remote)
        with pytest.raises(StorageError) as e:
            upload.push(s, cut, now=T0)
        assert f"upload of set {full}" in str(e.value) and " — " in str(e.value)
    finally:
        proxy.close()
    listing = remote_sets.scan(direct)
    assert listing.complete == []  # nothing lists as complete
    # an interrupted earlier attempt's objects, under the set's name, without a manifest
    client = bucket.credentials.get_s3_client()
    client.put_object(Bucket=bucket.bucket_name, Key=f"erp/{full}/files.tar.zst", Body=b"half an upload")
    client.put_object(Bucket=bucket.bucket_name, Key=f"erp/{full}/stale.bin", Body=b"from an older attempt")
    assert remote_sets.scan(direct).incomplete == [full]
    with pytest.raises(ChainError):
        restore_from_remote(s, direct, RestoreRequest(target_dir=str(tmp_path / "r0"), at=T0 + timedelta(days=1)),
                            scratch_parent=tmp_path)
    assert verify_remote(s, direct, [full.value])[0].problems[0].endswith(
        "incomplete remotely: no manifest.json (an upload did not finish; the next one completes it)")
    assert (tmp_path / "backups" / full.value / "manifest.json").is_file()  # the local set is untouched

    incr = backup(s, BackupKind.INCREMENTAL, T0 + timedelta(hours=1))  # the next backup's upload stage
    res = upload.push(s, direct, now=T0 + timedelta(hours=1), newest=incr)
    assert res.uploaded == (full.value, incr.value)  # catch-up: the older set first
    assert remote_sets.scan(direct).complete == [full, incr]
    assert f"{full}/stale.bin" not in [o.key for o in direct.list()]
    assert all(r.ok for r in verify_remote(s, direct))


def test_catch_up_window_and_parents(tmp_path: Path, moto_s3: S3Env, gpg_keys: GpgTestKeys, host: Host) -> None:
    s = remote_settings(tmp_path, gpg_keys, catch_up_days=2)
    assert s.remote is not None
    host.backup()
    store = store_for(moto_s3.bucket, s.remote)
    old = backup(s, BackupKind.FULL, T0 - timedelta(days=10))
    full = backup(s, BackupKind.FULL, T0)
    incr = backup(s, BackupKind.INCREMENTAL, T0 + timedelta(hours=1))
    res = upload.push(s, store, now=T0 + timedelta(hours=1))
    assert res.uploaded == (full.value, incr.value)
    assert any(old.value in w and "catch-up window" in w for w in res.warnings)
    # an incremental whose full is outside the window takes its full along
    s2 = remote_settings(tmp_path / "two", gpg_keys, catch_up_days=1)
    assert s2.remote is not None
    store2 = store_for(moto_s3.server.bucket(), s2.remote)
    f2 = backup(s2, BackupKind.FULL, T0 - timedelta(days=5))
    i2 = backup(s2, BackupKind.INCREMENTAL, T0)
    assert upload.push(s2, store2, now=T0).uploaded == (f2.value, i2.value)
    with pytest.raises(StorageError):
        upload.push(s2, store2, wanted=[BackupId("20200101T000000Z-full")])
    # what retention uses: a deleted set is gone, its neighbours untouched
    assert remote_sets.delete_set(store2, f2) > 2
    assert remote_sets.scan(store2).complete == [i2] and not list(store2.list(f"{f2}/"))


def one_full_uploaded(tmp_path: Path, keys: GpgTestKeys, host: Host, env: S3Env) -> tuple[Settings, RemoteStore,
                                                                                         BackupId]:
    s = remote_settings(tmp_path, keys)
    assert s.remote is not None
    host.backup()
    store = store_for(env.bucket, s.remote)
    full = backup(s, BackupKind.FULL, T0)
    upload.push(s, store, now=T0)
    return s, store, full


class ExplodingStore:
    """A store that must not be touched."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was used ({name}) before the request was checked")


def tamper(env: S3Env, key: str, transform: Any) -> None:
    c = env.client()
    body = c.get_object(Bucket=env.bucket.bucket_name, Key=key)["Body"].read()
    c.put_object(Bucket=env.bucket.bucket_name, Key=key, Body=transform(body))


def test_tampered_and_hostile_remote_objects(tmp_path: Path, moto_s3: S3Env, gpg_keys: GpgTestKeys,
                                              host: Host) -> None:
    s = remote_settings(tmp_path, gpg_keys)
    assert s.remote is not None
    host.backup()
    store: RemoteStore = store_for(moto_s3.bucket, s.remote)
    full = backup(s, BackupKind.FULL, T0)
    full2 = backup(s, BackupKind.FULL, T0 + timedelta(hours=1))
    upload.push(s, store, now=T0 + timedelta(hours=1))
    art = next(o.key for o in store.list(f"{full2}/") if o.key.split("/")[1].startswith("files."))
    tamper(moto_s3, f"erp/{art}", lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:])
    # hostile keys next to the sets: never opened, reported
    c, bucket = moto_s3.client(), moto_s3.bucket.bucket_name
    for key in ("erp/../escape", "erp/notaset/manifest.json", f"erp/{full}/../../x", "erp/20261128T090000Z-full/"
                "..%2Fetc", "erp/20261128T100000Z-full/manifest.json"):
        c.put_object(Bucket=bucket, Key=key, Body=b'{"not": "a manifest"}')
    listing = remote_sets.scan(store)
    assert len(listing.foreign) >= 3
    reports = {r.set_id: r for r in verify_remote(s, store)}
    assert reports[full.value].ok
    assert not reports[full2.value].ok and "does not match its checksum" in reports[full2.value].problems[0]
    assert not reports["20261128T100000Z-full"].ok
    host.restore()
    # --backup of the tampered set: refused, nothing written
    target = tmp_path / "t1"
    with pytest.raises(IntegrityError) as e:
        restore_from_remote(s, store, RestoreRequest(target_dir=str(target), backup_id=full2.value),
                            scratch_parent=tmp_path)
    assert "does not match its checksum" in str(e.value)
    assert not target.exists() or not any(target.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(SCRATCH_PREFIX)]
    # --at: the tampered and the bogus sets are passed over, with notes, for the older good one
    rep = restore_from_remote(s, store, RestoreRequest(target_dir=str(tmp_path / "t2"),
                                                       at=T0 + timedelta(days=1)), scratch_parent=tmp_path)
    assert rep.set_id == full.value
    assert any(full2.value in n for n in rep.notes), rep.notes
    # a manifest naming an artifact outside its set
    evil = f"erp/{full}/manifest.json"
    tamper(moto_s3, evil, lambda b: b.replace(b'"name": "files.', b'"name": "../../files.'))
    assert not verify_remote(s, store, [full.value])[0].ok
    with pytest.raises((IntegrityError, RestoreError)):
        restore_from_remote(s, store, RestoreRequest(target_dir=str(tmp_path / "t3"), backup_id=full.value),
                            scratch_parent=tmp_path)
    assert not (tmp_path / "files.tar.zst").exists()


def test_an_object_larger_than_its_manifest_says_is_not_read_whole(tmp_path: Path, moto_s3: S3Env,
                                                                   gpg_keys: GpgTestKeys, host: Host) -> None:
    s, store, full = one_full_uploaded(tmp_path, gpg_keys, host, moto_s3)
    tamper(moto_s3, f"erp/{full}/SHA256SUMS", lambda b: b + b"0" * (2 << 20))
    with pytest.raises(IntegrityError) as e:
        remote_sets.read_sums(store, full)
    assert "larger than" in str(e.value)
    assert not verify_remote(s, store)[0].ok


def test_ftp_store_round_trip(tmp_path: Path, ftp_server: FtpServer, gpg_keys: GpgTestKeys, host: Host) -> None:
    s = remote_settings(tmp_path, gpg_keys)
    assert s.remote is not None
    host.backup()
    store = store_for(ftp_server.block(), s.remote)
    full = backup(s, BackupKind.FULL, T0)
    write_file(s.project.root / "app/new.txt", "x\n")
    incr = backup(s, BackupKind.INCREMENTAL, T0 + timedelta(hours=1))
    state = tree_state(s.project.root)
    assert upload.push(s, store, now=T0 + timedelta(hours=1)).uploaded == (full.value, incr.value)
    assert all(r.ok for r in verify_remote(s, store))
    on_server = ftp_server.root / "backups" / "erp" / incr.value
    assert sorted(p.name for p in on_server.iterdir())[-1] == "manifest.json"
    shutil.rmtree(s.storage.local_dir)
    host.restore()
    restore_from_remote(s, store, RestoreRequest(target_dir=str(tmp_path / "out"), backup_id=incr.value),
                        scratch_parent=tmp_path)
    assert diff_states(state, tree_state(tmp_path / "out")) == []


def test_remote_without_encryption_is_refused(tmp_path: Path) -> None:
    from erp_backup.config import settings_from_dict

    with pytest.raises(ConfigError) as e:
        settings_from_dict({"remote": {"block": "erp-offsite"}}, source="c.toml")
    assert "[remote] without [encryption]" in str(e.value) and " — " in str(e.value)


def test_unsigned_or_foreign_signed_remote_sets_and_missing_keys(tmp_path: Path, moto_s3: S3Env,
                                                                 gpg_keys: GpgTestKeys, host: Host) -> None:
    s, store, full = one_full_uploaded(tmp_path, gpg_keys, host, moto_s3)
    host.restore(ring=host.empty_ring)  # no private key here
    target = tmp_path / "t"
    with pytest.raises(BackupError) as e:
        restore_from_remote(s, store, RestoreRequest(target_dir=str(target), backup_id=full.value),
                            scratch_parent=tmp_path)
    assert_actionable(e.value, "private key", secrets=(PASSPHRASE, SIGN_PASSPHRASE))
    host.restore(passphrase="wrong-passphrase-1")
    with pytest.raises(BackupError) as e:
        restore_from_remote(s, store, RestoreRequest(target_dir=str(target), backup_id=full.value),
                            scratch_parent=tmp_path)
    assert_actionable(e.value, "passphrase", secrets=(PASSPHRASE, SIGN_PASSPHRASE, "wrong-passphrase-1"))
    assert not target.exists() or not any(target.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(SCRATCH_PREFIX)]
    host.restore()
    # re-signed by a stranger: refused
    c, bucket = moto_s3.client(), moto_s3.bucket.bucket_name
    sums = c.get_object(Bucket=bucket, Key=f"erp/{full}/SHA256SUMS")["Body"].read()
    other = keyring(tmp_path, "ring-other", gpg_keys.other.secret)
    (tmp_path / "sums").write_bytes(sums)
    subprocess.run(["gpg", "--homedir", str(other), "--batch", "--pinentry-mode", "loopback", "--passphrase",
                    "pw-Stranger-1", "--detach-sign", "-o", str(tmp_path / "sums.sig"), str(tmp_path / "sums")],
                   check=True, capture_output=True, timeout=60)
    kill_agent(other)
    c.put_object(Bucket=bucket, Key=f"erp/{full}/SHA256SUMS.sig", Body=(tmp_path / "sums.sig").read_bytes())
    rep = verify_remote(s, store)[0]
    assert not rep.ok and "sign" in rep.problems[0], rep.problems
    with pytest.raises(IntegrityError) as ie:
        restore_from_remote(s, store, RestoreRequest(target_dir=str(target), backup_id=full.value),
                            scratch_parent=tmp_path)
    assert "sign" in str(ie.value)
    # signature removed: refused as well
    c.delete_object(Bucket=bucket, Key=f"erp/{full}/SHA256SUMS.sig")
    assert not verify_remote(s, store)[0].ok
    with pytest.raises(ChainError) as ce:  # --at: no set left that is signed as configured
        restore_from_remote(s, store, RestoreRequest(target_dir=str(target), at=T0 + timedelta(days=1)),
                            scratch_parent=tmp_path)
    assert "not signed" in str(ce.value)
    assert not target.exists() or not any(target.iterdir())


def test_scratch_directories_of_killed_runs_are_removed(tmp_path: Path) -> None:
    from erp_backup.remote_restore import clean_leftovers, scratch_dir

    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"{SCRATCH_PREFIX}{dead.pid}-abc123"
    (left / "20261128T020000Z-full").mkdir(parents=True)
    mine = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-live"
    mine.mkdir()
    other = tmp_path / "erp-backup-remote-notapid"
    other.mkdir()
    with scratch_dir(tmp_path) as scratch:
        assert scratch.stat().st_mode & 0o777 == 0o700
        assert not left.exists() and mine.exists() and other.exists()  # only the dead run's
        (scratch / "x").write_bytes(b"x")
    assert not scratch.exists()
    assert clean_leftovers(tmp_path) == []
    with pytest.raises(ConfigError):
        with scratch_dir(tmp_path / "missing"):
            pass
    from erp_backup.remote_restore import precheck

    with pytest.raises(ConfigError) as e:  # the download would land in the target it restores into
        precheck(RestoreRequest(target_dir=str(tmp_path), backup_id="20261128T020000Z-full", force=True),
                 tmp_path / "sub")
    assert "lies inside the target" in str(e.value)


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_disaster_round_trip_server_databases(engine: str, tmp_path: Path, moto_s3: S3Env, gpg_keys: GpgTestKeys,
                                              host: Host, request: pytest.FixtureRequest) -> None:
    make_db: Any = request.getfixturevalue("pg_db" if engine == "postgresql" else "my_db")
    sql: Any = request.getfixturevalue("pg_sql" if engine == "postgresql" else "my_sql")
    src = make_db("src")
    sql(src, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(100))")
    sql(src, "INSERT INTO customers(id, name) VALUES (1, 'a'), (2, 'b')")
    s = remote_settings(tmp_path, gpg_keys, db=src.redacted())
    assert s.remote is not None
    host.backup()
    store = store_for(moto_s3.bucket, s.remote)
    backup(s, BackupKind.FULL, T0)
    sql(src, f"INSERT INTO customers(id, name) VALUES (3, '{MARKER}')")
    write_file(s.project.root / "app/after.txt", "after\n")
    incr = backup(s, BackupKind.INCREMENTAL, T0 + timedelta(hours=1))
    state = tree_state(s.project.root)
    assert upload.push(s, store, now=T0 + timedelta(hours=1)).uploaded[-1] == incr.value
    for o in store.list():
        with store.get_stream(o.key) as body:
            assert MARKER.encode() not in body.read(), o.key
    shutil.rmtree(s.storage.local_dir)
    host.restore()
    target_db = make_db("restored", create=False)
    rep = restore_from_remote(s, store, RestoreRequest(target_dir=str(tmp_path / "out"), at=T0 + timedelta(hours=2),
                                                       target_database=target_db.redacted()),
                              scratch_parent=tmp_path)
    assert rep.set_id == incr.value
    with pytest.raises(RestoreError) as e:  # the live database, without --yes: refused before a download
        restore_from_remote(s, ExplodingStore(), RestoreRequest(target_database=src.redacted(), backup_id=incr.value))
    assert "is the live database" in str(e.value)
    assert [tuple(r) for r in sql(target_db, "SELECT id, name FROM customers ORDER BY id")] == [
        (1, "a"), (2, "b"), (3, MARKER)]
    assert diff_states(state, tree_state(tmp_path / "out")) == []


def test_list_remote_statuses(tmp_path: Path, moto_s3: S3Env, gpg_keys: GpgTestKeys, host: Host,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from erp_backup.remote_cli import list_remote

    s, store, full = one_full_uploaded(tmp_path, gpg_keys, host, moto_s3)
    write_file(s.project.root / "app/more.txt", "more\n")
    incr = backup(s, BackupKind.INCREMENTAL, T0 + timedelta(hours=1))
    full2 = backup(s, BackupKind.FULL, T0 + timedelta(hours=2))
    upload.push(s, store, now=T0 + timedelta(hours=2))
    c, bucket = moto_s3.client(), moto_s3.bucket.bucket_name
    c.delete_object(Bucket=bucket, Key=f"erp/{full}/manifest.json")  # as a half-done delete leaves it
    c.put_object(Bucket=bucket, Key=f"erp/{full2}/manifest.json", Body=b"{not json")
    c.put_object(Bucket=bucket, Key="erp/stray.txt", Body=b"x")
    assert list_remote(s, True, store) == 0
    out = json.loads(capsys.readouterr().out)
    status = {r["id"]: (r["status"], r["reason"] or "") for r in out["sets"]}
    assert status[full.value][0] == "incomplete"
    assert status[incr.value][0] == "broken" and full.value in status[incr.value][1]
    assert status[full2.value][0] == "damaged"
    assert out["foreign"] == ["stray.txt"]
    assert list_remote(s, False, store) == 0
    text = capsys.readouterr().out
    assert "(broken: " in text and "1 object(s) that belong to no set" in text


@pytest.mark.parametrize("how", ["unsigned", "another set's signature", "signed by a stranger"])
def test_a_set_someone_put_into_the_local_directory_is_never_sent_with_our_signature(
        how: str, tmp_path: Path, moto_s3: S3Env, gpg_keys: GpgTestKeys, host: Host) -> None:
    """The upload signs the remote copy of a plaintext local set: it must only vouch for sets this
    host signed. A review had a set written into the backup directory by another erp-backup (no
    [encryption]) uploaded, signed by the backup host, verified and restored from the remote copy."""
    s = remote_settings(tmp_path, gpg_keys)
    assert s.remote is not None
    host.backup()
    store = store_for(moto_s3.bucket, s.remote)
    ours = backup(s, BackupKind.FULL, T0)
    evil_root = make_small_project(tmp_path / "evil")
    write_file(evil_root / "manage.py", "import os; os.system('touch /tmp/pwned')\n")
    plain = s.model_copy(update={"encryption": None, "remote": None,
                                 "project": s.project.model_copy(update={"root": evil_root})})
    evil = run_backup(plain, BackupKind.FULL, now=T0 + timedelta(minutes=30)).manifest.id
    local = Path(s.storage.local_dir)
    if how == "another set's signature":
        shutil.copy(local / ours.value / "SHA256SUMS.sig", local / evil.value / "SHA256SUMS.sig")
    elif how == "signed by a stranger":
        ring = keyring(tmp_path, "ring-stranger", gpg_keys.other.secret)
        subprocess.run(["gpg", "--homedir", str(ring), "--batch", "--pinentry-mode", "loopback", "--passphrase-fd",
                        "0", "--detach-sign", "-o", str(local / evil.value / "SHA256SUMS.sig"),
                        str(local / evil.value / "SHA256SUMS")], input=gpg_keys.other.passphrase + "\n",
                       text=True, check=True, capture_output=True)
        kill_agent(ring)

    res = upload.push(s, store, now=T0 + timedelta(hours=1))  # catch-up: ours is sent, the other one is not
    assert res.uploaded == (ours.value,)
    assert [w for w in res.warnings if evil.value in w and "not sent" in w], res.warnings
    with pytest.raises(BackupError) as e:  # asked for by name: refused in one line
        upload.push(s, store, wanted=[evil])
    assert_actionable(e.value, f"upload of set {evil}", "sign")
    assert evil.value not in remote_sets.scan(store).objects


@pytest.mark.parametrize("planted", ["stub manifest", "another set's signed copy"])
def test_objects_planted_under_the_new_sets_id_do_not_make_its_upload_a_no_op(
        planted: str, tmp_path: Path, moto_s3: S3Env, gpg_keys: GpgTestKeys, host: Host) -> None:
    """Set ids are start times: easy to guess. A review planted <id>/manifest.json before the backup
    of that id ran: the upload took the set for complete and sent nothing, run after run."""
    import io

    s = remote_settings(tmp_path, gpg_keys)
    assert s.remote is not None
    host.backup()
    store = store_for(moto_s3.bucket, s.remote)
    full = backup(s, BackupKind.FULL, T0)
    upload.push(s, store, now=T0, newest=full)
    incr = backup(s, BackupKind.INCREMENTAL, T0 + timedelta(hours=1))
    if planted == "stub manifest":
        store.put_stream(f"{incr}/SHA256SUMS", io.BytesIO(b"0" * 64 + b"  manifest.json\n"))
        store.put_stream(f"{incr}/manifest.json", io.BytesIO(b"{}"))
    else:  # the full's signed objects, copied under the incremental's id
        for o in store.list(f"{full}/"):
            with store.get_stream(o.key) as body:
                store.put_stream(f"{incr}/{o.key.split('/', 1)[1]}", io.BytesIO(body.read()))
    assert incr in remote_sets.scan(store).complete
    res = upload.push(s, store, now=T0 + timedelta(hours=1), newest=incr)
    assert res.uploaded == (incr.value,), res
    assert [w for w in res.warnings if incr.value in w and "sent again" in w], res.warnings
    reports = verify_remote(s, store, [incr.value])
    assert reports[0].ok, reports[0].problems
