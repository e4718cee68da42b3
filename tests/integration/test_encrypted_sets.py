"""Encrypted and signed sets through the real pipeline, verify, restore and the off-site copy.

Real gpg (keys from ``gpg_keys``), real SQLite/PostgreSQL; the operator's keyrings are real
GNUPGHOME directories: the backup host's holds only the signing key, the restore host's the
decryption key. The agents they start are killed before every "wrong passphrase" check (gpg-agent
caches passphrases).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup import encryption
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository
from erp_backup.config import EncryptionConfig, Settings
from erp_backup.core import manifest as mf
from erp_backup.core.errors import BackupError, CryptoError
from erp_backup.core.models import BackupId, BackupKind
from erp_backup.pipeline import run_backup
from erp_backup.remote_copy import SIG, remote_copy
from erp_backup.restore import restore
from erp_backup.verify import NO_KEY_LEVEL, verify_sets
from tests.conftest import diff_states, make_settings, make_small_project, tree_state, write_file
from tests.integration.conftest import assert_actionable
from tests.integration.offsite_fixtures import PASSPHRASE, SIGN_PASSPHRASE, GpgTestKeys, kill_agent

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
DB_GPG = "db.sqlite.sqlite3.zst.gpg"
MARKER = "ZEBRA-MARKER-7f3a91c2"
SECRETS = (PASSPHRASE, SIGN_PASSPHRASE)


def _gpg(home: Path, *args: str, stdin: str | None = None) -> str:
    res = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args],
                         input=stdin, capture_output=True, text=True, timeout=60, check=True)
    return res.stdout


def keyring(tmp_path: Path, name: str, *secret: str) -> Path:
    home = tmp_path / name
    home.mkdir(mode=0o700)
    for armored in secret:
        _gpg(home, "--import", stdin=armored)
    return home


class Host:
    """Which keyring GNUPGHOME points to, and the passphrases in the environment."""

    def __init__(self, mp: pytest.MonkeyPatch, keys: GpgTestKeys, tmp_path: Path) -> None:
        self.mp = mp
        self.backup_ring = keyring(tmp_path, "ring-backup", keys.sign.secret)
        self.restore_ring = keyring(tmp_path, "ring-restore", keys.enc.secret)
        self.empty_ring = keyring(tmp_path, "ring-empty")

    def backup(self) -> None:
        self.mp.setenv("GNUPGHOME", str(self.backup_ring))
        self.mp.setenv(encryption.ENV_SIGNING_PASSPHRASE, SIGN_PASSPHRASE)
        self.mp.delenv(encryption.ENV_PASSPHRASE, raising=False)

    def restore(self, passphrase: str | None = PASSPHRASE, ring: Path | None = None) -> None:
        ring = ring or self.restore_ring
        kill_agent(ring)  # it caches passphrases
        self.mp.setenv("GNUPGHOME", str(ring))
        self.mp.delenv(encryption.ENV_SIGNING_PASSPHRASE, raising=False)
        if passphrase is None:
            self.mp.delenv(encryption.ENV_PASSPHRASE, raising=False)
        else:
            self.mp.setenv(encryption.ENV_PASSPHRASE, passphrase)

    def stop(self) -> None:
        for ring in (self.backup_ring, self.restore_ring, self.empty_ring):
            kill_agent(ring)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, gpg_keys: GpgTestKeys, tmp_path: Path) -> Host:
    h = Host(monkeypatch, gpg_keys, tmp_path)
    yield h  # type: ignore[misc]
    h.stop()


def enc_settings(tmp_path: Path, keys: GpgTestKeys, *, local: bool, sign: bool = True, **kw: object) -> Settings:
    pub = tmp_path / "keys.asc"
    if not pub.exists():
        pub.write_text(keys.enc.public + keys.sign.public)
    base = make_settings(tmp_path, **kw)  # type: ignore[arg-type]
    return base.model_copy(update={"encryption": EncryptionConfig(
        recipients=[keys.enc.fingerprint], public_keys=pub, local=local, sign=sign,
        signers=[keys.sign.fingerprint])})


def project_with_marker(tmp_path: Path) -> tuple[Path, Path]:
    root = make_small_project(tmp_path / "erp")
    write_file(root / "app/secret.txt", f"customer notes {MARKER}\n" * 20)
    db = tmp_path / "db" / "app.sqlite3"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO customers(name) VALUES (?)", [(f"c{i}",) for i in range(40)] + [(MARKER,)])
    conn.commit()
    conn.close()
    return root, db


def all_bytes(path: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()]


def assert_no_marker(path: Path) -> None:
    files = all_bytes(path)
    assert files, f"nothing under {path}: the check proves nothing"
    for p, data in files:
        if p.name == MANIFEST:
            continue  # names, sizes and hashes only (README: why the manifest stays readable)
        assert MARKER.encode() not in data, p
        assert MARKER.encode("utf-16-le") not in data, p


def no_gpg_homes_left() -> list[str]:
    import tempfile

    return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("erpb-gpg-")]


def rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, name FROM customers ORDER BY id").fetchall()
    finally:
        conn.close()


def test_encrypted_signed_chain_round_trip(host: Host, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    root, db = project_with_marker(tmp_path)
    s = enc_settings(tmp_path, gpg_keys, local=True, root=root, db=db)
    before_homes = set(no_gpg_homes_left())
    host.backup()
    full = run_backup(s, BackupKind.FULL, now=T0)
    state_full = tree_state(root)
    write_file(root / "app/new.py", "x = 1\n")
    (root / "docs/README.md").unlink()
    inc = run_backup(s, BackupKind.INCREMENTAL, now=T0 + timedelta(hours=1))
    state_inc = tree_state(root)

    # the backup host holds no private key: its verification after the backup was the quick one
    assert full.verify.level == NO_KEY_LEVEL and full.verify.ok
    assert "no private key" in str(full.report.row["verification"])
    d = full.path
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted([MANIFEST, SUMS, SIG, "files.tar.zst.gpg", DB_GPG]), names
    for p in d.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p
    sums = mf.parse_sha256sums((d / SUMS).read_text())
    for name in ("files.tar.zst.gpg", DB_GPG):
        assert sums[name] == hashlib.sha256((d / name).read_bytes()).hexdigest()
    m = LocalRepository(s.storage.local_dir).read_manifest(full.manifest.id)
    assert m.recipients == (gpg_keys.enc.fingerprint,)
    assert {a.encryption for a in m.artifacts} == {"gpg"}
    assert_no_marker(s.storage.local_dir)
    for p, data in all_bytes(s.storage.local_dir):
        for secret in SECRETS:
            assert secret.encode() not in data, p
    # the signature checks by hand with gpg (the signer's public key in a keyring of its own)
    check = keyring(tmp_path, "ring-check")
    _gpg(check, "--import", stdin=gpg_keys.sign.public)
    _gpg(check, "--verify", str(d / SIG), str(d / SUMS))
    kill_agent(check)
    # every run removed its private GNUPGHOME (and so stopped its agent)
    assert set(no_gpg_homes_left()) == before_homes

    # a quick verify needs no key; a full verify without the key says what to do, in one line
    repo = LocalRepository(s.storage.local_dir)
    assert all(r.ok for r in verify_sets(repo, [full.manifest.id.value, inc.manifest.id.value], level="quick",
                                         settings=s))
    with pytest.raises(CryptoError) as e:
        verify_sets(repo, [inc.manifest.id.value], level="full", settings=s)
    assert_actionable(e.value, "no private key", "--quick", secrets=SECRETS)

    # on the restore host: full verify and the restore of each set
    host.restore()
    reps = verify_sets(repo, [full.manifest.id.value, inc.manifest.id.value], level="full", settings=s)
    assert all(r.ok and r.level == "full" and r.files_checked > 0 for r in reps), reps
    for res, state in ((full, state_full), (inc, state_inc)):
        target = tmp_path / f"restore-{res.manifest.id}"
        out_db = tmp_path / f"restored-{res.manifest.id}.sqlite3"
        from erp_backup.core.dburl import DatabaseUrl

        rep = restore(repo, target_dir=target, backup_id=res.manifest.id.value,
                      target_db=DatabaseUrl("sqlite", str(out_db)), settings=s)
        assert diff_states(state, tree_state(target)) == []
        assert rows(out_db) == rows(db)
        assert rep.files > 0
    assert set(no_gpg_homes_left()) == before_homes


def _one_set(host: Host, keys: GpgTestKeys, tmp_path: Path, *, local: bool) -> tuple[Settings, LocalRepository,
                                                                                         BackupId]:
    root, db = project_with_marker(tmp_path)
    s = enc_settings(tmp_path, keys, local=local, root=root, db=db)
    host.backup()
    res = run_backup(s, BackupKind.FULL, now=T0)
    return s, LocalRepository(s.storage.local_dir), res.manifest.id


def test_missing_key_or_wrong_passphrase_restores_nothing(host: Host, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    s, repo, sid = _one_set(host, gpg_keys, tmp_path, local=True)
    target = tmp_path / "target"
    cases: list[tuple[Callable[[], None], str]] = [
        (lambda: host.restore(ring=host.empty_ring), "no private key"),
        (lambda: host.restore(passphrase="wrong-passphrase"), "wrong passphrase"),
        (lambda: host.restore(passphrase=None), "needs a passphrase"),
    ]
    for prepare, expected in cases:
        prepare()
        with pytest.raises(BackupError) as e:
            restore(repo, target_dir=target, backup_id=sid.value, settings=s)
        assert_actionable(e.value, expected, secrets=SECRETS)
        assert not target.exists(), f"{expected}: the restore wrote into {target}"
    # and right after a good one (the agent would have cached it): still refused
    host.restore()
    restore(repo, target_dir=tmp_path / "good", backup_id=sid.value, settings=s)
    host.restore(passphrase="wrong-passphrase")
    with pytest.raises(CryptoError, match="wrong passphrase"):
        restore(repo, target_dir=target, backup_id=sid.value, settings=s)
    assert not target.exists()


@pytest.mark.parametrize("local", [True, False])
def test_unsigned_or_foreign_signed_set_is_refused(host: Host, gpg_keys: GpgTestKeys, tmp_path: Path,
                                                   local: bool) -> None:
    s, repo, sid = _one_set(host, gpg_keys, tmp_path, local=local)
    d = repo.set_dir(sid)
    host.restore()
    target = tmp_path / "target"
    good_sig = (d / SIG).read_bytes()

    (d / SIG).unlink()
    with pytest.raises(CryptoError) as e:
        restore(repo, target_dir=target, backup_id=sid.value, settings=s)
    assert_actionable(e.value, str(sid), "not signed", secrets=SECRETS)
    assert not target.exists()
    with pytest.raises(CryptoError, match="not signed"):
        restore(repo, target_dir=target, settings=s)  # the newest, too
    assert not verify_sets(repo, [sid.value], level="quick", settings=s)[0].ok

    # re-signed by a stranger (an attacker who can write the store has a key of their own)
    stranger = keyring(tmp_path, "ring-stranger", gpg_keys.other.secret)
    _gpg(stranger, "--passphrase-fd", "0", "--detach-sign", "--output", str(d / SIG), str(d / SUMS),
         stdin=gpg_keys.other.passphrase + "\n")
    kill_agent(stranger)
    with pytest.raises(CryptoError) as e:
        restore(repo, target_dir=target, backup_id=sid.value, settings=s)
    assert_actionable(e.value, "untrusted key", secrets=SECRETS)
    assert not target.exists()

    # a good signature, but an artifact replaced after signing
    (d / SIG).write_bytes(good_sig)
    art = next(p for p in d.iterdir() if p.name.startswith("db."))
    art.write_bytes(art.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BackupError) as e:
        restore(repo, target_dir=target, backup_id=sid.value, settings=s)
    assert_actionable(e.value, "signed checksums", secrets=SECRETS)
    assert not target.exists()


def download(copy_root: Path, objects: list[tuple[str, bytes]], sid: BackupId) -> Path:
    d = copy_root / sid.value
    d.mkdir(parents=True, mode=0o700)
    for name, data in objects:
        (d / name).write_bytes(data)
    return d


def send(s: Settings, repo: LocalRepository, sid: BackupId) -> list[tuple[str, bytes]]:
    """What the upload does with a SetCopy (into memory here: the sets are small)."""
    objects: list[tuple[str, bytes]] = []
    with remote_copy(s, repo, sid) as copy:
        for name, stream in copy.artifacts():
            chunks = []
            while chunk := stream.read(1 << 16):
                chunks.append(chunk)
            objects.append((name, b"".join(chunks)))
        trailer = copy.trailer()
    assert [n for n, _ in trailer][-1] == MANIFEST
    return objects + trailer


def test_remote_copy_of_a_plaintext_set_is_encrypted_signed_and_restorable(
        host: Host, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    root, db = project_with_marker(tmp_path)
    s = enc_settings(tmp_path, gpg_keys, local=False, root=root, db=db)
    host.backup()
    full = run_backup(s, BackupKind.FULL, now=T0)
    write_file(root / "app/later.txt", f"{MARKER} again\n")
    inc = run_backup(s, BackupKind.INCREMENTAL, now=T0 + timedelta(hours=1))
    state = tree_state(root)
    repo = LocalRepository(s.storage.local_dir)
    assert (full.path / "files.tar.zst").exists() and (full.path / SIG).exists()  # local: plaintext, signed

    remote = tmp_path / "bucket"
    for res in (full, inc):
        objects = send(s, repo, res.manifest.id)
        assert [n for n, _ in objects] == ["files.tar.zst.gpg", DB_GPG, SUMS, SIG, MANIFEST]
        download(remote, objects, res.manifest.id)
    assert_no_marker(remote)
    rm = LocalRepository(remote).read_manifest(inc.manifest.id)
    lm = repo.read_manifest(inc.manifest.id)
    assert rm.id == lm.id and rm.files == lm.files and rm.recipients == (gpg_keys.enc.fingerprint,)
    assert [a.name for a in rm.artifacts] == ["files.tar.zst.gpg", DB_GPG]

    # on a bare machine: the downloaded objects, the config, the private key
    host.restore()
    rs = s.model_copy(update={"storage": s.storage.model_copy(update={"local_dir": remote})})
    rrepo = LocalRepository(remote)
    assert all(r.ok and r.level == "full" for r in verify_sets(rrepo, [inc.manifest.id.value], settings=rs))
    target = tmp_path / "restored"
    from erp_backup.core.dburl import DatabaseUrl

    out_db = tmp_path / "restored.sqlite3"
    restore(rrepo, target_dir=target, at=T0 + timedelta(hours=2), target_db=DatabaseUrl("sqlite", str(out_db)),
            settings=rs)
    assert diff_states(state, tree_state(target)) == []
    assert rows(out_db) == rows(db)

    # the remote copy's signature guards it like a local one
    (remote / inc.manifest.id.value / SIG).unlink()
    with pytest.raises(CryptoError, match="not signed"):
        restore(rrepo, target_dir=tmp_path / "t2", backup_id=inc.manifest.id.value, settings=rs)


def test_remote_copy_of_an_encrypted_set_is_sent_as_it_is(host: Host, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    s, repo, sid = _one_set(host, gpg_keys, tmp_path, local=True)
    d = repo.set_dir(sid)
    objects = send(s, repo, sid)
    assert dict(objects) == {p.name: p.read_bytes() for p in d.iterdir()}


def test_remote_copy_refuses_a_damaged_local_set_and_needs_encryption(host: Host, gpg_keys: GpgTestKeys,
                                                                      tmp_path: Path) -> None:
    s, repo, sid = _one_set(host, gpg_keys, tmp_path, local=False)
    art = repo.set_dir(sid) / "files.tar.zst"
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(BackupError) as e:
        send(s, repo, sid)
    assert_actionable(e.value, "does not match its manifest", secrets=SECRETS)
    plain = s.model_copy(update={"encryption": None})
    with pytest.raises(BackupError, match="must be encrypted"):
        send(plain, repo, sid)


def test_sign_without_a_signing_key_fails_before_commit(host: Host, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    root, db = project_with_marker(tmp_path)
    s = enc_settings(tmp_path, gpg_keys, local=True, root=root, db=db)
    host.restore(ring=host.empty_ring)
    with pytest.raises(CryptoError) as e:
        run_backup(s, BackupKind.FULL, now=T0)
    assert_actionable(e.value, "signing key", secrets=SECRETS)
    assert LocalRepository(s.storage.local_dir).list_ids() == []
    assert not any(p.name.endswith(".partial") for p in s.storage.local_dir.iterdir())
    shutil.rmtree(s.storage.local_dir)
