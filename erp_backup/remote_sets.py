"""The sets of a remote store, read as untrusted input.

A remote set is ``<id>/…`` under the store's prefix; it is **complete** once its ``manifest.json``
is there (the upload sends it last). Keys whose first part is not a set id (``../x``, ``x/``,
anything else somebody put there) are ignored and reported, never opened. Every read is bounded:
``SHA256SUMS`` and signatures to ``MAX_SUMS``, a manifest to ``MAX_MANIFEST``, an artifact to the
size its manifest records (one byte more is an error, not a longer read).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from erp_backup.adapters.storage.base import RemoteStore
from erp_backup.adapters.storage.local import MANIFEST, MAX_SUMS, SUMS
from erp_backup.core import chain
from erp_backup.core import manifest as mf
from erp_backup.core.chain import Damaged
from erp_backup.core.errors import BackupError, IntegrityError
from erp_backup.core.models import BackupId, Manifest

SIG = SUMS + ".sig"
MAX_MANIFEST = 1 << 30  # a manifest lists every file of the tree: 200k files are ~50 MB
MAX_HEAD = 4 << 20  # the manifest's header (before the snapshot index)
CHUNK = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


def safe_name(name: str) -> bool:
    """An object name a set may hold: one plain path part, no traversal, no hidden or odd name."""
    return bool(_NAME.fullmatch(name)) and ".." not in name


@dataclass(frozen=True)
class RemoteScan:
    """What a store's listing says, before any object is read."""

    objects: dict[str, dict[str, int]] = field(default_factory=dict)  # set id -> object name -> size
    foreign: tuple[str, ...] = ()  # keys that belong to no set (ignored)

    @property
    def complete(self) -> list[BackupId]:
        return sorted(BackupId(i) for i, objs in self.objects.items() if MANIFEST in objs)

    @property
    def incomplete(self) -> list[BackupId]:
        return sorted(BackupId(i) for i, objs in self.objects.items() if MANIFEST not in objs)


def scan(store: RemoteStore) -> RemoteScan:
    objects: dict[str, dict[str, int]] = {}
    foreign: list[str] = []
    for o in store.list():
        sid, sep, name = o.key.partition("/")
        if not sep or not BackupId.is_valid(sid) or not safe_name(name):
            foreign.append(o.key)
            continue
        objects.setdefault(sid, {})[name] = o.size
    return RemoteScan(objects, tuple(foreign))


def read_bounded(store: RemoteStore, key: str, limit: int) -> bytes:
    """A small object whole (SHA256SUMS, a signature), refusing one larger than ``limit``."""
    out = bytearray()
    with store.get_stream(key) as body:
        while chunk := body.read(min(CHUNK, limit + 1 - len(out))):
            out += chunk
            if len(out) > limit:
                raise IntegrityError(f"remote object {key} is larger than {limit} bytes: not one this tool wrote",
                                     hint="the remote copy was tampered with or damaged; use another set")
    return bytes(out)


def stream_bounded(store: RemoteStore, key: str, size: int) -> Iterator[bytes]:
    """The object's bytes, exactly ``size`` of them: a longer or shorter object is an IntegrityError."""
    got = 0
    with store.get_stream(key) as body:
        while True:
            chunk = body.read(min(CHUNK, size + 1 - got))
            if not chunk:
                break
            got += len(chunk)
            if got > size:
                raise IntegrityError(f"remote object {key} is larger than the {size} bytes its manifest records",
                                     hint="the remote copy was tampered with or damaged; use another set")
            yield chunk
    if got != size:
        raise IntegrityError(f"remote object {key} has {got} bytes, its manifest records {size}",
                             hint="the upload was cut short or the object was damaged; use another set")


def read_sums(store: RemoteStore, sid: BackupId) -> tuple[bytes, dict[str, str]]:
    raw = read_bounded(store, f"{sid}/{SUMS}", MAX_SUMS)
    try:
        return raw, mf.parse_sha256sums(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise IntegrityError(f"remote {sid}/{SUMS} is not text", hint="the remote copy is damaged") from e


def header_of(store: RemoteStore, sid: BackupId) -> Manifest | Damaged:
    """The set's manifest header, read up to the snapshot index only (cheap: for listings and the
    choice of a set). Not checked against SHA256SUMS: a restore downloads the chosen chain and
    checks everything before using it."""
    head: list[bytes] = []
    total = 0
    marker = mf.FILES_MARKER.encode()
    whole = True
    try:
        with store.get_stream(f"{sid}/{MANIFEST}") as body:
            pending = b""
            while True:
                chunk = body.read(64 * 1024)
                if not chunk:
                    if pending:
                        head.append(pending)
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                stop = False
                for line in lines:
                    if line.startswith(marker):
                        whole, stop = False, True
                        break
                    head.append(line + b"\n")
                    total += len(line) + 1
                if stop:
                    break
                if total + len(pending) > MAX_HEAD:
                    return Damaged(sid, f"{MANIFEST} has no snapshot index within {MAX_HEAD} bytes")
    except IntegrityError as e:
        return Damaged(sid, e.message)
    text = b"".join(head)
    try:
        m = mf.loads(mf.header_text(text.decode("utf-8")) if not whole else text, where=f"{sid}/{MANIFEST}")
    except UnicodeDecodeError:
        return Damaged(sid, f"{MANIFEST} is not UTF-8 text")
    except IntegrityError as e:
        return Damaged(sid, e.message.removeprefix(f"{sid}/"))
    except BackupError as e:
        return Damaged(sid, f"{MANIFEST}: {e.message}")
    problem = chain.header_problem(m, sid.value)
    if problem is None:
        bad = [a.name for a in m.artifacts if not safe_name(a.name) or a.name in (MANIFEST, SUMS, SIG)]
        if bad:
            problem = f"its manifest names an artifact {bad[0]!r} that is no plain file name"
    if problem is not None:
        return Damaged(sid, problem)
    return dataclasses.replace(m, files=()) if m.files else m


def headers(store: RemoteStore, found: RemoteScan | None = None) -> tuple[list[Manifest], list[Damaged]]:
    """Headers of every complete remote set, oldest first, and the ones that cannot be read."""
    found = found or scan(store)
    good: list[Manifest] = []
    bad: list[Damaged] = []
    for sid in found.complete:
        h = header_of(store, sid)
        (bad if isinstance(h, Damaged) else good).append(h)  # type: ignore[arg-type]
    return good, bad


def sha256_stream(chunks: Iterator[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for c in chunks:
        h.update(c)
        n += len(c)
    return h.hexdigest(), n


def delete_set(store: RemoteStore, sid: BackupId) -> int:
    """Delete one remote set (what retention needs): its manifest first, so a set deleted half way
    is incomplete, never a complete set with objects missing; then everything else under ``<id>/``.
    Returns the number of objects deleted."""
    names = [o.key for o in store.list(f"{sid}/")]
    manifest = f"{sid}/{MANIFEST}"
    if manifest in names:
        store.delete([manifest])
    rest = [k for k in names if k != manifest]
    if rest:
        store.delete(rest)
    return len(names)
