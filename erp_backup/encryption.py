"""``[encryption]`` at run time: the keys, the GNUPGHOMEs, a set's signature, its decryption.

Each stage that needs GPG opens its own ``session`` (a private temporary GNUPGHOME with the
configured keys imported; its gpg-agent stopped and the home removed when the stage ends, even on
error): nothing secret travels between stages or into a flow parameter, and a retried stage starts
from nothing. Secrets are read at the moment of use:

* public keys (recipients', the signing key's): ``[encryption] public_keys`` file and/or the GPG
  keys block's ``public_keys``;
* the signing key: the block's ``signing_key`` (passphrase: its ``signing_passphrase``, else
  ``$ERP_BACKUP_GPG_SIGNING_PASSPHRASE``, else ``$ERP_BACKUP_GPG_PASSPHRASE``), else the operator's
  keyring (``$GNUPGHOME``, gpg's own convention, default ``~/.gnupg``);
* the restore (decryption) key: the block's ``private_key`` (passphrase: ``private_key_passphrase``
  else ``$ERP_BACKUP_GPG_PASSPHRASE``), else the operator's keyring;
* verification keys: ``[encryption] signers``, else the block's ``trusted_signers``, else
  ``signing_key``, else the one signing key this host holds. Only their signatures count; gpg's
  trust database plays no part.

With ``sign = true`` every set carries ``SHA256SUMS.sig``; verify and restore refuse a set whose
signature is missing, bad or made by another key, before anything is read from it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from erp_backup.adapters import crypto, proc
from erp_backup.adapters.storage.local import MANIFEST, MAX_SUMS, SUMS, LocalRepository
from erp_backup.config import EncryptionConfig, Settings
from erp_backup.core import manifest as mf
from erp_backup.core.errors import BackupError, ConfigError, CryptoError, IntegrityError
from erp_backup.core.models import BackupId, Manifest

ENV_PASSPHRASE = "ERP_BACKUP_GPG_PASSPHRASE"
ENV_SIGNING_PASSPHRASE = "ERP_BACKUP_GPG_SIGNING_PASSPHRASE"
SIG = SUMS + crypto.SIG_SUFFIX
GPG_SUFFIX = ".gpg"
METHOD = "gpg"
_NO_KEY_HINT = ("import the restore key: the GPG keys block's private_key, or gpg's own keyring "
                "(GNUPGHOME); `erp-backup verify --quick` checks checksums and the signature without it")


@dataclass(frozen=True)
class _Secrets:
    """What a session needs from the block and the environment (never in a repr)."""

    material: crypto.KeyMaterial
    trusted: tuple[str, ...]
    signing_in_block: bool
    restore_in_block: bool
    sign_passphrase: str | None = field(default=None, repr=False)
    restore_passphrase: str | None = field(default=None, repr=False)


def encrypts_local(settings: Settings) -> bool:
    return settings.encryption is not None and settings.encryption.local


def signs(settings: Settings) -> bool:
    return settings.encryption is not None and settings.encryption.sign


def recipients(settings: Settings) -> tuple[str, ...]:
    e = settings.encryption
    return tuple(dict.fromkeys(crypto.normalize_fingerprint(r) for r in e.recipients)) if e else ()


def encrypted_name(name: str) -> str:
    return name if name.endswith(GPG_SUFFIX) else name + GPG_SUFFIX


def is_encrypted(m: Manifest) -> bool:
    return any(a.encryption for a in m.artifacts)


def _load_block(name: str) -> Any:
    from erp_backup.blocks.gpg import GpgKeys  # Prefect import only when a block is configured

    try:
        return GpgKeys.load(name)
    except ValueError as e:
        raise ConfigError(f"encryption.block: no GPG keys block named {name!r}",
                          hint="create it with `erp-backup block gpg --name NAME …` (README: Encryption) or fix "
                          "the name") from e
    except Exception as e:  # the Prefect API is down or unreachable: one line, not a traceback
        raise ConfigError(f"encryption.block: cannot load the GPG keys block {name!r} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'})",
                          hint="check that the Prefect server at PREFECT_API_URL is up, then run again") from e


def _read_public_keys(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"encryption.public_keys: {path} does not exist",
                          hint="export the recipients' keys with gpg --armor --export FPR > FILE") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"encryption.public_keys: cannot read {path}",
                          hint="give an armored (text) key file readable by the backup user") from e
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in text:
        raise ConfigError(f"encryption.public_keys: {path} holds no armored public key",
                          hint="export the keys with gpg --armor --export FPR > FILE")
    if "PRIVATE KEY BLOCK" in text:
        raise ConfigError(f"encryption.public_keys: {path} holds a private key",
                          hint="keep only public keys there; private keys go into the GPG keys block")
    return text


def _secrets(e: EncryptionConfig, *, signing: bool, restore: bool) -> _Secrets:
    publics: list[str] = []
    if e.public_keys is not None:
        publics.append(_read_public_keys(e.public_keys))
    secret_keys: list[str] = []
    trusted = tuple(crypto.normalize_fingerprint(f) for f in e.signers)
    sign_pass = restore_pass = None
    signing_in_block = restore_in_block = False
    if e.block:
        block = _load_block(e.block)
        material = block.key_material(signing=signing, restore=restore)
        publics += material.public_keys
        secret_keys += material.secret_keys
        trusted = trusted or block.trusted_fingerprints()
        sign_pass = block.signing_secret()
        restore_pass = block.restore_secret()
        signing_in_block = signing and block.signing_key is not None
        restore_in_block = restore and block.private_key is not None
    if not trusted and e.signing_key:
        trusted = (crypto.normalize_fingerprint(e.signing_key),)
    env = os.environ
    sign_pass = sign_pass or env.get(ENV_SIGNING_PASSPHRASE) or env.get(ENV_PASSPHRASE) or None
    restore_pass = restore_pass or env.get(ENV_PASSPHRASE) or None
    return _Secrets(crypto.KeyMaterial(tuple(publics), tuple(secret_keys)), trusted, signing_in_block,
                    restore_in_block, sign_pass, restore_pass)


def _keyring_path() -> Path:
    return Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")


class _Keyring:
    """The operator's GNUPGHOME (never removed). Its gpg-agent is stopped at the end only if this
    run started it (its socket was not there before)."""

    def __init__(self, path: Path) -> None:
        self.home = crypto.GpgHome(path)
        self._socket = self._agent_socket()
        self._had_agent = self._socket is not None and self._socket.exists()

    def _agent_socket(self) -> Path | None:
        try:
            out = proc.run([proc.which("gpgconf"), "--homedir", str(self.home.path), "--list-dirs", "agent-socket"],
                           timeout=10, what="gpgconf").stdout.decode().strip()
        except BackupError:
            return None
        return Path(out) if out else None

    def close(self) -> None:
        if not self._had_agent and self._socket is not None and self._socket.exists():
            self.home.stop_agent()


class Session:
    """One stage's GPG: ``home`` holds the configured public keys (and the block's secret keys);
    ``keyring`` is the operator's GNUPGHOME when a secret key has to come from there."""

    def __init__(self, e: EncryptionConfig | None, home: crypto.GpgHome, secrets: _Secrets,
                 keyring: Callable[[], crypto.GpgHome | None]) -> None:
        self.config = e
        self.home = home
        self._secrets = secrets
        self._keyring = keyring

    def __repr__(self) -> str:
        return f"Session({self.home!r})"

    # -- writing

    def encryptor(self) -> crypto.GpgEncryptor:
        if self.config is None or not self.config.recipients:
            raise ConfigError("no encryption recipients configured", hint="set [encryption] recipients")
        return self.home.encryptor(self.config.recipients)

    def encrypting_reader(self, src: IO[bytes], name: str) -> crypto.EncryptingReader:
        if self.config is None or not self.config.recipients:
            raise ConfigError("no encryption recipients configured", hint="set [encryption] recipients")
        return crypto.EncryptingReader(self.home, self.home.require_recipients(self.config.recipients), src, name)

    def _signing_home(self) -> crypto.GpgHome:
        if self._secrets.signing_in_block:
            return self.home
        ring = self._keyring()
        if ring is None:
            raise CryptoError("[encryption] sign = true but there is no signing key",
                              hint="put the armored signing key into the GPG keys block (signing_key) or into "
                              "gpg's keyring (GNUPGHOME), or set sign = false")
        return ring

    def sign(self, sums: Path) -> Path:
        """Write ``SHA256SUMS.sig`` next to ``sums``."""
        signer = self.config.signing_key if self.config else None
        return self._signing_home().sign_detached(sums, signer=signer, passphrase=self._secrets.sign_passphrase)

    def sign_bytes(self, data: bytes) -> bytes:
        signer = self.config.signing_key if self.config else None
        return self._signing_home().sign_detached_bytes(data, signer=signer, passphrase=self._secrets.sign_passphrase)

    # -- reading

    def trusted(self) -> tuple[str, ...]:
        if self._secrets.trusted:
            return self._secrets.trusted
        own = [k.fingerprint for k in self.home.keys(secret=True) if k.usable_for("s")]
        if len(own) == 1:
            return (own[0],)
        raise CryptoError("[encryption] sign = true but no verification key is configured",
                          hint="set [encryption] signers (or signing_key) to the signing key's fingerprint")

    def check_signature(self, set_dir: Path, sid: str) -> str:
        """The signer of ``set_dir``'s ``SHA256SUMS``, if it is a good signature by a trusted key;
        else CryptoError naming the set."""
        try:
            return self.home.verify_detached(set_dir / SUMS, set_dir / SIG, self.trusted())
        except CryptoError as err:
            raise CryptoError(f"set {sid}: {err.message}", hint=err.hint) from err

    def check_signature_bytes(self, sums: bytes, sig: bytes | None, sid: str) -> str:
        try:
            return self.home.verify_detached_bytes(sums, sig, self.trusted())
        except CryptoError as err:
            raise CryptoError(f"set {sid}: {err.message}", hint=err.hint) from err

    def _decrypt_home(self) -> crypto.GpgHome | None:
        if self._secrets.restore_in_block:
            return self.home
        return self._keyring()

    def _secret_match(self, home: crypto.GpgHome, m: Manifest) -> bool:
        wanted = set(m.recipients)
        keys = home.keys(secret=True)
        if not wanted:
            return bool(keys)
        return any(k.matches(f) for k in keys for f in wanted)

    def decryptor(self, m: Manifest, *, purpose: str = "restore") -> crypto.GpgDecryptor | None:
        """The decryptor for ``m``'s artifacts (None if it is not encrypted). No private key for
        it here: CryptoError that says where the key goes."""
        if not is_encrypted(m):
            return None
        home = self._decrypt_home()
        if home is None or not self._secret_match(home, m):
            who = ", ".join(m.recipients) or "its recipients"
            raise CryptoError(f"cannot {purpose} {m.id}: it is encrypted and there is no private key for it here "
                              f"(encrypted to {who})", hint=_NO_KEY_HINT)
        return home.decryptor(self._secrets.restore_passphrase)

    def can_decrypt(self, m: Manifest) -> bool:
        home = self._decrypt_home()
        return home is not None and self._secret_match(home, m)

    def probe(self, m: Manifest, path: Path) -> None:
        """Decrypt the first bytes of ``path`` (an artifact of ``m``): a missing key or a wrong
        passphrase fails here, before anything is written."""
        dec = self.decryptor(m)
        if dec is None:
            return
        with open(path, "rb") as f:
            reader = crypto.DecryptingReader(dec.home, f, self._secrets.restore_passphrase, name=path.name)
            try:
                if not reader.read(1):  # b'' only after gpg said everything was fine: an empty artifact
                    return
            finally:
                reader.close()


@contextmanager
def session(settings: Settings, *, signing: bool = False, restore: bool = False) -> Iterator[Session]:
    """A GPG session for one stage. ``signing``: the signing key is needed (backup host);
    ``restore``: the decryption key is needed (restore host, full verify). Without
    ``[encryption]`` it still decrypts with the operator's keyring (an encrypted set restored with
    a config that lost its section) but verifies no signature."""
    e = settings.encryption
    if e is not None:
        secrets = _secrets(e, signing=signing, restore=restore)
    else:
        secrets = _Secrets(crypto.KeyMaterial(), (), False, False, None, os.environ.get(ENV_PASSPHRASE) or None)
    rings: list[_Keyring] = []

    def keyring() -> crypto.GpgHome | None:
        if not rings:
            path = _keyring_path()
            if not path.is_dir():
                return None
            rings.append(_Keyring(path))
        return rings[0].home

    with crypto.gpg_home(secrets.material) as home:
        try:
            yield Session(e, home, secrets, keyring)
        finally:
            for r in rings:
                r.close()


@contextmanager
def local_encryptor(settings: Settings) -> Iterator[crypto.GpgEncryptor | None]:
    """The encryptor of a stage that writes an artifact (None: local sets are not encrypted)."""
    if not encrypts_local(settings):
        yield None
        return
    with session(settings) as s:
        yield s.encryptor()


def preflight(settings: Settings) -> None:
    """Before a backup writes anything: the keys load, every recipient has a usable encryption key
    and, with ``sign = true``, the signing key signs (its passphrase is right) and the signature
    verifies against the verification keys. One line, nothing written."""
    e = settings.encryption
    if e is None:
        return
    with session(settings, signing=e.sign) as s:
        if e.recipients:
            s.encryptor()
        if e.sign:
            probe = s.home.path / "erp-backup-probe"
            probe.write_bytes(b"erp-backup signing check\n")
            sig = s.sign(probe)
            try:
                s.home.verify_detached(probe, sig, s.trusted())
            except CryptoError as err:
                raise CryptoError(f"the signing key's signatures do not verify: {err.message}",
                                  hint="put the signing key's public key into [encryption] public_keys (or the "
                                  "block) and its fingerprint into [encryption] signers") from err


def sign_set(settings: Settings, set_dir: Path) -> Path | None:
    """Sign ``set_dir``'s ``SHA256SUMS`` when ``sign = true`` (the seal stage)."""
    if not signs(settings):
        return None
    with session(settings, signing=True) as s:
        return s.sign(set_dir / SUMS)


def refuse_unsigned(settings: Settings, sets: Sequence[tuple[Path, str]]) -> None:
    """With ``sign = true``, every set of ``sets`` (directory, id) must carry a good signature by a
    verification key: the first that does not is refused (CryptoError), before anything is read."""
    if not signs(settings) or not sets:
        return
    with session(settings, signing=True) as s:
        for d, sid in sets:
            s.check_signature(d, sid)


def _members(repo: LocalRepository, m: Manifest, files: bool) -> list[tuple[Manifest, frozenset[str] | None]]:
    """The sets a restore of ``m`` reads, with the roles it reads of each (None: all)."""
    out: list[tuple[Manifest, frozenset[str] | None]] = [(m, None)]
    if files:
        for dep in m.depends_on:
            out.append((repo.read_header(dep), frozenset({"files"})))
    return out


def check_restorable(settings: Settings | None, repo: LocalRepository, m: Manifest, *, files: bool,
                     database: bool, hash_artifacts: bool) -> None:
    """Before a restore writes anything: with ``sign = true`` every set it reads carries a good
    signature by a verification key (and, ``hash_artifacts``, the artifacts it reads match their
    signed checksums); an encrypted one can be decrypted here (the key is present, the passphrase
    right: the first bytes are decrypted). One CryptoError/IntegrityError, nothing written."""
    from erp_backup.verify import artifacts_problem

    members = _members(repo, m, files)
    encrypted = [(h, roles) for h, roles in members if is_encrypted(h)]
    if not (settings is not None and signs(settings)) and not encrypted:
        return
    if settings is None:
        settings = Settings()
    with session(settings, signing=True, restore=bool(encrypted)) as s:
        if signs(settings):
            for h, roles in members:
                s.check_signature(repo.set_dir(h.id), h.id.value)
                if hash_artifacts:
                    problem = artifacts_problem(repo, h, roles)
                    if problem is not None:
                        raise IntegrityError(f"set {h.id} does not match its signed checksums: {problem}",
                                             hint="the set was changed after it was signed: restore another set")
        probed = False
        for h, roles in encrypted:
            s.decryptor(h)  # no key for it: one line
            if probed:
                continue
            for a in h.artifacts:
                if a.encryption and (roles is None or a.role in roles) and (a.role != "database" or database) \
                        and (a.role != "files" or files):
                    s.probe(h, repo.set_dir(h.id) / a.name)
                    probed = True
                    break


@contextmanager
def restore_decryptor(settings: Settings | None, repo: LocalRepository, m: Manifest, *, files: bool
                      ) -> Iterator[Callable[[Manifest], crypto.GpgDecryptor | None]]:
    """For the restore itself: ``decryptor_for(set_manifest)``, in one GPG session (opened only if
    a set it reads is encrypted). Signatures are checked again here (the set may have been swapped
    since the preflight)."""
    members = _members(repo, m, files)
    if not (settings is not None and signs(settings)) and not any(is_encrypted(h) for h, _ in members):
        yield lambda _m: None
        return
    with session(settings or Settings(), signing=True, restore=True) as s:
        if settings is not None and signs(settings):
            for h, _ in members:
                s.check_signature(repo.set_dir(h.id), h.id.value)
        yield s.decryptor


def check_remote_signature(settings: Settings, sums: bytes, sig: bytes | None, sid: str) -> str | None:
    """For ``list``/``verify --remote``: with ``sign = true``, the signer of a remote set's
    ``SHA256SUMS`` (given as bytes, ``sig`` None when the object is missing) if the signature is good
    and by a verification key, else CryptoError naming the set; None when signing is not configured."""
    if not signs(settings):
        return None
    with session(settings, signing=True) as s:
        return s.check_signature_bytes(sums, sig, sid)


def _read_small(path: os.PathLike[str] | str, limit: int, sid: BackupId) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise IntegrityError(f"set {sid}: cannot read {os.path.basename(path)}: {e.strerror}",
                             hint=f"verify the local set: `erp-backup verify {sid}`") from e
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise IntegrityError(f"set {sid}: {os.path.basename(path)} is larger than {limit} bytes",
                             hint="it is not one this tool wrote: do not use it")
    return data


def _lines(data: bytes) -> Iterator[str]:
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        yield data[start:end].decode("utf-8")
        start = end


def signed_manifest(settings: Settings, repo: LocalRepository, set_id: BackupId
                    ) -> tuple[Manifest, list[tuple[str, bytes]]]:
    """A local set's whole manifest, checked (``sign = true``): ``SHA256SUMS`` carries a good signature
    by a verification key, the manifest's bytes match it, and so do the artifacts the manifest names.
    Each file is read once: the bytes checked are the bytes used (a file swapped after an earlier
    check is never taken on trust). With the trailer (``SHA256SUMS``, its signature, ``manifest.json``)
    as those very bytes, for an upload. CryptoError/IntegrityError naming the set otherwise."""
    d = repo.set_dir(set_id)
    sums = _read_small(d / SUMS, MAX_SUMS, set_id)
    sig = _read_small(d / SIG, 1 << 16, set_id) if os.path.lexists(d / SIG) else None
    with session(settings, signing=True) as s:
        s.check_signature_bytes(sums, sig, set_id.value)
    hint = f"do not use it: `erp-backup verify {set_id}`; it may not come from this backup host"
    try:
        listed = mf.parse_sha256sums(sums.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise IntegrityError(f"set {set_id}: {SUMS} is not text", hint=hint) from e
    where = f"{set_id}/{MANIFEST}"
    try:
        fd = os.open(d / MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            text = f.read()
    except OSError as e:
        raise IntegrityError(f"set {set_id}: cannot read {MANIFEST}: {e.strerror}", hint=hint) from e
    if hashlib.sha256(text).hexdigest() != listed.get(MANIFEST):
        raise IntegrityError(f"set {set_id}: {MANIFEST} does not match its signed {SUMS}", hint=hint)
    try:
        m = mf.load_lines(_lines(text), where=where)
    except (IntegrityError, UnicodeDecodeError):
        m = mf.loads(text, where=where)
    if m.id != set_id:
        raise IntegrityError(f"set {set_id}: {MANIFEST} describes set {m.id}", hint=hint)
    if {a.name: a.sha256 for a in m.artifacts} != {n: h for n, h in listed.items() if n != MANIFEST}:
        raise IntegrityError(f"set {set_id}: {SUMS} and {MANIFEST} disagree on the artifacts", hint=hint)
    trailer = [(SUMS, sums), *([(SIG, sig)] if sig is not None else []), (MANIFEST, text)]
    return m, trailer
