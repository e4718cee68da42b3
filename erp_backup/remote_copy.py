"""What a set looks like off-site: the objects the upload sends, in the order it sends them.

The contract between the encryption work (issue #8, items 1-2) and the upload work (items 4-6):

- ``remote_copy(settings, repo, set_id)`` yields a ``SetCopy``;
- ``SetCopy.artifacts()`` yields ``(name, readable)`` pairs, each streamed (never whole in memory)
  and each read to its end before the next is asked for: the set's artifacts as they must be
  stored remotely (encrypted, whatever the local copy is);
- ``SetCopy.trailer()``, called after every artifact was read, returns the small files that
  follow them, in upload order: ``SHA256SUMS``, its signature if any, and ``manifest.json`` last
  (a set is complete remotely only once its manifest is there).

This stub is the identity copy: the local set's files as they are. The encryption work replaces it
with one that encrypts a plaintext local set on the way out and writes the remote ``SHA256SUMS``
(over the encrypted bytes), its signature and the remote manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import IO

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import Settings
from erp_backup.core.models import BackupId

TRAILER = ("SHA256SUMS", "SHA256SUMS.sig", "manifest.json")


@dataclass
class SetCopy:
    repo: LocalRepository
    set_id: BackupId
    _stack: ExitStack = field(default_factory=ExitStack)

    def artifacts(self) -> Iterator[tuple[str, IO[bytes]]]:
        m = self.repo.read_manifest(self.set_id)
        for a in m.artifacts:
            with open(self.repo.set_dir(self.set_id) / a.name, "rb") as f:
                yield a.name, f

    def trailer(self) -> list[tuple[str, bytes]]:
        d = self.repo.set_dir(self.set_id)
        return [(n, (d / n).read_bytes()) for n in TRAILER if (d / n).exists()]


@contextmanager
def remote_copy(settings: Settings, repo: LocalRepository, set_id: BackupId) -> Iterator[SetCopy]:
    del settings  # the encryption work uses it (recipients, signing key)
    copy = SetCopy(repo, set_id)
    with copy._stack:
        yield copy
