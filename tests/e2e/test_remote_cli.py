"""The disaster, by the CLI against a Prefect server: blocks from the environment, encrypted backups
uploaded by the backup flows' upload stage to S3 (moto_server over HTTP), the local backup directory
deleted, then ``restore --from-remote --at`` on the "restore host" (private key only)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from erp_backup.demo import make_project, mutate_files
from tests.conftest import diff_states, tree_state
from tests.integration import offsite_fixtures
from tests.integration.offsite_fixtures import (
    ACCESS_KEY,
    FTP_PASSWORD,
    FTP_USER,
    PASSPHRASE,
    SECRET_KEY,
    SIGN_PASSPHRASE,
    GpgTestKeys,
    MotoServer,
    kill_agent,
    start_ftp,
)
from tests.integration.test_encrypted_sets import keyring

from .conftest import PrefectServer

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "erp-backup")
moto_server = offsite_fixtures.moto_server
gpg_keys = offsite_fixtures.gpg_keys
MARKER = "MARKER-e2e-remote-5531"
DB_FILES = ["db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "db.sqlite3-journal"]


def cli(env: dict[str, str], config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--config", str(config), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM customers ORDER BY 1").fetchall() if conn.execute(
            "SELECT name FROM sqlite_master WHERE name = 'customers'").fetchone() else []


def test_disaster_round_trip_from_s3_by_the_cli(prefect_server: PrefectServer, moto_server: MotoServer,
                                                gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO customers(name) VALUES (?)", [(f"c{i}",) for i in range(20)])
    bucket = moto_server.bucket()
    keys_file = tmp_path / "keys.asc"
    keys_file.write_text(gpg_keys.enc.public + gpg_keys.sign.public)
    local = tmp_path / "bk"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "sqlite:///{db}"\n'
                   f'[storage]\nlocal_dir = "{local}"\n'
                   f'[encryption]\nrecipients = ["{gpg_keys.enc.fingerprint}"]\npublic_keys = "{keys_file}"\n'
                   f'signers = ["{gpg_keys.sign.fingerprint}"]\n'
                   f'[remote]\nblock = "erp-offsite-{bucket.bucket_name}"\nprefix = "erp"\nretries = 0\n')
    backup_ring = keyring(tmp_path, "ring-backup", gpg_keys.sign.secret)
    restore_ring = keyring(tmp_path, "ring-restore", gpg_keys.enc.secret)
    backup_env = {**prefect_server.env, "GNUPGHOME": str(backup_ring),
                  "ERP_BACKUP_GPG_SIGNING_PASSPHRASE": SIGN_PASSPHRASE}
    try:
        made = cli({**backup_env, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}, cfg,
                   "block", "s3", "--name", f"erp-offsite-{bucket.bucket_name}", "--bucket", bucket.bucket_name,
                   "--endpoint-url", moto_server.endpoint, "--region", "us-east-1")
        assert made.returncode == 0, made.stderr[-3000:]
        assert SECRET_KEY not in made.stdout + made.stderr
        no_keys = cli(backup_env, cfg, "block", "s3", "--name", "x", "--bucket", "b")
        assert no_keys.returncode != 0 and "AWS_ACCESS_KEY_ID is not set" in no_keys.stderr.strip().splitlines()[-1]
        keys_env = {**backup_env, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        again = cli(keys_env, cfg, "block", "s3", "--name", f"erp-offsite-{bucket.bucket_name}", "--bucket", "b")
        assert again.returncode != 0 and "--overwrite" in again.stderr.strip().splitlines()[-1], again.stderr[-2000:]
        # a name Prefect does not take: the hint was "pass --overwrite" (a review's)
        bad = cli(keys_env, cfg, "block", "ftp", "--name", "Bad Name/x", "--host", "h", "--user", "anonymous")
        last = bad.stderr.strip().splitlines()[-1]
        assert bad.returncode != 0 and "check the block name" in last and "--overwrite" not in last, last

        full = cli(backup_env, cfg, "backup", "full")
        assert full.returncode == 0, full.stderr[-3000:]
        mutate_files(root, 1)
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO customers(name) VALUES (?)", (MARKER,))
        incr = cli(backup_env, cfg, "backup", "incremental")
        assert incr.returncode == 0, incr.stderr[-3000:]
        ids = [full.stdout.strip().splitlines()[-1], incr.stdout.strip().splitlines()[-1]]
        uploads = prefect_server.flow_runs("erp-backup-incremental")
        assert uploads and uploads[0]["state_type"] == "COMPLETED"
        state, data = tree_state(root, skip=DB_FILES), rows(db)
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        listed = cli(backup_env, cfg, "list", "--remote", "--json")
        assert listed.returncode == 0, listed.stderr[-3000:]
        sets = json.loads(listed.stdout)["sets"]
        assert [(s["id"], s["status"]) for s in sets] == [(ids[0], "complete"), (ids[1], "complete")]
        up = cli(backup_env, cfg, "upload")
        assert up.returncode == 0 and "bytes sent" in up.stdout, up.stderr[-3000:]
        verified = cli(backup_env, cfg, "verify", "--remote")
        assert verified.returncode == 0, verified.stderr[-3000:]
        assert verified.stdout.count("passed") == 2

        shutil.rmtree(local)  # the disaster
        restore_env = {**prefect_server.env, "GNUPGHOME": str(restore_ring), "ERP_BACKUP_GPG_PASSPHRASE": PASSPHRASE}
        target = tmp_path / "restored"
        out = cli(restore_env, cfg, "restore", "--from-remote", "--at", at, "--target-dir", str(target),
                  "--scratch-dir", str(tmp_path))
        assert out.returncode == 0, out.stderr[-3000:]
        assert diff_states(state, tree_state(target, skip=DB_FILES)) == []
        assert rows(target / "db.sqlite3") == data and (MARKER,) in [(r[1],) for r in data]
        assert not local.exists()  # the restore made no local backup directory
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("erp-backup-remote-")]
        for text in (out.stdout + out.stderr, listed.stdout, verified.stdout):
            assert PASSPHRASE not in text and SECRET_KEY not in text
        runs = prefect_server.flow_runs("erp-backup-restore")
        assert runs and runs[0]["state_type"] == "COMPLETED"

        again = cli(restore_env, cfg, "restore", "--from-remote", "--target-dir", str(target))
        assert again.returncode == 2
        assert again.stderr.strip().splitlines()[-1].startswith("erp-backup: error: --from-remote needs --backup ID")

        # an FTPS store: block from the environment, found by its bare name
        ftp = start_ftp(tmp_path / "ftp")
        try:
            (tmp_path / "ca.pem").write_text(ftp.ca_pem)
            args = ["block", "ftp", "--name", f"ftp-{bucket.bucket_name}", "--host", "127.0.0.1",
                    "--port", str(ftp.port), "--user", FTP_USER, "--directory", "/backups",
                    "--ca-file", str(tmp_path / "ca.pem")]
            plain = cli({**backup_env, "ERP_BACKUP_FTP_PASSWORD": FTP_PASSWORD}, cfg, *args, "--no-tls")
            assert plain.returncode == 2 and "plain FTP" in plain.stderr.strip().splitlines()[-1]
            made = cli({**backup_env, "ERP_BACKUP_FTP_PASSWORD": FTP_PASSWORD}, cfg, *args)
            assert made.returncode == 0, made.stderr[-3000:]
            assert FTP_PASSWORD not in made.stdout + made.stderr
            cfg.write_text(cfg.read_text().replace(f'block = "erp-offsite-{bucket.bucket_name}"',
                                                   f'block = "ftp-{bucket.bucket_name}"'))
            empty = cli(backup_env, cfg, "list", "--remote")
            assert empty.returncode == 0, empty.stderr[-3000:]
            assert "no backup sets in ftps://" in empty.stdout
        finally:
            ftp.stop()
    finally:
        for ring in (backup_ring, restore_ring):
            kill_agent(ring)


def test_a_failed_upload_fails_the_run_and_keeps_the_local_set(prefect_server: PrefectServer, gpg_keys: GpgTestKeys,
                                                               tmp_path: Path) -> None:
    root = tmp_path / "erp"
    db = make_project(root)
    keys_file = tmp_path / "keys.asc"
    keys_file.write_text(gpg_keys.enc.public + gpg_keys.sign.public)
    dead = f"http://127.0.0.1:{offsite_fixtures.free_port()}"  # nothing listens there
    name = f"dead-{offsite_fixtures.free_port()}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "sqlite:///{db}"\n'
                   f'[storage]\nlocal_dir = "{tmp_path / "bk"}"\n[backup]\ntask_retries = 0\n'
                   f'[encryption]\nrecipients = ["{gpg_keys.enc.fingerprint}"]\npublic_keys = "{keys_file}"\n'
                   f'signers = ["{gpg_keys.sign.fingerprint}"]\n'
                   f'[remote]\nblock = "{name}"\nretries = 0\n')
    ring = keyring(tmp_path, "ring-backup", gpg_keys.sign.secret)
    env = {**prefect_server.env, "GNUPGHOME": str(ring), "ERP_BACKUP_GPG_SIGNING_PASSPHRASE": SIGN_PASSPHRASE}
    try:
        made = cli({**env, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}, cfg,
                   "block", "s3", "--name", name, "--bucket", "b", "--endpoint-url", dead, "--region", "us-east-1")
        assert made.returncode == 0, made.stderr[-3000:]
        run = cli(env, cfg, "backup", "full")
        assert run.returncode != 0
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("erp-backup: error: upload failed (the local sets are kept") and \
            "does not answer" in last, last
        assert SECRET_KEY not in run.stdout + run.stderr
        runs = prefect_server.flow_runs("erp-backup-full")
        assert runs[0]["state_type"] == "FAILED"  # so the failure automation alerts
        listed = cli(env, cfg, "list", "--json")
        sets = json.loads(listed.stdout)["sets"]
        assert [s["status"] for s in sets] == ["committed"]  # the local set is kept
    finally:
        kill_agent(ring)
