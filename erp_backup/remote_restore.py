"""``restore --from-remote``: restore on a machine with nothing but the config, the blocks and the key.

1. The remote listing and the manifest headers of the complete sets choose the set (``--backup ID``,
   or the newest finished at or before ``--at``), exactly as a local restore chooses.
2. The set and every set its restore reads are downloaded into a private scratch directory
   (``erp-backup-remote-<pid>-<random>``, 0700, under ``--scratch-dir`` or ``$TMPDIR``), laid out as a
   local repository: each object to exactly the size its manifest records and checked against
   ``SHA256SUMS`` (and the signature, when configured) as it arrives, each set renamed into place only
   when whole. A set that fails is passed over (``--at``: the next older one is tried, with a note)
   or refused (``--backup``).
3. The existing restore (``erp_backup.restore``: preflight, safe target, database) runs on that
   scratch repository. The scratch directory is removed whatever happens; one left by a killed run
   is removed by the next one. The configured local backup directory is never read or created.

The store is untrusted: only keys built from validated set ids and artifact names the manifest
lists (plain names) are read; nothing else in the bucket is opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from erp_backup import remote_sets
from erp_backup import restore as restorer
from erp_backup.adapters.storage.base import RemoteStore
from erp_backup.adapters.storage.local import DIR_MODE, FILE_MODE, MANIFEST, SUMS, LocalRepository
from erp_backup.config import Settings
from erp_backup.core import chain
from erp_backup.core.chain import Damaged
from erp_backup.core.errors import ChainError, ConfigError, IntegrityError, RestoreError, StorageError
from erp_backup.core.models import BackupId, Manifest
from erp_backup.remote_verify import SignatureCheck, signature_checker

SCRATCH_PREFIX = "erp-backup-remote-"
_SCRATCH_RE = re.compile(re.escape(SCRATCH_PREFIX) + r"(?P<pid>[0-9]+)-[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Fetched:
    """The chosen set, downloaded with its chain into ``scratch`` (a local repository layout)."""

    scratch: str
    set_id: str
    sets: tuple[str, ...]
    bytes: int
    notes: tuple[str, ...] = ()


def clean_leftovers(parent: Path) -> list[str]:
    """Scratch directories in ``parent`` whose process is gone (killed runs)."""
    from erp_backup.adapters.storage.local import _owner_gone

    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        m = _SCRATCH_RE.fullmatch(name)
        path = parent / name
        if m is None or path.is_symlink() or not path.is_dir():
            continue
        try:
            if path.stat().st_uid != os.geteuid():
                continue
            if _owner_gone(int(m["pid"]), path.stat().st_mtime):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def scratch_dir(parent: str | Path | None = None) -> Iterator[Path]:
    """A private (0700) scratch directory, removed on exit whatever happens."""
    base = Path(parent) if parent else Path(tempfile.gettempdir())
    if not base.is_dir():
        raise ConfigError(f"scratch directory {base} does not exist or is not a directory",
                          hint="give an existing directory with enough space for the chain: --scratch-dir DIR")
    clean_leftovers(base)
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=base))
    except OSError as e:
        raise StorageError(f"cannot create a scratch directory in {base}: {e.strerror}",
                           hint="give a writable directory: --scratch-dir DIR") from e
    try:
        os.chmod(path, DIR_MODE)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_object(store: RemoteStore, key: str, dest: Path, size: int | None, limit: int) -> str:
    """Download ``key`` to ``dest`` (0600, new): exactly ``size`` bytes if given, else at most
    ``limit``. Returns its SHA-256."""
    import hashlib

    h = hashlib.sha256()
    chunks = remote_sets.stream_bounded(store, key, size) if size is not None else \
        iter([remote_sets.read_bounded(store, key, limit)])
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
    except OSError as e:
        raise StorageError(f"cannot write {dest}: {e.strerror}",
                           hint="free space where the chain is downloaded, or give another --scratch-dir") from e
    finally:
        os.close(fd)
    return h.hexdigest()


def download_set(check_signature: SignatureCheck, store: RemoteStore, sid: BackupId, repo: LocalRepository,
                 objects: dict[str, int]) -> int:
    """Download one complete remote set into ``repo`` (checked as it arrives: the signature before
    anything but ``SHA256SUMS`` and its signature is read); the bytes read."""
    for name in (MANIFEST, SUMS):
        if name not in objects:
            raise IntegrityError(f"remote set {sid}: {name} is missing remotely", hint="pick another set")
    final = repo.set_dir(sid)
    if final.is_dir():
        return 0  # fetched already (a chain member shared with another candidate)
    work = repo.root / f"{sid}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=DIR_MODE)
    raw, sums = remote_sets.read_sums(store, sid)
    total = len(raw)
    (work / SUMS).write_bytes(raw)
    os.chmod(work / SUMS, FILE_MODE)
    sig = None
    if remote_sets.SIG in objects:
        _write_object(store, f"{sid}/{remote_sets.SIG}", work / remote_sets.SIG, None, 1 << 16)
        sig = (work / remote_sets.SIG).read_bytes()
    problem = check_signature(sid, raw, sig)
    if problem:
        raise IntegrityError(f"remote set {sid}: {problem}", hint="do not restore it: pick another set")
    if MANIFEST not in sums:
        raise IntegrityError(f"remote set {sid}: {SUMS} does not list {MANIFEST}", hint="pick another set")
    if objects[MANIFEST] > remote_sets.MAX_MANIFEST:
        raise IntegrityError(f"remote set {sid}: {MANIFEST} is {objects[MANIFEST]} bytes, too large to be one",
                             hint="pick another set")
    digest = _write_object(store, f"{sid}/{MANIFEST}", work / MANIFEST, objects[MANIFEST], 0)
    total += objects[MANIFEST]
    if digest != sums[MANIFEST]:
        raise IntegrityError(f"remote set {sid}: {MANIFEST} does not match its checksum in {SUMS}",
                             hint="the remote copy was tampered with or damaged; pick another set")
    head = remote_sets.header_of(store, sid)  # the same checks as a listing, on what was fetched
    if isinstance(head, Damaged):
        raise IntegrityError(f"remote set {sid} is damaged: {head.reason}", hint="pick another set")
    for a in head.artifacts:
        if sums.get(a.name) != a.sha256:
            raise IntegrityError(f"remote set {sid}: {SUMS} and {MANIFEST} disagree on {a.name}",
                                 hint="pick another set")
        if a.name not in objects:
            raise IntegrityError(f"remote set {sid}: {a.name} is missing remotely", hint="pick another set")
        if objects[a.name] != a.size:
            raise IntegrityError(f"remote set {sid}: {a.name} has {objects[a.name]} bytes remotely, its manifest "
                                 f"records {a.size}", hint="the remote copy is damaged; pick another set")
        got = _write_object(store, f"{sid}/{a.name}", work / a.name, a.size, 0)
        total += a.size
        if got != a.sha256:
            raise IntegrityError(f"remote set {sid}: {a.name} does not match its checksum in {SUMS}",
                                 hint="the remote copy was tampered with or damaged; pick another set")
    os.rename(work, final)
    found = repo.inspect(sid)
    if not isinstance(found, Manifest):
        reason = found.reason if isinstance(found, Damaged) else "it vanished"
        shutil.rmtree(final, ignore_errors=True)
        raise IntegrityError(f"remote set {sid} is damaged: {reason}", hint="pick another set")
    return total


def _check_space(repo: LocalRepository, objects: list[dict[str, int]]) -> None:
    """Refuse before downloading what the scratch directory's file system cannot hold."""
    need = sum(sum(o.values()) for o in objects)
    free = shutil.disk_usage(repo.root).free
    if need > free:
        raise StorageError(f"the chain to restore needs {need} bytes in {repo.root.parent}, {free} are free",
                           hint="give a directory with more space: --scratch-dir DIR")


def precheck(req: restorer.RestoreRequest, scratch_parent: str | Path | None = None) -> None:
    """The checks of a restore that need no set, before anything is downloaded."""
    if req.target_dir is None and not req.target_database:
        raise ConfigError("nothing to restore into", hint="give --target-dir and/or --target-database")
    if req.backup_id is None and req.at is None:
        raise ConfigError("--from-remote needs --backup ID or --at TIME",
                          hint="see `erp-backup list --remote` for the remote sets")
    if req.backup_id is not None:
        BackupId(req.backup_id)
    if req.target_dir is not None:
        t = Path(os.path.abspath(req.target_dir))
        if t.exists() and t.is_dir() and not t.is_symlink() and any(t.iterdir()) and not req.force:
            raise RestoreError(f"target directory {t} is not empty",
                               hint="restore into a new directory, or pass --force to write over it")
        scratch = Path(os.path.realpath(scratch_parent or tempfile.gettempdir()))
        real = Path(os.path.realpath(t))
        if scratch == real or real in scratch.parents:
            raise ConfigError(f"the scratch directory {scratch} lies inside the target {t}",
                              hint="give --scratch-dir outside the target directory")


def live_guard(settings: Settings, req: restorer.RestoreRequest) -> None:
    """The live database is not written without ``--yes``: said before anything is downloaded."""
    live = settings.live_database()
    if live is None or req.yes or not req.target_database:
        return
    target = restorer.resolve_target_database(req.target_database, live)
    if target is not None and restorer._same_database(target, live):
        raise RestoreError(f"{target.redacted()} is the live database",
                           hint="pass --yes to overwrite the live database, or restore into another one")


def fetch(settings: Settings, store: RemoteStore, req: restorer.RestoreRequest, scratch: Path) -> Fetched:
    """Choose the set as the request says and download its chain into ``scratch``."""
    precheck(req, scratch.parent)
    live_guard(settings, req)
    listing = remote_sets.scan(store)
    good, damaged = remote_sets.headers(store, listing)
    if not good and not damaged:
        raise ChainError(f"there is no complete backup set in {store.describe()}",
                         hint="check [remote] block and prefix; `erp-backup list --remote` shows what is there")
    with signature_checker(settings) as check_signature:
        return _fetch(check_signature, store, req, LocalRepository(scratch), listing, good, damaged)


def _fetch(check_signature: SignatureCheck, store: RemoteStore, req: restorer.RestoreRequest, repo: LocalRepository,
           listing: remote_sets.RemoteScan, good: list[Manifest], damaged: list[Damaged]) -> Fetched:
    by_id = {m.id: m for m in good}
    invalid: dict[BackupId, str] = {}
    total = 0
    notes: tuple[str, ...]
    while True:
        if req.backup_id is not None:
            bid = BackupId(req.backup_id)
            if bid not in by_id:
                bad = next((d for d in damaged if d.id == bid), None)
                if bad is not None:
                    raise RestoreError(f"remote set {bid} is damaged: {bad.reason}", hint="pick another set")
                raise RestoreError(f"backup set {bid} is not a complete set in {store.describe()}",
                                   hint="see `erp-backup list --remote`")
            problem = chain.chain_problem(by_id[bid], list(by_id), damaged)
            if problem is not None:
                raise ChainError(f"remote set {bid} cannot be restored: it {problem}", hint="pick another set")
            chosen, notes = by_id[bid], ()
        else:
            sel = chain.select_for_time(good, req.at, damaged=damaged, invalid=invalid)
            chosen = sel.chosen
            notes = tuple(f"skipped {s.id}: it {s.reason}" for s in sel.skipped)
        members = [*sorted(chosen.depends_on), chosen.id]
        _check_space(repo, [listing.objects.get(m.value, {}) for m in members if not repo.set_dir(m).is_dir()])
        try:
            for sid in members:
                total += download_set(check_signature, store, sid, repo, listing.objects[sid.value])
        except IntegrityError as e:
            if req.backup_id is not None:
                raise
            invalid[sid] = e.message.removeprefix(f"remote set {sid}: ")
            continue
        if notes:
            notes += (f"restoring {chosen.id} (finished {chosen.finished_at:%Y-%m-%dT%H:%M:%SZ}), "
                      "the newest remote set that can be restored whole",)
        return Fetched(str(repo.root), chosen.id.value, tuple(m.value for m in members), total, notes)


def restore_fetched(settings: Settings, fetched: Fetched, req: restorer.RestoreRequest) -> restorer.RestoreReport:
    """The existing restore, on the downloaded chain."""
    repo = LocalRepository(Path(fetched.scratch))
    live = settings.live_database()
    plan = restorer.preflight(repo, dataclasses.replace(req, backup_id=fetched.set_id, at=None), live=live,
                              settings=settings)
    plan = dataclasses.replace(plan, notes=fetched.notes + plan.notes)
    return restorer.execute(repo, plan, restorer.target_database_of(plan, live), settings=settings)


def restore_from_remote(settings: Settings, store: RemoteStore, req: restorer.RestoreRequest,
                        scratch_parent: str | Path | None = None) -> restorer.RestoreReport:
    """Fetch and restore (no Prefect): the plain variant of the CLI's flow, and the tests'."""
    precheck(req, scratch_parent)
    with scratch_dir(scratch_parent) as scratch:
        fetched = fetch(settings, store, req, scratch)
        return restore_fetched(settings, fetched, req)

