"""Encrypted and signed sets through the real pipeline, verify, restore and the off-site copy.

Real gpg (keys from ``gpg_keys``), real SQLite/PostgreSQL; the operator's keyrings are real
GNUPGHOME directories: the backup host's holds only the signing key, the restore host's the
decryption key. The agents they start are killed before every "wrong passphrase" check (gpg-agent
caches passphrases).
"""

from __future__ import annotations

import hashlib
import os
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
from tests.integration.test_offsite_crypto import agents_for

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
    kill_agent(home)  # the import started one: the runs must stop the agents *they* start
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

    mine = f"erpb-gpg-{os.getpid()}-"  # this process's homes (other runs on the machine have their own)
    return [n for d in ("/dev/shm", tempfile.gettempdir()) for n in os.listdir(d) if n.startswith(mine)]


def rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, name FROM customers ORDER BY id").fetchall()
    finally:
        conn.close()


def test_encrypted_signed_chain_round_trip(host: Host, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    root, db = project_with_marker(tmp_path)
    s = enc_settings(tmp_path, gpg_keys, local=True, root=root, db=db)
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
    # every run removed its private GNUPGHOME (and so stopped its agent), and stopped the agent it
    # started in the operator's keyring
    assert no_gpg_homes_left() == []
    assert no_agents(host.backup_ring)

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
    assert no_gpg_homes_left() == []
    assert no_agents(host.restore_ring)


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

    # what `verify --remote` checks from the objects' bytes, nothing written
    d = remote / inc.manifest.id.value
    assert encryption.check_remote_signature(s, (d / SUMS).read_bytes(), (d / SIG).read_bytes(),
                                             inc.manifest.id.value) == gpg_keys.sign.fingerprint
    with pytest.raises(CryptoError, match="bad signature"):
        encryption.check_remote_signature(s, (d / SUMS).read_bytes() + b"x", (d / SIG).read_bytes(), "x")
    with pytest.raises(CryptoError, match="not signed"):
        encryption.check_remote_signature(s, (d / SUMS).read_bytes(), None, "x")

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


def test_key_problems_fail_the_backup_before_anything_is_written(host: Host, gpg_keys: GpgTestKeys,
                                                                 tmp_path: Path) -> None:
    root, db = project_with_marker(tmp_path)
    s = enc_settings(tmp_path, gpg_keys, local=True, root=root, db=db)
    e_cfg = s.encryption
    assert e_cfg is not None
    cases: list[tuple[Settings, str | None, str]] = [
        (s, None, "signing key"),  # no signing key anywhere
        (s, "wrong-passphrase", "wrong passphrase"),
        (s.model_copy(update={"encryption": e_cfg.model_copy(update={"recipients": [gpg_keys.other.fingerprint]})}),
         SIGN_PASSPHRASE, "no public key for recipient"),
        (s.model_copy(update={"encryption": e_cfg.model_copy(update={"signers": [gpg_keys.enc.fingerprint]})}),
         SIGN_PASSPHRASE, "do not verify"),
        (s.model_copy(update={"encryption": e_cfg.model_copy(update={"public_keys": tmp_path / "nope.asc"})}),
         SIGN_PASSPHRASE, "does not exist"),
    ]
    for settings, passphrase, expected in cases:
        if passphrase is None:
            host.restore(ring=host.empty_ring)
        else:
            host.backup()
            kill_agent(host.backup_ring)
            host.mp.setenv(encryption.ENV_SIGNING_PASSPHRASE, passphrase)
        with pytest.raises(BackupError) as e:
            run_backup(settings, BackupKind.FULL, now=T0)
        assert_actionable(e.value, expected, secrets=SECRETS)
        assert not s.storage.local_dir.exists(), expected


KILL_SCRIPT = """
import os, sys, time
from erp_backup.adapters import crypto
keys = crypto.KeyMaterial(secret_keys=(sys.stdin.read(),))
with crypto.gpg_home(keys) as home:
    (home.path / "probe").write_text("x")
    home.sign_detached(home.path / "probe", passphrase=os.environ["P"])  # starts its agent
    print(home.path, flush=True)
    time.sleep(600)
"""


def test_a_killed_run_leaves_no_secret_on_disk_and_the_next_run_cleans_up(gpg_keys: GpgTestKeys,
                                                                          tmp_path: Path) -> None:
    import signal
    import sys

    from erp_backup.adapters import crypto
    from tests.conftest import REPO

    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=REPO, env={**os.environ, "P": SIGN_PASSPHRASE})
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(gpg_keys.sign.secret)
    child.stdin.close()
    home = Path(child.stdout.readline().strip())
    try:
        assert home.is_dir() and (home / "private-keys-v1.d").is_dir()
        # the imported secret key lives in memory (tmpfs), never on a disk
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(home)], capture_output=True, text=True, check=True)
        assert fs.stdout.strip() == "tmpfs", fs.stdout
        assert [p for p in (home / "private-keys-v1.d").iterdir()], "no secret key imported: proves nothing"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert home.exists()  # the killed run could not clean up
    with crypto.gpg_home():  # the next run does
        pass
    assert not home.exists()
    assert no_agents(home)


def no_agents(home: Path, wait_s: float = 5.0) -> bool:
    """No gpg-agent of ``home`` is left (an agent told to stop takes a moment to exit)."""
    import time

    deadline = time.monotonic() + wait_s
    while agents_for(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    return agents_for(home) == []


BIG_SCRIPT = """
import sys
from datetime import datetime, UTC
from erp_backup.config import Settings
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
s = Settings.model_validate_json(sys.stdin.read())
run_backup(s, BackupKind.FULL)
"""


def test_kill_during_an_encrypted_backup_leaves_no_plaintext(host: Host, gpg_keys: GpgTestKeys,
                                                             tmp_path: Path) -> None:
    import signal
    import sys
    import time

    from tests.conftest import REPO

    root, db = project_with_marker(tmp_path)
    line = f"{MARKER} ".encode() + os.urandom(32).hex().encode() + b"\n"
    for i in range(4):
        write_file(root / f"big/{i}.log", line * (200_000 + i))
    s = enc_settings(tmp_path, gpg_keys, local=True, root=root, db=db)
    host.backup()
    data = s.model_dump_json()
    data = data.replace('"url":"**********"', f'"url":"sqlite:///{db}"')
    backups = s.storage.local_dir
    caught_writing = 0
    for extra in (0.0, 0.1, 0.3):
        child = subprocess.Popen([sys.executable, "-c", BIG_SCRIPT], stdin=subprocess.PIPE, text=True, cwd=REPO,
                                 env=dict(os.environ))
        assert child.stdin is not None
        child.stdin.write(data)
        child.stdin.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:  # until gpg output reaches an artifact
            if any(p.stat().st_size for p in backups.glob("*.partial/*.gpg")):
                break
            time.sleep(0.02)
        time.sleep(extra)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        for p, content in all_bytes(backups):
            assert MARKER.encode() not in content or p.name == MANIFEST, p
            if p.suffix == ".gpg" and p.parent.name.endswith(".partial") and content:
                caught_writing += 1
    assert caught_writing, "no kill landed while an artifact was written: the test proves nothing"
    assert LocalRepository(backups).list_ids() == [] or all(
        (backups / i.value / SIG).exists() for i in LocalRepository(backups).list_ids())


@pytest.mark.parametrize("engine, local", [("postgresql", True), ("postgresql", False), ("mysql", False)])
def test_database_marker_row_never_leaves_in_clear_and_restores(
        host: Host, gpg_keys: GpgTestKeys, tmp_path: Path, request: pytest.FixtureRequest, engine: str,
        local: bool) -> None:
    from erp_backup.core.dburl import DatabaseUrl

    make_db = request.getfixturevalue("pg_db" if engine == "postgresql" else "my_db")
    sql = request.getfixturevalue("pg_sql" if engine == "postgresql" else "my_sql")
    src = make_db("encsrc")
    assert isinstance(src, DatabaseUrl)
    key = "id serial PRIMARY KEY" if engine == "postgresql" else "id INT AUTO_INCREMENT PRIMARY KEY"
    sql(src, f"CREATE TABLE customer ({key}, note text)")
    for i in range(200):
        sql(src, "INSERT INTO customer(note) VALUES (%s)", (f"row {i}",))
    sql(src, "INSERT INTO customer(note) VALUES (%s)", (MARKER,))
    root = make_small_project(tmp_path / "erp")
    write_file(root / "app/secret.txt", MARKER)
    s = enc_settings(tmp_path, gpg_keys, local=local, root=root, db=src.redacted())
    host.backup()
    res = run_backup(s, BackupKind.FULL, now=T0)
    repo = LocalRepository(s.storage.local_dir)
    remote = tmp_path / "bucket"
    download(remote, send(s, repo, res.manifest.id), res.manifest.id)
    assert_no_marker(remote)
    if local:
        assert_no_marker(s.storage.local_dir)

    host.restore()
    rs = s.model_copy(update={"storage": s.storage.model_copy(update={"local_dir": remote})})
    target = make_db("encdst", create=engine == "mysql")
    assert isinstance(target, DatabaseUrl)
    restore(LocalRepository(remote), target_dir=tmp_path / "restored", backup_id=res.manifest.id.value,
            target_db=target, settings=rs, force=engine == "mysql")
    assert sql(target, "SELECT note FROM customer WHERE note = %s", (MARKER,)) == [(MARKER,)]
    assert sql(target, "SELECT count(*) FROM customer") == [(201,)]
    assert diff_states(tree_state(root), tree_state(tmp_path / "restored")) == []


def test_block_command_checks_every_key_before_saving(gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    """`erp-backup block gpg`'s checks with the real gpg (saving it needs a Prefect server: e2e)."""
    import argparse

    from erp_backup import gpg_block

    k = gpg_keys
    pub = tmp_path / "pub.asc"
    pub.write_text(k.enc.public + k.sign.public)
    (tmp_path / "sign.asc").write_text(k.sign.secret)

    def spec(env: dict[str, str], **kw: object) -> gpg_block.GpgBlockSpec:
        ns = argparse.Namespace(name="b", public_keys=[str(pub)], signing_key_file=None, private_key_file=None,
                                trusted_signer=[], overwrite=False)
        for key, value in kw.items():
            setattr(ns, key, value)
        return gpg_block.spec_from_args(ns, env)

    good = gpg_block.check(spec({gpg_block.ENV_SIGNING_PASSPHRASE: SIGN_PASSPHRASE,
                                 gpg_block.ENV_PRIVATE_KEY: k.enc.secret, gpg_block.ENV_PASSPHRASE: PASSPHRASE},
                                signing_key_file=str(tmp_path / "sign.asc"), trusted_signer=[k.sign.fingerprint]))
    assert good["signing"] == k.sign.fingerprint and good["private"] == k.enc.fingerprint
    cases: list[tuple[gpg_block.GpgBlockSpec | None, dict[str, object], str]] = [
        (None, {"public_keys": []}, "no keys given"),
        (None, {"name": "Bad Name"}, "lowercase letters, digits and dashes"),
        (None, {"signing_key_file": str(tmp_path / "missing.asc")}, "cannot read the signing key file"),
        (spec({gpg_block.ENV_SIGNING_KEY: k.sign.public}), {}, "holds no private key that can sign"),
        (spec({gpg_block.ENV_SIGNING_KEY: k.sign.secret, gpg_block.ENV_SIGNING_PASSPHRASE: "nope"}), {},
         "wrong passphrase"),
        (spec({gpg_block.ENV_PRIVATE_KEY: k.enc.secret, gpg_block.ENV_PASSPHRASE: "nope"}), {}, "wrong passphrase"),
        (spec({gpg_block.ENV_PRIVATE_KEY: k.sign.secret, gpg_block.ENV_PASSPHRASE: SIGN_PASSPHRASE}), {},
         "no private key that can decrypt"),
        (spec({}, trusted_signer=[k.other.fingerprint]), {}, "is not among the keys given"),
    ]
    for prepared, kw, expected in cases:
        with pytest.raises(BackupError) as e:
            gpg_block.check(prepared if prepared is not None else spec({}, **kw))
        assert_actionable(e.value, expected, secrets=SECRETS + ("nope",))


def test_cli_refuses_before_prefect_starts(host: Host, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    """The restore's key checks run in the CLI's preflight: a wrong passphrase or a missing signature
    is one line within seconds (no Prefect start-up) and nothing is written; `[remote]` without
    `[encryption]` is refused by every command."""
    import time

    from tests.conftest import cli_env, run_cli, write_config

    s, repo, sid = _one_set(host, gpg_keys, tmp_path, local=True)
    e = s.encryption
    assert e is not None
    cfg = write_config(tmp_path / "c.toml", s)
    with open(cfg, "a") as f:
        f.write(f'[encryption]\nrecipients = ["{gpg_keys.enc.fingerprint}"]\npublic_keys = "{e.public_keys}"\n'
                f'local = true\nsign = true\nsigners = ["{gpg_keys.sign.fingerprint}"]\n')
    target = tmp_path / "target"
    kill_agent(host.restore_ring)
    for env, expected in (({"ERP_BACKUP_GPG_PASSPHRASE": "wrong-passphrase"}, "wrong passphrase"),
                          ({}, "needs a passphrase")):
        t0 = time.monotonic()
        r = run_cli("--config", str(cfg), "restore", "--backup", sid.value, "--target-dir", str(target),
                    env=cli_env(GNUPGHOME=str(host.restore_ring), **env))
        assert r.returncode != 0 and time.monotonic() - t0 < 10, r.stderr[-2000:]
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("erp-backup: error: ") and expected in last, last
        assert "wrong-passphrase" not in r.stderr and not target.exists()
    (repo.set_dir(sid) / SIG).unlink()
    r = run_cli("--config", str(cfg), "restore", "--backup", sid.value, "--target-dir", str(target),
                env=cli_env(GNUPGHOME=str(host.restore_ring), ERP_BACKUP_GPG_PASSPHRASE=PASSPHRASE))
    assert r.returncode != 0 and "not signed" in r.stderr.strip().splitlines()[-1] and not target.exists()

    with open(cfg, "a") as f:
        f.write('[remote]\nblock = "erp-offsite"\n')
    text = cfg.read_text()
    cfg.write_text(text[:text.index("[encryption]")] + text[text.index("[remote]"):])
    for args in (("list",), ("backup", "full"), ("verify", "--quick")):
        r = run_cli("--config", str(cfg), *args)
        assert r.returncode == 2 and "[remote] without [encryption]" in r.stderr.strip().splitlines()[-1], args


def test_block_with_the_prefect_api_down_is_one_line(tmp_path: Path) -> None:
    from tests.conftest import cli_env, make_settings, run_cli, write_config

    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    cfg = write_config(tmp_path / "c.toml", s)
    with open(cfg, "a") as f:
        f.write(f'[encryption]\nrecipients = ["{"A" * 40}"]\nblock = "erp-gpg"\n')
    from tests.integration.offsite_fixtures import free_port

    r = run_cli("--config", str(cfg), "backup", "full",
                env=cli_env(PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api"))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "cannot load the GPG keys block 'erp-gpg'" in last and "Prefect server" in last
    assert not s.storage.local_dir.exists()


def test_a_manifest_swapped_after_the_preflight_is_refused_not_restored(host: Host, gpg_keys: GpgTestKeys,
                                                                          tmp_path: Path) -> None:
    """The CLI checks a restore (signatures, checksums) before Prefect starts; the flow run restores
    seconds later. A review swapped manifest.json in between (SHA256SUMS and its good signature left
    alone): the restore took the swapped manifest on trust and wrote a planted archive's manage.py."""
    import dataclasses
    import io
    import tarfile

    import zstandard

    from erp_backup import restore as restorer

    s, repo, sid = _one_set(host, gpg_keys, tmp_path, local=False)
    d = repo.set_dir(sid)
    target = tmp_path / "target"
    plan = restorer.preflight(repo, restorer.RestoreRequest(target_dir=str(target), backup_id=sid.value),
                              live=None, settings=s)

    m = repo.read_manifest(sid)
    trojan = b"import os; os.system('touch /tmp/pwned')\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in m.files:
            if e.type.value != "file":
                continue
            data = trojan if e.path == "manage.py" else (s.project.root / e.path).read_bytes()
            info = tarfile.TarInfo(e.path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    planted = zstandard.ZstdCompressor().compress(buf.getvalue())
    (d / "planted.tar.zst").write_bytes(planted)
    files = tuple(dataclasses.replace(e, size=len(trojan), sha256=hashlib.sha256(trojan).hexdigest())
                  if e.path == "manage.py" else e for e in m.files)
    artifacts = tuple(dataclasses.replace(a, name="planted.tar.zst", size=len(planted),
                                          sha256=hashlib.sha256(planted).hexdigest())
                      if a.role == "files" else a for a in m.artifacts)
    (d / MANIFEST).write_text(mf.dumps(dataclasses.replace(m, files=files, artifacts=artifacts)))

    with pytest.raises(BackupError) as e:
        restorer.execute(repo, plan, None, settings=s)
    assert_actionable(e.value, str(sid), "does not match its signed SHA256SUMS", secrets=SECRETS)
    assert not (target / "manage.py").exists()
