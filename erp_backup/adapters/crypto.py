"""GPG for off-site copies: streamed public-key encryption, streamed decryption, detached signatures.

Everything runs the ``gpg`` binary through :mod:`erp_backup.adapters.proc` (argv lists, allow-listed
environment), not python-gnupg: python-gnupg collects a result in memory unless it writes to a path
and pulls its input from a file object, while the archive writer *pushes* compressed chunks through
``Encryptor.wrap(sink)``. Here gpg is a filter between two pipes, with two threads per stream:

    writer:  zstd ──write()──> gpg stdin │ gpg stdout ──pump thread──> sink (the hashing file)
    reader:  source ──feeder thread──> gpg stdin │ gpg stdout ──read()──> zstd -d

so memory stays flat (pipe buffers and one chunk per thread) whatever the artifact's size.

* ``gpg_home(keys)``: a private temporary GNUPGHOME (0700) per run with the configured keys
  imported. Its gpg-agent caches nothing (``default-cache-ttl 0``), is stopped with
  ``gpgconf --homedir H --kill gpg-agent`` and the home removed, even on error.
* Encryption: to one or more recipients by full fingerprint, ``--compress-algo none`` (the data
  is zstd already), ``--trust-model always`` (the keys are the configured ones, not a web of trust).
* Passphrases reach gpg through a pipe (``--pinentry-mode loopback --passphrase-fd N``): never
  argv, environment, a file or a message. gpg's own status lines (``--status-fd``, another pipe)
  decide the operator's one-line error, not its localised stderr.
* Signatures: ``SHA256SUMS`` -> ``SHA256SUMS.sig`` (binary, detached; ``gpg --verify`` checks it
  by hand). Verification accepts only a good signature whose key (primary or signing subkey
  fingerprint) is in the caller's trusted set; gpg's trust database plays no part.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self, cast

from erp_backup.adapters import proc
from erp_backup.core.errors import BackupError, CryptoError, ToolMissingError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_PIPE_SIZE = 1 << 20
SIG_SUFFIX = ".sig"
_FPR = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")
_AGENT_CONF = "default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\n"
# gpg-error codes (low 16 bits of ERROR/FAILURE status codes)
_E_BAD_PASSPHRASE = 11
_E_NO_SECKEY = 17
_E_NO_PASSPHRASE = 177
_KEY_HINT = "import the restore private key (GPG keys block private_key, or gpg's GNUPGHOME)"
_PASS_HINT = "check the GPG keys block's passphrase or ERP_BACKUP_GPG_PASSPHRASE"


def normalize_fingerprint(value: str) -> str:
    """``'AB12 CD34 …'`` / ``0xab12…`` -> ``'AB12CD34…'``; only full fingerprints (short key IDs collide)."""
    fpr = value.replace(" ", "").upper()
    if fpr.startswith("0X"):
        fpr = fpr[2:]
    if not _FPR.match(fpr):
        raise CryptoError(f"'{value}' is not a full GPG key fingerprint",
                          hint="give the 40 hex digits `gpg --list-keys --with-colons` shows on its fpr line "
                               "(short key IDs can be forged)")
    return fpr


@dataclass(frozen=True)
class KeyMaterial:
    """Armored keys to import into a run's GNUPGHOME. ``secret_keys`` (the signing key, the restore
    key) never show in a repr; their passphrases are not part of it (they go to each operation)."""

    public_keys: tuple[str, ...] = ()
    secret_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str  # primary key
    subkeys: tuple[str, ...]
    capabilities: str  # gpg's field 12, e.g. "scESC": upper case = usable by the whole key
    validity: str  # gpg's field 2: e expired, r revoked, i invalid, d disabled
    uids: tuple[str, ...]

    def usable_for(self, cap: str) -> bool:
        return cap.upper() in self.capabilities and self.validity not in ("e", "r", "i", "d")

    def matches(self, fpr: str) -> bool:
        return fpr == self.fingerprint or fpr in self.subkeys


# ----------------------------------------------------------------------------- running gpg


class _Status:
    """Collects gpg's ``[GNUPG:]`` status lines from a pipe in a thread (bounded)."""

    def __init__(self, fd: int) -> None:
        self.lines: list[str] = []
        self._file = os.fdopen(fd, "rb")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._file as f:
            for raw in f:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if not line.startswith("[GNUPG:] "):
                    continue
                kw = line[9:]
                if kw.startswith("KEY_CONSIDERED") or len(self.lines) >= 500:
                    continue
                self.lines.append(kw)

    def done(self) -> list[str]:
        self._thread.join(timeout=10)
        return self.lines


def _has(lines: Sequence[str], keyword: str) -> list[list[str]]:
    return [ln.split(" ")[1:] for ln in lines if ln.split(" ", 1)[0] == keyword]


def _error_codes(lines: Sequence[str]) -> set[int]:
    codes: set[int] = set()
    for ln in lines:
        parts = ln.split(" ")
        if parts[0] in ("ERROR", "FAILURE") and len(parts) >= 3 and parts[2].isdigit():
            codes.add(int(parts[2]) & 0xFFFF)
    return codes


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@dataclass
class _Outcome:
    returncode: int
    status: list[str]
    stdout: bytes
    stderr: str


class _Launch:
    """gpg started with a status pipe and, optionally, a passphrase pipe."""

    def __init__(self, gpg: str, home: Path, args: Sequence[str], *, passphrase: str | None, stdin: bool,
                 stdout: bool, what: str) -> None:
        status_r, status_w = os.pipe()
        fds = [status_w]
        argv = [gpg, "--homedir", str(home), "--batch", "--no-tty", "--status-fd", str(status_w),
                "--pinentry-mode", "loopback"]
        pass_r = None
        secrets: tuple[str, ...] = ()
        if passphrase is not None:
            data = passphrase.encode("utf-8")
            if b"\n" in data or len(data) > 16384:
                os.close(status_r)
                os.close(status_w)
                raise CryptoError("the GPG passphrase contains a line break or is too long", hint=_PASS_HINT)
            pass_r, pass_w = os.pipe()
            os.write(pass_w, data + b"\n")  # fits the pipe buffer: the write never blocks
            os.close(pass_w)
            fds.append(pass_r)
            argv += ["--passphrase-fd", str(pass_r)]
            secrets = (passphrase,)
        argv += list(args)
        log.debug("gpg %s", " ".join(args))  # args never hold a secret
        try:
            self.child = proc.spawn(argv, stdin=stdin, stdout=stdout, pass_fds=fds, secrets=secrets, what="gpg")
        except BaseException as e:
            os.close(status_r)
            if isinstance(e, ToolMissingError):
                raise _gpg_missing() from e
            raise
        finally:
            os.close(status_w)
            if pass_r is not None:
                os.close(pass_r)
        self.status = _Status(status_r)
        self.what = what

    def finish(self) -> tuple[int, list[str], str]:
        try:
            err = self.child.wait()
            rc = 0
        except proc.ProcError as e:
            rc, err = e.returncode if e.returncode is not None else -1, e.stderr_tail
        return rc, self.status.done(), err


def _grow_pipes(*files: IO[bytes]) -> None:
    """1 MiB pipe buffers instead of 64 KiB: fewer wake-ups and larger chunks per system call
    between Python and gpg (best effort; Linux only)."""
    for f in files:
        try:
            fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except (OSError, AttributeError, ValueError):
            pass


def _gpg_missing() -> CryptoError:
    return CryptoError("gpg is not installed or not on PATH", hint="install it (Debian: apt-get install gnupg)")


def _find_gpg() -> str:
    try:
        return proc.which("gpg")
    except ToolMissingError as e:
        raise _gpg_missing() from e


# ----------------------------------------------------------------------------- the home


class GpgHome:
    """A GNUPGHOME to run gpg in. ``gpg_home()`` makes a private temporary one; ``GpgHome(path)``
    wraps an existing one (the operator's ``GNUPGHOME`` on a restore host), which is never removed
    and whose agent is left alone."""

    def __init__(self, path: Path, *, owned: bool = False) -> None:
        self.path = path
        self.owned = owned
        self.gpg = _find_gpg()

    def __repr__(self) -> str:
        return f"GpgHome({str(self.path)!r}, owned={self.owned})"

    # -- plumbing

    def _run(self, args: Sequence[str], *, input_bytes: bytes | None = None, passphrase: str | None = None,
             what: str = "gpg") -> _Outcome:
        launch = _Launch(self.gpg, self.path, args, passphrase=passphrase, stdin=input_bytes is not None,
                         stdout=True, what=what)
        child = launch.child
        feeder = None
        if input_bytes is not None:
            data = input_bytes

            def feed() -> None:
                try:
                    child.stdin.write(data)
                except BrokenPipeError:
                    pass
                finally:
                    try:
                        child.stdin.close()
                    except BrokenPipeError:
                        pass

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
        try:
            out = child.stdout.read()
            if feeder:
                feeder.join()
        except BaseException:
            child.kill()
            raise
        rc, status, err = launch.finish()
        return _Outcome(rc, status, out, err)

    # -- keys

    def import_keys(self, armored: str, *, what: str = "key") -> tuple[str, ...]:
        """Import armored key(s); the fingerprints gpg reports. Nothing importable: CryptoError."""
        res = self._run(["--import"], input_bytes=armored.encode("utf-8"), what=f"import {what}")
        fprs = tuple(dict.fromkeys(f[1] for f in _has(res.status, "IMPORT_OK") if len(f) >= 2))
        if not fprs:
            raise CryptoError(f"no {what} could be imported: the text holds no OpenPGP key "
                              f"({_last_line(res.stderr) or 'gpg found nothing'})",
                              hint="paste the whole armored block, from -----BEGIN PGP … KEY BLOCK----- to -----END…")
        return fprs

    def keys(self, *, secret: bool = False) -> list[KeyInfo]:
        res = self._run(["--with-colons", "--fixed-list-mode", "--list-secret-keys" if secret else "--list-keys"],
                        what="list keys")
        out: list[KeyInfo] = []
        cur: dict[str, object] | None = None
        for line in res.stdout.decode("utf-8", "replace").splitlines():
            f = line.split(":")
            kind = f[0]
            if kind in ("pub", "sec"):
                if cur:
                    out.append(_key_info(cur))
                cur = {"validity": f[1], "caps": f[11] if len(f) > 11 else "", "fpr": None, "subs": [], "uids": [],
                       "in_sub": False}
            elif cur is None:
                continue
            elif kind in ("sub", "ssb"):
                cur["in_sub"] = True
            elif kind == "fpr" and len(f) > 9:
                if cur["in_sub"]:
                    cast(list[str], cur["subs"]).append(f[9])
                elif cur["fpr"] is None:
                    cur["fpr"] = f[9]
            elif kind == "uid" and len(f) > 9:
                cast(list[str], cur["uids"]).append(f[9])
        if cur:
            out.append(_key_info(cur))
        return out

    def require_recipients(self, recipients: Iterable[str]) -> tuple[str, ...]:
        """Normalised fingerprints, each with a usable encryption key here; else CryptoError."""
        fprs = tuple(dict.fromkeys(normalize_fingerprint(r) for r in recipients))
        if not fprs:
            raise CryptoError("no encryption recipients configured",
                              hint="list the fingerprints of the keys to encrypt to in [encryption] recipients")
        keys = self.keys()
        for fpr in fprs:
            match = [k for k in keys if k.matches(fpr)]
            if not match:
                raise CryptoError(f"no public key for recipient {fpr}",
                                  hint="add its armored public key to [encryption] public_keys or the GPG keys block")
            if not any(k.usable_for("e") for k in match):
                raise CryptoError(f"the key of recipient {fpr} cannot encrypt (expired, revoked or sign-only)",
                                  hint="give the recipient's current encryption key")
        return fprs

    # -- streams

    def encryptor(self, recipients: Iterable[str]) -> GpgEncryptor:
        """An ``Encryptor`` for the archive writer; checks the recipients now, once."""
        return GpgEncryptor(self, self.require_recipients(recipients))

    def decryptor(self, passphrase: str | None = None) -> GpgDecryptor:
        """A ``Callable[[IO[bytes]], IO[bytes]]`` for the archive reader."""
        return GpgDecryptor(self, passphrase)

    # -- signatures

    def sign_detached(self, path: Path, *, signer: str | None = None, passphrase: str | None = None) -> Path:
        """Write ``<path>.sig`` (0600), a binary detached signature of ``path``. ``signer``: a
        fingerprint; default the only signing-capable secret key of this home."""
        if signer is None:
            signing = [k for k in self.keys(secret=True) if k.usable_for("s")]
            if len(signing) != 1:
                raise CryptoError(
                    "no signing key here" if not signing else f"{len(signing)} signing keys here: which one?",
                    hint="put the armored signing key in the GPG keys block (signing_key)" if not signing
                    else "name the signing key's fingerprint")
            fpr = signing[0].fingerprint
        else:
            fpr = normalize_fingerprint(signer)
        sig = path.with_name(path.name + SIG_SUFFIX)
        res = self._run(["--local-user", fpr, "--detach-sign", "--output", "-", "--", str(path)],
                        passphrase=passphrase, what="sign")
        if res.returncode != 0 or not _has(res.status, "SIG_CREATED"):
            raise _sign_error(res, fpr, passphrase is not None)
        fd = os.open(sig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(res.stdout)
        return sig

    def sign_detached_bytes(self, data: bytes, *, signer: str | None = None, passphrase: str | None = None,
                            name: str = "SHA256SUMS") -> bytes:
        """``sign_detached`` of data held in memory (a remote copy's small ``SHA256SUMS``)."""
        work = Path(tempfile.mkdtemp(prefix="sign-", dir=self.path if self.owned else None))
        try:
            p = work / name
            p.write_bytes(data)
            return self.sign_detached(p, signer=signer, passphrase=passphrase).read_bytes()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def verify_detached(self, path: Path, sig_path: Path | None, trusted: Iterable[str]) -> str:
        """The signer's primary fingerprint if ``sig_path`` holds a good detached signature of
        ``path`` by a key in ``trusted`` (primary or signing-subkey fingerprints); else CryptoError
        (unsigned, bad signature, untrusted or unknown signer)."""
        trust = {normalize_fingerprint(t) for t in trusted}
        if not trust:
            raise CryptoError("no trusted signing keys configured to verify signatures against",
                              hint="configure the fingerprint(s) of the signing key (GPG keys block trusted_signers)")
        name = path.name
        for p in (path, sig_path):
            if p is not None and p.is_symlink():
                raise CryptoError(f"{p.name} is a symbolic link",
                                  hint="refuse this set: a set holds only regular files")
        if sig_path is None or not sig_path.is_file():
            raise CryptoError(f"{name} is not signed (no {name}{SIG_SUFFIX})",
                              hint="signing is configured: refuse this set; it may not come from this backup host")
        res = self._run(["--no-auto-key-retrieve", "--verify", "--", str(sig_path), str(path)], what="verify")
        return _check_verify(res, name, trust)

    def verify_detached_bytes(self, data: bytes, signature: bytes | None, trusted: Iterable[str],
                              name: str = "SHA256SUMS") -> str:
        """``verify_detached`` of data held in memory (a small remote ``SHA256SUMS``)."""
        work = Path(tempfile.mkdtemp(prefix="verify-", dir=self.path if self.owned else None))
        try:
            p = work / name
            p.write_bytes(data)
            s = None
            if signature is not None:
                s = work / (name + SIG_SUFFIX)
                s.write_bytes(signature)
            return self.verify_detached(p, s, trusted)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- end

    def stop_agent(self) -> None:
        """Stop this home's gpg-agent (if any) and remove a socket directory gpg made outside it."""
        try:
            gpgconf = proc.which("gpgconf")
        except ToolMissingError:
            return
        home = ["--homedir", str(self.path)]
        try:
            socketdir = proc.run([gpgconf, *home, "--list-dirs", "socketdir"], timeout=10,
                                 what="gpgconf").stdout.decode().strip()
            proc.run([gpgconf, *home, "--kill", "gpg-agent"], timeout=30, what="gpgconf --kill gpg-agent")
            if socketdir and not Path(socketdir).resolve().is_relative_to(self.path.resolve()):
                proc.run([gpgconf, *home, "--remove-socketdir"], timeout=10, what="gpgconf --remove-socketdir")
        except BackupError as e:
            log.warning("could not stop the gpg-agent of %s: %s", self.path, e)


def _key_info(cur: dict[str, object]) -> KeyInfo:
    return KeyInfo(fingerprint=str(cur["fpr"] or ""), subkeys=tuple(cast(list[str], cur["subs"])),
                   capabilities=str(cur["caps"]), validity=str(cur["validity"]),
                   uids=tuple(cast(list[str], cur["uids"])))


HOME_PREFIX = "erpb-gpg-"
_STALE = re.compile(re.escape(HOME_PREFIX) + r"(?P<pid>[0-9]+)-[A-Za-z0-9_]+")


def _private_tmp() -> Path:
    """Where run homes go: ``/dev/shm`` (memory: the imported secret keys never reach a disk, even
    if the run is killed) when usable, else the temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def clean_stale_homes(root: Path) -> list[str]:
    """Remove the run homes in ``root`` whose process is gone (killed: its ``finally`` never ran),
    stopping their agents first. Returns their names."""
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        m = _STALE.fullmatch(name)
        path = root / name
        if m is None or not _pid_gone(int(m.group("pid"))) or path.is_symlink() or not path.is_dir():
            continue
        try:
            if path.stat().st_uid != os.geteuid():
                continue
        except OSError:
            continue
        GpgHome(path, owned=True).stop_agent()
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


@contextmanager
def gpg_home(keys: KeyMaterial = KeyMaterial(), *, tmp_dir: Path | None = None) -> Iterator[GpgHome]:
    """A private temporary GNUPGHOME with ``keys`` imported; its agent stopped and the directory
    removed at the end, whatever happens."""
    _find_gpg()  # fail before anything is created
    root = tmp_dir or _private_tmp()
    clean_stale_homes(root)
    path = Path(tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-", dir=root))  # 0700
    home: GpgHome | None = None
    try:
        (path / "gpg-agent.conf").write_text(_AGENT_CONF)
        home = GpgHome(path, owned=True)
        for i, armored in enumerate(keys.public_keys):
            home.import_keys(armored, what=f"public key block #{i + 1}")
        for i, armored in enumerate(keys.secret_keys):
            fprs = home.import_keys(armored, what=f"private key block #{i + 1}")
            secret = {k.fingerprint for k in home.keys(secret=True)}
            if not secret & set(fprs):
                raise CryptoError(f"private key block #{i + 1} holds only public keys",
                                  hint="export it with gpg --armor --export-secret-keys FINGERPRINT")
        yield home
    finally:
        if home is not None:
            home.stop_agent()
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- encryption


class GpgEncryptor:
    """``Encryptor`` (archive writer hook): ``wrap(sink)`` returns a writable whose bytes reach
    ``sink`` encrypted. ``recipients`` are the fingerprints to record in the manifest."""

    def __init__(self, home: GpgHome, recipients: tuple[str, ...]) -> None:
        self.home = home
        self.recipients = recipients

    def wrap(self, sink: IO[bytes]) -> IO[bytes]:
        return cast(IO[bytes], EncryptingWriter(self.home, self.recipients, sink))


class EncryptingWriter:
    """write() -> gpg stdin; a pump thread copies gpg stdout to the sink. ``close()`` waits for gpg
    and raises what went wrong (the sink's own error first); ``abort()`` kills gpg."""

    def __init__(self, home: GpgHome, recipients: Sequence[str], sink: IO[bytes]) -> None:
        args = ["--no-auto-key-locate", "--trust-model", "always", "--compress-algo", "none", "--encrypt"]
        for r in recipients:
            args += ["--recipient", r]
        args += ["--output", "-"]
        self._launch = _Launch(home.gpg, home.path, args, passphrase=None, stdin=True, stdout=True,
                               what="encrypt")
        self._child = self._launch.child
        _grow_pipes(self._child.stdin, self._child.stdout)
        self._sink = sink
        self._error: BaseException | None = None
        self._closed = False
        self.bytes_out = 0
        self._pump = threading.Thread(target=self._copy_out, daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self._child.pid

    def _copy_out(self) -> None:
        out = self._child.stdout
        try:
            # read(), not read1(): gpg writes 8 KiB at a time; whole 1 MiB chunks mean 128x fewer
            # Python iterations, hash updates and write calls on the sink
            while chunk := out.read(CHUNK):
                self._sink.write(chunk)
                self.bytes_out += len(chunk)
        except BaseException as e:  # the sink failed (disk full): stop gpg so write() fails fast
            self._error = e
            self._child_stop()

    def _child_stop(self) -> None:
        try:
            if self._child.poll() is None:
                os.kill(self._child.pid, 9)
        except OSError:
            pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed encrypting stream")
        if self._error is None:
            try:
                self._child.stdin.write(data)
                return len(data)
            except (BrokenPipeError, ValueError, OSError):
                pass
        raise self._fail()

    def flush(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._closed

    def writable(self) -> bool:
        return True

    def _fail(self) -> BaseException:
        self._closed = True
        self._child_stop()
        self._pump.join()
        self._child.kill()
        rc, status, err = self._launch.finish()
        if self._error is not None:
            return self._error
        return _encrypt_error(status, err, rc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._child.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self._pump.join()
        rc, status, err = self._launch.finish()
        if self._error is not None:
            raise self._error
        if rc != 0 or not _has(status, "END_ENCRYPTION"):
            raise _encrypt_error(status, err, rc)

    def abort(self) -> None:
        """Stop gpg, drop its output (an artifact being abandoned)."""
        if self._closed:
            return
        self._closed = True
        self._child_stop()
        self._pump.join()
        self._child.kill()
        self._launch.finish()


def _encrypt_error(status: Sequence[str], err: str, rc: int) -> CryptoError:
    for f in _has(status, "INV_RECP"):
        who = f[1] if len(f) > 1 else "?"
        return CryptoError(f"gpg refused recipient {who} (reason {f[0] if f else '?'})",
                           hint="check the recipient's public key: present, not expired or revoked")
    return CryptoError(f"gpg encryption failed (exit {rc}): {_last_line(err) or 'no message'}",
                       hint="check the recipients' keys and free space for the backup")


# ----------------------------------------------------------------------------- decryption


class GpgDecryptor:
    """``Callable[[IO[bytes]], IO[bytes]]`` (archive reader hook): ``decryptor(src)`` is a readable
    of the plaintext; reading to its end raises CryptoError if gpg did not decrypt *and* verify
    the integrity of the whole message."""

    def __init__(self, home: GpgHome, passphrase: str | None) -> None:
        self.home = home
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return f"GpgDecryptor({self.home!r}, passphrase={'***' if self._passphrase else None})"

    def __call__(self, src: IO[bytes]) -> IO[bytes]:
        return cast(IO[bytes], DecryptingReader(self.home, src, self._passphrase))


class _PullFilter:
    """gpg between a source and ``read()``: a feeder thread copies ``src`` into gpg's stdin
    (stopping gpg if the source fails); ``close()`` kills gpg if it still runs."""

    def __init__(self, home: GpgHome, args: list[str], src: IO[bytes], passphrase: str | None, what: str) -> None:
        self._launch = _Launch(home.gpg, home.path, args, passphrase=passphrase, stdin=True, stdout=True, what=what)
        self._child = self._launch.child
        _grow_pipes(self._child.stdin, self._child.stdout)
        self._src = src
        self._feed_error: BaseException | None = None
        self._done = False
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    @property
    def pid(self) -> int:
        return self._child.pid

    def _feed(self) -> None:
        stdin = self._child.stdin
        try:
            while chunk := self._src.read(CHUNK):
                stdin.write(chunk)
        except (BrokenPipeError, ValueError):
            pass  # gpg stopped reading: its exit status says why
        except BaseException as e:  # the source failed (network, disk): stop gpg
            self._feed_error = e
            try:
                if self._child.poll() is None:
                    os.kill(self._child.pid, 9)
            except OSError:
                pass
        finally:
            try:
                stdin.close()
            except (BrokenPipeError, OSError):
                pass

    def _end(self) -> tuple[int, list[str], str]:
        """gpg's outcome once its output is drained; the source's own error first."""
        self._done = True
        self._feeder.join()
        rc, status, err = self._launch.finish()
        if self._feed_error is not None:
            raise self._feed_error
        return rc, status, err

    def close(self) -> None:
        if not self._done:
            self._done = True
            try:
                if self._child.poll() is None:
                    os.kill(self._child.pid, 9)
            except OSError:
                pass
            self._feeder.join(timeout=30)
            self._child.kill()
            self._launch.finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecryptingReader(_PullFilter):
    def __init__(self, home: GpgHome, src: IO[bytes], passphrase: str | None, name: str | None = None) -> None:
        self.name = name or os.path.basename(str(getattr(src, "name", "") or "")) or "the artifact"
        self._has_passphrase = passphrase is not None
        super().__init__(home, ["--no-auto-key-retrieve", "--decrypt", "--output", "-"], src, passphrase, "decrypt")

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        if n is None or n < 0:
            data = self._child.stdout.read()
            self._finish()  # all of it: only good if gpg says so
            return data
        data = self._child.stdout.read(n)
        if data:
            return data
        self._finish()
        return b""

    def _finish(self) -> None:
        rc, status, err = self._end()
        if rc != 0 or not _has(status, "DECRYPTION_OKAY") or _has(status, "BADMDC"):
            raise _decrypt_error(status, err, self.name, self._has_passphrase)


class EncryptingReader(_PullFilter):
    """Pull-mode encryption (an off-site copy of a plaintext artifact): ``read()`` returns gpg's
    output, hashed and counted on the way (``hexdigest()``, ``size``: complete once ``read()``
    returned b''). Reading to the end raises CryptoError if gpg did not finish the encryption."""

    def __init__(self, home: GpgHome, recipients: Sequence[str], src: IO[bytes], name: str = "artifact") -> None:
        import hashlib

        self.name = name
        self._hash = hashlib.sha256()
        self.size = 0
        args = ["--no-auto-key-locate", "--trust-model", "always", "--compress-algo", "none", "--encrypt"]
        for r in recipients:
            args += ["--recipient", r]
        super().__init__(home, [*args, "--output", "-"], src, None, "encrypt")

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        data = self._child.stdout.read(CHUNK if n is None or n < 0 else n)
        if data:
            self._hash.update(data)
            self.size += len(data)
            return data
        rc, status, err = self._end()
        if rc != 0 or not _has(status, "END_ENCRYPTION"):
            raise _encrypt_error(status, err, rc)
        return b""

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _decrypt_error(status: Sequence[str], err: str, name: str, had_passphrase: bool) -> CryptoError:
    codes = _error_codes(status)
    if _E_BAD_PASSPHRASE in codes or _has(status, "BAD_PASSPHRASE"):
        return CryptoError(f"cannot decrypt {name}: wrong passphrase for the private key", hint=_PASS_HINT)
    if _E_NO_PASSPHRASE in codes or (_has(status, "NEED_PASSPHRASE") and not had_passphrase):
        return CryptoError(f"cannot decrypt {name}: the private key needs a passphrase and none was given",
                           hint=_PASS_HINT)
    if _has(status, "NO_SECKEY") and not _has(status, "DECRYPTION_KEY"):
        ids = ", ".join(f[0] for f in _has(status, "NO_SECKEY") if f)
        return CryptoError(f"cannot decrypt {name}: no private key for it here (encrypted to key {ids})",
                           hint=_KEY_HINT)
    if _has(status, "BADMDC"):
        return CryptoError(f"cannot decrypt {name}: it was modified or damaged (GPG integrity check failed)",
                           hint="verify the set; restore from another set or copy")
    if _has(status, "NODATA") and not _has(status, "ENC_TO"):
        return CryptoError(f"cannot decrypt {name}: it is not GPG-encrypted data",
                           hint="check that the set is encrypted (manifest.json, encryption) and not damaged")
    if _has(status, "DECRYPTION_INFO") or _has(status, "PLAINTEXT"):
        return CryptoError(f"cannot decrypt {name}: it is truncated or damaged ({_last_line(err) or 'gpg failed'})",
                           hint="verify the set; restore from another set or copy")
    return CryptoError(f"cannot decrypt {name}: {_last_line(err) or 'gpg failed'}", hint=_KEY_HINT)


# ----------------------------------------------------------------------------- signatures


def _sign_error(res: _Outcome, fpr: str, had_passphrase: bool) -> CryptoError:
    codes = _error_codes(res.status)
    if _has(res.status, "INV_SGNR") or _E_NO_SECKEY in codes:
        return CryptoError(f"no private signing key {fpr} here",
                           hint="put the armored signing key in the GPG keys block (signing_key)")
    if _E_BAD_PASSPHRASE in codes:
        return CryptoError(f"cannot sign with {fpr}: wrong passphrase for the signing key",
                           hint="check the GPG keys block's signing_passphrase")
    if _E_NO_PASSPHRASE in codes or not had_passphrase and _has(res.status, "NEED_PASSPHRASE"):
        return CryptoError(f"cannot sign with {fpr}: the signing key needs a passphrase and none was given",
                           hint="set the GPG keys block's signing_passphrase")
    return CryptoError(f"signing with {fpr} failed: {_last_line(res.stderr) or f'exit {res.returncode}'}",
                       hint="check the signing key in the GPG keys block")


def _check_verify(res: _Outcome, name: str, trust: set[str]) -> str:
    st = res.status
    sig = f"{name}{SIG_SUFFIX}"
    refuse = "refuse this set: it may not come from this backup host"
    if _has(st, "PLAINTEXT") or "not a detached signature" in res.stderr:
        raise CryptoError(f"{sig} is not a detached signature of {name}", hint="refuse this set: it was tampered with")
    if not _has(st, "NEWSIG") and not _has(st, "ERRSIG"):
        raise CryptoError(f"{name} is not signed ({sig} holds no signature)", hint=f"signing is configured: {refuse}")
    if _has(st, "BADSIG"):
        raise CryptoError(f"bad signature: {name} does not match {sig}",
                          hint="the set was changed after it was signed: do not restore it")
    for kw, what in (("EXPKEYSIG", "an expired"), ("REVKEYSIG", "a revoked")):
        for f in _has(st, kw):
            raise CryptoError(f"{sig} is signed by {what} key ({f[0] if f else '?'})",
                              hint="renew the signing key and re-sign, or restore another set")
    good = None
    for f in _has(st, "VALIDSIG"):
        signing_fpr, primary = f[0], f[-1]
        if primary not in trust and signing_fpr not in trust:
            raise CryptoError(f"{sig} is signed by an untrusted key {primary}",
                              hint=f"only the configured signing keys are accepted: {refuse}")
        good = primary
    for f in _has(st, "ERRSIG"):
        who = f[-1] if len(f) >= 7 and _FPR.match(f[-1]) else (f[0] if f else "?")
        raise CryptoError(f"{sig} is signed by an untrusted key {who} (not among the verification keys)",
                          hint=f"only the configured signing keys are accepted: {refuse}")
    if good is None or res.returncode != 0:
        raise CryptoError(f"cannot verify {sig}: {_last_line(res.stderr) or 'no valid signature'}", hint=refuse)
    return good
