"""The GPG keys block end to end: created by `erp-backup block gpg` (secrets from files and the
environment), used by a backup flow on a real Prefect server (encrypt + sign) and by a restore on a
"restore host" whose block holds the private key and its passphrase."""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from pathlib import Path

from tests.conftest import diff_states, make_small_project, tree_state, write_file
from tests.e2e.conftest import VENV_BIN, PrefectServer
from tests.integration.offsite_fixtures import PASSPHRASE, SIGN_PASSPHRASE, GpgTestKeys, gpg_keys  # noqa: F401

CLI = str(VENV_BIN / "erp-backup")
MARKER = "OKAPI-MARKER-55e1"


def cli(server: PrefectServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in server.env.items() if not k.startswith("ERP_BACKUP_")}
    return subprocess.run([CLI, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=240)


def last_line(r: subprocess.CompletedProcess[str]) -> str:
    return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


def test_block_created_from_files_and_environment_then_used_by_backup_and_restore(
        prefect_server: PrefectServer, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:  # noqa: F811
    k = gpg_keys
    (tmp_path / "pub.asc").write_text(k.enc.public + k.sign.public)
    (tmp_path / "sign.asc").write_text(k.sign.secret)
    (tmp_path / "restore.asc").write_text(k.enc.secret)
    empty = tmp_path / "no-keyring"
    empty.mkdir(mode=0o700)
    backup_block, restore_block = f"gpg-{uuid.uuid4().hex[:6]}", f"gpg-{uuid.uuid4().hex[:6]}"

    # a wrong passphrase: one line, nothing saved
    r = cli(prefect_server, "block", "gpg", "--name", backup_block, "--public-keys", str(tmp_path / "pub.asc"),
            "--signing-key-file", str(tmp_path / "sign.asc"),
            env={"ERP_BACKUP_GPG_SIGNING_PASSPHRASE": "not-it"})
    assert r.returncode != 0 and last_line(r).startswith("erp-backup: error: ") and "passphrase" in last_line(r)
    assert "not-it" not in r.stderr

    r = cli(prefect_server, "block", "gpg", "--name", backup_block, "--public-keys", str(tmp_path / "pub.asc"),
            "--signing-key-file", str(tmp_path / "sign.asc"), "--trusted-signer", k.sign.fingerprint,
            env={"ERP_BACKUP_GPG_SIGNING_PASSPHRASE": SIGN_PASSPHRASE})
    assert r.returncode == 0, r.stderr[-2000:]
    assert k.sign.fingerprint in r.stdout
    r = cli(prefect_server, "block", "gpg", "--name", restore_block, "--public-keys", str(tmp_path / "pub.asc"),
            "--trusted-signer", k.sign.fingerprint,
            env={"ERP_BACKUP_GPG_PRIVATE_KEY": k.enc.secret, "ERP_BACKUP_GPG_PASSPHRASE": PASSPHRASE})
    assert r.returncode == 0, r.stderr[-2000:]
    assert k.enc.fingerprint in r.stdout

    root = make_small_project(tmp_path / "erp")
    write_file(root / "app/notes.txt", f"{MARKER}\n" * 10)
    db = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.execute("INSERT INTO t VALUES (?)", (MARKER,))
    conn.commit()
    conn.close()
    backups = tmp_path / "bk"

    def config(block: str) -> Path:
        cfg = tmp_path / f"{block}.toml"
        cfg.write_text(f'[project]\nroot = "{root}"\nkey_files = []\n[database]\nurl = "sqlite:///{db}"\n'
                       f'[storage]\nlocal_dir = "{backups}"\n'
                       f'[encryption]\nrecipients = ["{k.enc.fingerprint}"]\nblock = "{block}"\nlocal = true\n'
                       f'sign = true\n')
        return cfg

    r = cli(prefect_server, "--config", str(config(backup_block)), "backup", "full", env={"GNUPGHOME": str(empty)})
    assert r.returncode == 0, r.stderr[-3000:]
    sid = r.stdout.strip().splitlines()[-1]
    names = sorted(p.name for p in (backups / sid).iterdir())
    assert names == ["SHA256SUMS", "SHA256SUMS.sig", "db.sqlite.sqlite3.zst.gpg", "files.tar.zst.gpg",
                     "manifest.json"], names
    for p in (backups / sid).iterdir():
        if p.name != "manifest.json":
            assert MARKER.encode() not in p.read_bytes(), p

    # the backup host's block has no private key: a full verify says what to do
    r = cli(prefect_server, "--config", str(config(backup_block)), "verify", sid, env={"GNUPGHOME": str(empty)})
    assert r.returncode != 0 and "no private key" in last_line(r) and "--quick" in last_line(r), r.stderr[-2000:]
    r = cli(prefect_server, "--config", str(config(backup_block)), "verify", "--quick", sid,
            env={"GNUPGHOME": str(empty)})
    assert r.returncode == 0, r.stderr[-2000:]

    # the restore host: private key and passphrase from its block, nothing in the environment
    target = tmp_path / "restored"
    r = cli(prefect_server, "--config", str(config(restore_block)), "restore", "--backup", sid,
            "--target-dir", str(target), "--target-database", f"sqlite:///{tmp_path / 'restored.sqlite3'}",
            env={"GNUPGHOME": str(empty)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert diff_states(tree_state(root), tree_state(target)) == []
    conn = sqlite3.connect(tmp_path / "restored.sqlite3")
    assert conn.execute("SELECT v FROM t").fetchall() == [(MARKER,)]
    conn.close()
    for run in prefect_server.flow_runs():
        for secret in (PASSPHRASE, SIGN_PASSPHRASE, "PRIVATE KEY BLOCK"):
            assert secret not in str(run["parameters"])
