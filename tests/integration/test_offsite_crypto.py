"""GPG adapter against the real gpg binary: keys from ``gpg_keys`` (each test's own GNUPGHOME)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO, cast

import pytest
import zstandard

from erp_backup.adapters import crypto, proc
from erp_backup.adapters.archive import ArtifactWriter, open_decompressed
from erp_backup.adapters.archive.artifact import HashingFile
from erp_backup.core.errors import CryptoError, IntegrityError, StorageError
from tests.conftest import flip_byte
from tests.integration.conftest import assert_actionable
from tests.integration.offsite_fixtures import PASSPHRASE, SIGN_PASSPHRASE, GpgTestKeys, kill_agent

pytestmark = pytest.mark.integration
SECRETS = (PASSPHRASE, SIGN_PASSPHRASE)


def material(keys: GpgTestKeys, *, public: bool = True, restore: bool = False, signing: bool = False,
             other_public: bool = False) -> crypto.KeyMaterial:
    pubs = (keys.enc.public, keys.sign.public) if public else ()
    if other_public:
        pubs += (keys.other.public,)
    secrets = ((keys.enc.secret,) if restore else ()) + ((keys.sign.secret,) if signing else ())
    return crypto.KeyMaterial(public_keys=pubs, secret_keys=secrets)


def payload(n: int = 3_000_000) -> bytes:
    block = os.urandom(64 * 1024)
    text = b"".join(b"row %d customer=ACME invoice=%d\n" % (i, i * 7) for i in range(n // 64))
    return (block * 4 + text)[:n] * 2


def write_artifact(path: Path, data: bytes, encryptor: crypto.GpgEncryptor) -> tuple[int, str]:
    w = ArtifactWriter(path, encryptor=encryptor)
    for i in range(0, len(data), 256 * 1024):
        w.write(data[i:i + 256 * 1024])
    res = w.close()
    return res.size, res.sha256


def read_artifact(path: Path, home: crypto.GpgHome, passphrase: str | None) -> tuple[bytes, str, int]:
    with open_decompressed(path, decryptor=home.decryptor(passphrase)) as r:
        out = r.read()
        return out, r.hexdigest(), r.compressed_size


def agents_for(home: Path) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gpg-agent" in cmd and str(home).encode() in cmd:
            pids.append(int(pid))
    return pids


# ---- encryption / decryption ---------------------------------------------------------------------


def test_roundtrip_two_recipients_streamed_and_readable_by_hand(gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    data = payload()
    art = tmp_path / "files.tar.zst.gpg"
    with crypto.gpg_home(material(gpg_keys, other_public=True)) as home:
        enc = home.encryptor([gpg_keys.enc.fingerprint, gpg_keys.other.fingerprint.lower()])
        assert enc.recipients == (gpg_keys.enc.fingerprint, gpg_keys.other.fingerprint)
        size, sha = write_artifact(art, data, enc)
    assert size == art.stat().st_size and sha == hashlib.sha256(art.read_bytes()).hexdigest()
    assert oct(art.stat().st_mode & 0o777) == "0o600"
    assert b"customer=ACME" not in art.read_bytes()

    # the restore key decrypts; the reader hashes the *encrypted* bytes (SHA256SUMS covers them)
    with crypto.gpg_home(material(gpg_keys, public=False, restore=True)) as home:
        out, digest, nbytes = read_artifact(art, home, PASSPHRASE)
    assert out == data and digest == sha and nbytes == size
    # so does the second recipient's key
    with crypto.gpg_home(crypto.KeyMaterial(secret_keys=(gpg_keys.other.secret,))) as home:
        out, _, _ = read_artifact(art, home, gpg_keys.other.passphrase)
    assert out == data

    # by hand, as the README says: gpg -d | zstd -d; and gpg did not compress (no compressed packet)
    gh = gpg_keys.home
    gpg = subprocess.Popen(["gpg", "--homedir", str(gh), "--batch", "--pinentry-mode", "loopback",
                            "--passphrase-fd", "0", "-d", str(art)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    assert gpg.stdin is not None
    gpg.stdin.write(PASSPHRASE.encode() + b"\n")
    gpg.stdin.close()
    dec = subprocess.run(["zstd", "-dc"], stdin=gpg.stdout, capture_output=True, check=True)
    assert gpg.wait() == 0
    assert hashlib.sha256(dec.stdout).digest() == hashlib.sha256(data).digest()
    packets = subprocess.run(["gpg", "--homedir", str(gh), "--batch", "--pinentry-mode", "loopback",
                              "--passphrase-fd", "0", "--list-packets", str(art)],
                             input=PASSPHRASE + "\n", capture_output=True, text=True, check=True).stdout
    assert ":literal data packet:" in packets and ":compressed packet:" not in packets


def test_home_is_private_removed_and_its_agent_stopped_even_on_error(gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    (tmp_path / "SUMS").write_text("x\n")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="boom"):
        with crypto.gpg_home(material(gpg_keys, signing=True)) as home:
            seen.append(home.path)
            assert oct(home.path.stat().st_mode & 0o777) == "0o700"
            home.sign_detached(tmp_path / "SUMS", passphrase=SIGN_PASSPHRASE)  # starts the agent
            assert agents_for(home.path), "no agent was started: the test proves nothing"
            raise RuntimeError("boom")
    assert not seen[0].exists()
    deadline = time.monotonic() + 5
    while agents_for(seen[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agents_for(seen[0]) == []


def test_unknown_recipient_and_short_key_id_are_refused(gpg_keys: GpgTestKeys) -> None:
    with crypto.gpg_home(material(gpg_keys)) as home:
        with pytest.raises(CryptoError) as e:
            home.encryptor([gpg_keys.other.fingerprint])
        assert_actionable(e.value, "no public key for recipient", gpg_keys.other.fingerprint, secrets=SECRETS)
        with pytest.raises(CryptoError) as e:
            home.encryptor([gpg_keys.enc.fingerprint[-16:]])
        assert_actionable(e.value, "not a full GPG key fingerprint", secrets=SECRETS)
        with pytest.raises(CryptoError) as e:  # a sign-only key cannot be a recipient
            home.encryptor([gpg_keys.sign.fingerprint])
        assert_actionable(e.value, "cannot encrypt", secrets=SECRETS)


@pytest.fixture
def encrypted(gpg_keys: GpgTestKeys, tmp_path: Path) -> tuple[Path, bytes]:
    data = payload(1_000_000)
    art = tmp_path / "db.sqlite3.zst.gpg"
    with crypto.gpg_home(material(gpg_keys)) as home:
        write_artifact(art, data, home.encryptor([gpg_keys.enc.fingerprint]))
    return art, data


def test_missing_private_key(gpg_keys: GpgTestKeys, encrypted: tuple[Path, bytes]) -> None:
    with crypto.gpg_home(material(gpg_keys)) as home, pytest.raises(CryptoError) as e:
        read_artifact(encrypted[0], home, PASSPHRASE)
    assert_actionable(e.value, "no private key", "db.sqlite3.zst.gpg", secrets=SECRETS)


def test_wrong_and_missing_passphrase_even_right_after_a_good_one(gpg_keys: GpgTestKeys,
                                                                  encrypted: tuple[Path, bytes]) -> None:
    kill_agent(gpg_keys.home)
    with crypto.gpg_home(material(gpg_keys, public=False, restore=True)) as home:
        assert read_artifact(encrypted[0], home, PASSPHRASE)[0] == encrypted[1]
        # same home, same agent: it caches nothing, so a wrong passphrase still fails
        with pytest.raises(CryptoError) as e:
            read_artifact(encrypted[0], home, "not-the-" + PASSPHRASE)
        assert_actionable(e.value, "wrong passphrase", secrets=(*SECRETS, "not-the-"))
        with pytest.raises(CryptoError) as e:
            read_artifact(encrypted[0], home, None)
        assert_actionable(e.value, "needs a passphrase", secrets=SECRETS)


def test_tampered_or_truncated_ciphertext_fails(gpg_keys: GpgTestKeys, encrypted: tuple[Path, bytes],
                                                tmp_path: Path) -> None:
    art, _ = encrypted
    flipped = tmp_path / "flipped.gpg"
    flipped.write_bytes(art.read_bytes())
    flip_byte(flipped, art.stat().st_size // 2)
    truncated = tmp_path / "truncated.gpg"
    truncated.write_bytes(art.read_bytes()[: art.stat().st_size // 2])
    plain = tmp_path / "plain.zst"
    plain.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(1000))
    with crypto.gpg_home(material(gpg_keys, public=False, restore=True)) as home:
        for bad in (flipped, truncated, plain):
            with pytest.raises((CryptoError, IntegrityError)) as e:
                read_artifact(bad, home, PASSPHRASE)
            assert_actionable(e.value, bad.name, secrets=SECRETS)
            # the decryptor alone, read whole in one call: gpg's verdict still comes with the data
            with open(bad, "rb") as f, pytest.raises(CryptoError) as e:
                home.decryptor(PASSPHRASE)(f).read()
            assert_actionable(e.value, bad.name, secrets=SECRETS)


def test_sink_failure_surfaces_as_itself_and_abort_kills_gpg(gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    class FullDisk(HashingFile):
        def write(self, data: bytes | bytearray | memoryview) -> int:
            if self.size > 200_000:
                raise StorageError("writing x failed: No space left on device", hint="free space")
            return super().write(data)

    with crypto.gpg_home(material(gpg_keys)) as home:
        enc = home.encryptor([gpg_keys.enc.fingerprint])
        stream = cast(crypto.EncryptingWriter, enc.wrap(cast(IO[bytes], FullDisk(tmp_path / "full.gpg"))))
        chunk = os.urandom(1 << 20)
        with pytest.raises(StorageError, match="No space left"):
            for _ in range(50):
                stream.write(chunk)
            stream.close()
        # abandoning an artifact half way kills its gpg
        w = ArtifactWriter(tmp_path / "abandoned.gpg", encryptor=enc)
        w.write(os.urandom(3 << 20))
        pid = cast(crypto.EncryptingWriter, w._enc_stream).pid
        w.abort()
        assert not Path(f"/proc/{pid}").exists()


# ---- signatures ----------------------------------------------------------------------------------


def test_sign_and_verify_detached(gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("0" * 64 + "  files.tar.zst.gpg\n")
    with crypto.gpg_home(material(gpg_keys, signing=True)) as home:
        sig = home.sign_detached(sums, passphrase=SIGN_PASSPHRASE)
    assert sig == tmp_path / "SHA256SUMS.sig" and oct(sig.stat().st_mode & 0o777) == "0o600"
    # gpg --verify by hand works
    subprocess.run(["gpg", "--homedir", str(gpg_keys.home), "--batch", "--verify", str(sig), str(sums)],
                   check=True, capture_output=True)
    with crypto.gpg_home(crypto.KeyMaterial(public_keys=(gpg_keys.sign.public,))) as home:
        assert home.verify_detached(sums, sig, [gpg_keys.sign.fingerprint]) == gpg_keys.sign.fingerprint
        assert home.verify_detached_bytes(sums.read_bytes(), sig.read_bytes(),
                                          [gpg_keys.sign.fingerprint]) == gpg_keys.sign.fingerprint


def test_verify_refuses_unsigned_tampered_untrusted_and_inline(gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("0" * 64 + "  files.tar.zst.gpg\n")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_sums = other_dir / "SHA256SUMS"
    other_sums.write_bytes(sums.read_bytes())
    with crypto.gpg_home(crypto.KeyMaterial(secret_keys=(gpg_keys.sign.secret, gpg_keys.other.secret))) as home:
        sig = home.sign_detached(sums, signer=gpg_keys.sign.fingerprint, passphrase=SIGN_PASSPHRASE)
        other_sig = home.sign_detached(other_sums, signer=gpg_keys.other.fingerprint,
                                       passphrase=gpg_keys.other.passphrase)
        inline = tmp_path / "inline.sig"
        res = subprocess.run(["gpg", "--homedir", str(home.path), "--batch", "--pinentry-mode", "loopback",
                              "--passphrase-fd", "0", "-u", gpg_keys.sign.fingerprint, "--sign", "-o", str(inline),
                              str(sums)], input=SIGN_PASSPHRASE + "\n", text=True, capture_output=True)
        assert res.returncode == 0, res.stderr
    trusted = [gpg_keys.sign.fingerprint]
    garbage = tmp_path / "garbage.sig"
    garbage.write_bytes(b"hello\n")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "SHA256SUMS").write_text(sums.read_text() + "1" * 64 + "  evil\n")
    link = tmp_path / "link.sig"
    link.symlink_to(sig)

    for keys, data, signature, fragment in [
        (material(gpg_keys), sums, None, "is not signed"),
        (material(gpg_keys), sums, tmp_path / "missing.sig", "is not signed"),
        (material(gpg_keys), sums, garbage, "is not signed"),
        (material(gpg_keys), tampered / "SHA256SUMS", sig, "bad signature"),
        (material(gpg_keys, other_public=True), other_sums, other_sig, "untrusted key"),  # key known, not trusted
        (material(gpg_keys), other_sums, other_sig, "untrusted key"),  # key unknown here
        (material(gpg_keys), sums, inline, "not a detached signature"),
        (material(gpg_keys), sums, link, "symbolic link"),
    ]:
        with crypto.gpg_home(keys) as home, pytest.raises(CryptoError) as e:
            home.verify_detached(data, signature, trusted)
        text = assert_actionable(e.value, fragment, secrets=SECRETS)
        if fragment == "untrusted key":
            assert gpg_keys.other.fingerprint in text


def test_signing_errors(gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("x\n")
    with crypto.gpg_home(material(gpg_keys)) as home:
        with pytest.raises(CryptoError) as e:
            home.sign_detached(sums, signer=gpg_keys.sign.fingerprint, passphrase=SIGN_PASSPHRASE)
        assert_actionable(e.value, "no private signing key", secrets=SECRETS)
        with pytest.raises(CryptoError) as e:
            home.sign_detached(sums, passphrase=SIGN_PASSPHRASE)
        assert_actionable(e.value, "no signing key", secrets=SECRETS)
    with crypto.gpg_home(material(gpg_keys, signing=True)) as home:
        with pytest.raises(CryptoError) as e:
            home.sign_detached(sums, passphrase="wrong-" + SIGN_PASSPHRASE)
        assert_actionable(e.value, "wrong passphrase", secrets=(*SECRETS, "wrong-"))
    assert not (tmp_path / "SHA256SUMS.sig").exists()


def test_bad_key_material(gpg_keys: GpgTestKeys) -> None:
    with pytest.raises(CryptoError) as e:
        with crypto.gpg_home(crypto.KeyMaterial(public_keys=("not a key",))):
            pass
    assert_actionable(e.value, "public key block #1")
    with pytest.raises(CryptoError) as e:
        with crypto.gpg_home(crypto.KeyMaterial(secret_keys=(gpg_keys.enc.public,))):
            pass
    assert_actionable(e.value, "holds only public keys")
    assert "secret_keys" not in repr(crypto.KeyMaterial(secret_keys=(gpg_keys.enc.secret,)))


def test_gpg_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CryptoError) as e:
        with crypto.gpg_home():
            pass
    assert_actionable(e.value, "gpg is not installed")


# ---- secrets never leave through argv, environment or logs ----------------------------------------


def test_passphrases_never_in_argv_environment_or_logs(gpg_keys: GpgTestKeys, encrypted: tuple[Path, bytes],
                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    argvs: list[list[str]] = []
    real_spawn = proc.spawn

    def spy(argv: list[str], **kw: object) -> proc.Child:
        argvs.append(list(argv))
        return real_spawn(argv, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(proc, "spawn", spy)
    art, data = encrypted
    seen: dict[str, bytes] = {}

    class Slow:
        """Source that pauses half way, so the live gpg and agent can be inspected."""

        def __init__(self) -> None:
            self.f = open(art, "rb")
            self.paused = threading.Event()
            self.resume = threading.Event()
            self.name = art.name

        def read(self, n: int = -1) -> bytes:
            if self.f.tell() > art.stat().st_size // 2 and not self.paused.is_set():
                self.paused.set()
                self.resume.wait(30)
            return self.f.read(min(n, 4096))

    with crypto.gpg_home(material(gpg_keys, public=False, restore=True, signing=True)) as home:
        src = Slow()
        reader = home.decryptor(PASSPHRASE)(cast(IO[bytes], src))
        out: list[bytes] = []
        t = threading.Thread(target=lambda: out.append(reader.read()))
        t.start()
        assert src.paused.wait(30)
        agents = agents_for(home.path)
        pids = [cast(crypto.DecryptingReader, reader).pid, *agents]
        assert agents, f"no gpg-agent found for {home.path}"
        for pid in pids:
            # the source pauses before gpg may have finished its exec (its cmdline reads empty then)
            deadline = time.monotonic() + 10
            while not Path(f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline:
                time.sleep(0.05)
            seen[f"{pid} cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()
            seen[f"{pid} environ"] = Path(f"/proc/{pid}/environ").read_bytes()
        src.resume.set()
        t.join(30)
        reader.close()
        src.f.close()
        (tmp_path / "SUMS").write_text("x\n")
        home.sign_detached(tmp_path / "SUMS", signer=gpg_keys.sign.fingerprint, passphrase=SIGN_PASSPHRASE)
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out[0]), read_across_frames=True).read()
    assert plain == data
    assert any(b"--passphrase-fd" in v for v in seen.values())
    for what, value in seen.items():
        for s in SECRETS:
            assert s.encode() not in value, what
    assert any("--detach-sign" in a for a in argvs) and any("--decrypt" in a for a in argvs)
    for argv in argvs:
        for s in SECRETS:
            assert all(s not in a for a in argv), argv
    for s in SECRETS:
        assert s not in caplog.text


# ---- memory stays flat --------------------------------------------------------------------------

_RSS_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from erp_backup.adapters import crypto
    from erp_backup.adapters.archive import ArtifactWriter, open_decompressed
    mb, pub, sec, pw, fpr, out = int(sys.argv[1]), *sys.argv[2:7]
    block = os.urandom(1 << 20)
    with crypto.gpg_home(crypto.KeyMaterial(public_keys=(Path(pub).read_text(),),
                                            secret_keys=(Path(sec).read_text(),))) as home:
        w = ArtifactWriter(Path(out), level=1, threads=0, encryptor=home.encryptor([fpr]))
        for _ in range(mb):
            w.write(block)
        w.close()
        n = 0
        with open_decompressed(Path(out), decryptor=home.decryptor(Path(pw).read_text())) as r:
            while chunk := r.read(1 << 20):
                n += len(chunk)
        assert n == mb << 20, n
    # VmHWM: peak RSS since exec (ru_maxrss would include what the forking pytest process had)
    print(next(int(ln.split()[1]) // 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
""")


def test_peak_rss_flat_as_data_grows(gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    files = {}
    for name, text in (("pub", gpg_keys.enc.public), ("sec", gpg_keys.enc.secret), ("pw", PASSPHRASE)):
        files[name] = tmp_path / name
        files[name].write_text(text)
    rss = {}
    for mb in (16, 256):
        res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(mb), str(files["pub"]), str(files["sec"]),
                              str(files["pw"]), gpg_keys.enc.fingerprint, str(tmp_path / f"{mb}.gpg")],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        rss[mb] = int(res.stdout.split()[-1])
        (tmp_path / f"{mb}.gpg").unlink()
    assert rss[256] - rss[16] < 24, rss  # MiB: 16x the data, (almost) no more memory

