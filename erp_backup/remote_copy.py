"""What a set looks like off-site: the objects the upload sends, in the order it sends them.

The contract between the encryption work (issue #8, items 1-2) and the upload work (items 4-6):

- ``remote_copy(settings, repo, set_id)`` yields a ``SetCopy``;
- ``SetCopy.artifacts()`` yields ``(name, readable)`` pairs, each streamed (never whole in memory)
  and each read to its end before the next is asked for: the set's artifacts as they must be
  stored remotely (encrypted, whatever the local copy is);
- ``SetCopy.trailer()``, called after every artifact was read, returns the small files that
  follow them, in upload order: ``SHA256SUMS``, its signature if any, and ``manifest.json`` last
  (a set is complete remotely only once its manifest is there).

Nothing unencrypted leaves the host (``[encryption]`` is required):

* a plaintext local set is encrypted on the way out: each artifact streams through gpg (to the
  configured recipients, ``--compress-algo none``) and gets the ``.gpg`` suffix; the local bytes
  are hashed on the way in and must match the local manifest (a damaged local set is never sent
  with fresh, valid-looking checksums). The remote ``SHA256SUMS`` covers the encrypted bytes and
  the remote ``manifest.json``; the remote manifest is the local one (same set id, same snapshot
  index) with the encrypted artifacts (name, size, SHA-256, ``encryption: gpg``) and the
  recipients' fingerprints; with ``sign = true`` ``SHA256SUMS.sig`` signs it;
* an already encrypted local set (``[encryption] local = true``) is sent as it is, its signature too.

With ``sign = true`` the local set must carry a good signature by a verification key, and its
manifest must match the signed ``SHA256SUMS`` (read once: the bytes checked are the bytes used),
before anything is sent: the signature the upload puts on a remote copy vouches for bytes that were
signed here before. A set someone else put into the local directory (unsigned, or signed by another
key) is never sent with this host's signature (CryptoError/IntegrityError, nothing sent).

The remote copy is a set in the local layout: downloaded into an empty directory it is restored by
the same code (``erp_backup.restore``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import IO, cast

from erp_backup import encryption
from erp_backup.adapters.archive.artifact import CHUNK
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository
from erp_backup.config import Settings
from erp_backup.core import manifest as mf
from erp_backup.core.errors import ConfigError, IntegrityError, StorageError
from erp_backup.core.models import Artifact, BackupId, Manifest

SIG = encryption.SIG
TRAILER = (SUMS, SIG, MANIFEST)


class _HashingReader:
    """The local artifact's bytes, hashed on their way into gpg."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(CHUNK if n is None or n < 0 else n)
        self.hash.update(data)
        self.size += len(data)
        return data


@dataclass
class SetCopy:
    settings: Settings
    repo: LocalRepository
    set_id: BackupId
    manifest: Manifest
    session: encryption.Session | None = None  # set when the local set is plaintext (encrypted here)
    signed: list[tuple[str, bytes]] | None = None  # the local trailer as checked (sign = true)
    _stack: ExitStack = field(default_factory=ExitStack)
    _sent: list[Artifact] = field(default_factory=list)

    @property
    def encrypts(self) -> bool:
        return self.session is not None

    def artifacts(self) -> Iterator[tuple[str, IO[bytes]]]:
        d = self.repo.set_dir(self.set_id)
        self._sent.clear()
        for a in self.manifest.artifacts:
            try:
                f = open(d / a.name, "rb")
            except OSError as e:
                raise StorageError(f"cannot read {self.set_id}/{a.name}: {e.strerror}",
                                   hint="verify the local set (`erp-backup verify`)") from e
            with f:
                if self.session is None:
                    yield a.name, f
                    self._sent.append(a)
                    continue
                src = _HashingReader(f)
                name = encryption.encrypted_name(a.name)
                with self.session.encrypting_reader(cast(IO[bytes], src), name) as out:
                    yield name, cast(IO[bytes], out)
                    if out.read(1):
                        raise StorageError(f"the upload did not read {name} to its end",
                                           hint="a bug: report it")
                    if src.hash.hexdigest() != a.sha256 or src.size != a.size:
                        raise IntegrityError(f"local set {self.set_id}: {a.name} does not match its manifest; "
                                             "not sending it", hint="verify the local set; run a new backup")
                    self._sent.append(dataclasses.replace(a, name=name, size=out.size, sha256=out.hexdigest(),
                                                          encryption=encryption.METHOD))

    def trailer(self) -> list[tuple[str, bytes]]:
        d = self.repo.set_dir(self.set_id)
        if len(self._sent) != len(self.manifest.artifacts):
            raise StorageError(f"trailer of {self.set_id} asked before every artifact was sent",
                               hint="a bug: report it")
        if self.session is None:
            if self.signed is not None:
                return list(self.signed)  # the bytes whose signature was checked
            return [(n, (d / n).read_bytes()) for n in TRAILER if (d / n).is_file()]
        remote = dataclasses.replace(self.manifest, artifacts=tuple(self._sent),
                                     recipients=encryption.recipients(self.settings))
        text = mf.dumps(remote).encode("utf-8")
        covered = [*self._sent, Artifact(name=MANIFEST, role="manifest", size=len(text),
                                         sha256=hashlib.sha256(text).hexdigest())]
        sums = mf.sha256sums(covered).encode("utf-8")
        out = [(SUMS, sums)]
        if encryption.signs(self.settings):
            out.append((SIG, self.session.sign_bytes(sums)))
        out.append((MANIFEST, text))
        return out


@contextmanager
def remote_copy(settings: Settings, repo: LocalRepository, set_id: BackupId) -> Iterator[SetCopy]:
    if settings.encryption is None:
        raise ConfigError("off-site copies must be encrypted and there is no [encryption] section",
                          hint="add [encryption] with recipients (README: Encryption)")
    signed = None
    if encryption.signs(settings):
        m, signed = encryption.signed_manifest(settings, repo, set_id)
    else:
        m = repo.read_manifest(set_id)
    plain = [a.name for a in m.artifacts if not a.encryption]
    with ExitStack() as stack:
        session = None
        if plain:
            if len(plain) != len(m.artifacts):
                raise IntegrityError(f"set {set_id} has encrypted and plaintext artifacts",
                                     hint="verify the set; it is not what erp-backup writes")
            session = stack.enter_context(encryption.session(settings, signing=encryption.signs(settings)))
        copy = SetCopy(settings, repo, set_id, m, session, signed)
        with copy._stack:
            yield copy

