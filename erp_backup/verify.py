"""Verification of a backup set (committed, or still ``.partial`` before commit).

quick: every artifact's size and SHA-256 against the manifest and ``SHA256SUMS``.
full:  quick + decompression of every artifact to its end, the tar structure,
       the SHA-256 of every file this set holds against the snapshot index,
       the key files present, the database dump complete (engine-specific check),
       and every set this one depends on still committed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from erp_backup.adapters import archive
from erp_backup.adapters.databases.base import adapter_for
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository
from erp_backup.core import chain
from erp_backup.core import manifest as mf
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import BackupError, CryptoError, IntegrityError
from erp_backup.core.models import Artifact, BackupId, EntryType, Manifest

if TYPE_CHECKING:
    from erp_backup.config import Settings
    from erp_backup.encryption import Session

Decryptor = Callable[[IO[bytes]], IO[bytes]] | None
NO_KEY_LEVEL = "quick: encrypted, no private key on this host"


@dataclass
class _Findings:
    """What a verification finds as it goes (private, mutable); frozen into a VerifyReport."""

    set_id: str
    level: str
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0
    own_only: set[str] = field(default_factory=set)  # problems that do not concern the sets depending on this one

    def freeze(self) -> VerifyReport:
        return VerifyReport(self.set_id, self.level, tuple(self.problems), self.files_checked, self.bytes_checked,
                            tuple(p for p in self.problems if p not in self.own_only))


@dataclass(frozen=True)
class VerifyReport:
    set_id: str
    level: str
    problems: tuple[str, ...] = ()
    files_checked: int = 0
    bytes_checked: int = 0
    # the problems that also break every set whose restore reads this one (its manifest, SHA256SUMS,
    # files archive); the others (database dump, key files, its own chain) concern this set only
    shared_problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> str:
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"verification of {self.set_id} failed: {self.problems[0]}{more}" if self.problems else ""

    def raise_if_bad(self) -> None:
        if self.problems:
            raise IntegrityError(self.message(), hint="do not rely on this set; run a new full backup and "
                                 "restore from another set if needed")


def _digest_problem(sid: str, name: str, digest: str, expected: str) -> str | None:
    if digest == expected:
        return None
    return f"{sid}/{name}: checksum mismatch (sha256 {digest[:12]}…, expected {expected[:12]}…)"


def _read_sums(set_dir: Path, sid: str, rep: _Findings) -> dict[str, str]:
    try:
        return mf.parse_sha256sums((set_dir / SUMS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        rep.problems.append(f"{sid}/{SUMS} is missing")
    except (BackupError, UnicodeDecodeError) as e:
        rep.problems.append(f"{sid}/{SUMS}: {e.message if isinstance(e, BackupError) else 'not text'}")
    except OSError as e:
        rep.problems.append(f"{sid}/{SUMS}: cannot read it ({e.strerror})")
    return {}


def _check_artifact(set_dir: Path, sid: str, a: Artifact, sums: dict[str, str], rep: _Findings, *,
                    hash_now: bool) -> None:
    p = set_dir / a.name
    if not p.is_file():
        rep.problems.append(f"{sid}/{a.name} is missing")
        return
    if sums.get(a.name) != a.sha256:
        rep.problems.append(f"{sid}/{a.name}: {SUMS} and the manifest disagree")
    size = p.stat().st_size
    if size != a.size:
        rep.problems.append(f"{sid}/{a.name}: size {size} bytes, manifest says {a.size}")
        return
    if hash_now:
        rep.bytes_checked += size
        problem = _digest_problem(sid, a.name, archive.file_digest(p), a.sha256)
        if problem:
            rep.problems.append(problem)


def _check_artifacts(set_dir: Path, m: Manifest, rep: _Findings, *, hash_now: bool,
                     hash_roles: frozenset[str] = frozenset()) -> None:
    """Presence, size, SHA256SUMS agreement; with ``hash_now`` (or for ``hash_roles``) also the
    SHA-256 (quick level). The full level hashes while it decompresses, in the same pass."""
    sid = m.id.value
    sums = _read_sums(set_dir, sid, rep)
    if sums:
        if MANIFEST not in sums:
            rep.problems.append(f"{sid}/{SUMS} does not list {MANIFEST}")
        elif archive.file_digest(set_dir / MANIFEST) != sums[MANIFEST]:
            rep.problems.append(f"{sid}/{MANIFEST}: checksum mismatch with {SUMS} (the manifest is damaged)")
        for name in sorted(set(sums) - {a.name for a in m.artifacts} - {MANIFEST}):
            rep.problems.append(f"{sid}/{SUMS} lists {name!r}, which is not an artifact of the set")
    for a in m.artifacts:
        before = len(rep.problems)
        _check_artifact(set_dir, sid, a, sums, rep, hash_now=hash_now or a.role in hash_roles)
        if a.role == "database":
            rep.own_only.update(rep.problems[before:])


def artifacts_problem(repo: LocalRepository, m: Manifest, roles: frozenset[str] | None = None) -> str | None:
    """The quick level for the artifacts of ``m`` a restore reads (``roles``; None: all): present,
    the size and SHA-256 the manifest and ``SHA256SUMS`` give. The first problem, or None. (The
    manifest itself is checked by ``LocalRepository.scan``/``read_header``.)"""
    rep = _Findings(m.id.value, "quick")
    sums = _read_sums(repo.set_dir(m.id), m.id.value, rep)
    for a in m.artifacts:
        if roles is None or a.role in roles:
            _check_artifact(repo.set_dir(m.id), m.id.value, a, sums, rep, hash_now=True)
    return rep.problems[0] if rep.problems else None


def _drain_and_check(r: archive.DecompressingReader, sid: str, name: str, expected: str, rep: _Findings) -> None:
    while r.read(archive.CHUNK):
        pass
    rep.bytes_checked += r.compressed_size
    problem = _digest_problem(sid, name, r.hexdigest(), expected)
    if problem:
        rep.problems.append(problem)


def _check_files_archive(set_dir: Path, m: Manifest, rep: _Findings, decryptor: Decryptor = None) -> None:
    sid = m.id.value
    art = m.artifact("files")
    held = {e.path: e for e in m.files if e.type is EntryType.FILE and e.holder == sid}
    if art is None:
        if held:
            rep.problems.append(f"{sid}: the manifest says this set holds {len(held)} files but has no archive")
        return
    seen: set[str] = set()
    where = f"{sid}/{art.name}"
    try:
        with archive.open_decompressed(set_dir / art.name, decryptor=decryptor) as r:
            tar = archive.TarStream(r, where)
            for member in tar.members():
                e = held.get(member.name)
                if e is None or not member.isfile():
                    continue
                h = hashlib.sha256()
                while chunk := tar.read(archive.CHUNK):
                    h.update(chunk)
                seen.add(member.name)
                rep.files_checked += 1
                if h.hexdigest() != e.sha256:
                    rep.problems.append(f"{where}: content of {member.name} does not match the snapshot index")
            _drain_and_check(r, sid, art.name, art.sha256, rep)
    except (BackupError, OSError) as e:
        rep.problems.append(f"{where}: {e}")
        return
    missing = sorted(set(held) - seen)
    if missing:
        rep.problems.append(f"{sid}/{art.name}: {len(missing)} file(s) of the index are not in the archive, "
                            f"e.g. {missing[0]}")


def _check_database(set_dir: Path, m: Manifest, rep: _Findings, decryptor: Decryptor = None) -> None:
    art = m.artifact("database")
    if m.database is None or art is None:
        return
    with LocalRepository(set_dir.parent).scratch("verify") as tmp:
        try:
            adapter = adapter_for(DatabaseUrl(m.database.engine, m.database.database))
            with archive.open_decompressed(set_dir / art.name, decryptor=decryptor) as r:
                problems = adapter.verify_dump(iter(lambda: r.read(archive.CHUNK), b""), m.database, Path(tmp))
                _drain_and_check(r, m.id.value, art.name, art.sha256, rep)
        except BackupError as e:
            problems = [str(e)]
    found = [f"{m.id}/{art.name}: {p}" for p in problems]
    rep.problems.extend(found)
    rep.own_only.update(found)


@contextmanager
def crypto_session(settings: Settings | None, *, restore: bool) -> Iterator[Session | None]:
    """A GPG session when ``settings`` sign sets (signatures to check) or ``restore`` (encrypted
    sets to decrypt); None without settings."""
    if settings is None or (settings.encryption is None and not restore):
        yield None
        return
    from erp_backup import encryption

    with encryption.session(settings, signing=True, restore=restore) as s:
        yield s


def _unchanged_since(set_dir: Path, m: Manifest, stamp: tuple[int, int, int, int] | None) -> bool:
    """Whether the files artifact is still the file the backup's read-back hashed (same inode, size,
    mtime and ctime: any write since, by anyone, changes the ctime)."""
    art = m.artifact("files")
    if art is None or stamp is None:
        return False
    try:
        st = os.lstat(set_dir / art.name)
    except OSError:
        return False
    return archive.file_stamp(st) == stamp


def verify_dir(set_dir: Path, m: Manifest, *, level: str = "full", key_files: list[str] | None = None,
               repo: LocalRepository | None = None, settings: Settings | None = None,
               crypto: Session | None = None, without_key: str = "quick",
               files_read_back: str = "", key_files_found: tuple[str, ...] | None = None,
               files_stamp: tuple[int, int, int, int] | None = None) -> VerifyReport:
    """Verify one set directory. With ``settings`` (or an open ``crypto`` session) and ``[encryption]
    sign = true`` the signature of ``SHA256SUMS`` is checked first. An encrypted set needs the
    private key for the full level; without it, ``without_key = "quick"`` verifies at the quick
    level (``NO_KEY_LEVEL``; the backup host holds no private key), ``"raise"`` fails.

    ``files_read_back``: the files archive was decompressed and parsed while it was written
    (``adapters/archive/selfcheck.py``, the backup's own verification): the full level then does not
    decompress it and re-hash every file again. ``"stream"``: the check saw the compressed bytes on
    their way to gpg, so the artifact's SHA-256 is still checked on disk; ``"disk"``: the check read
    the file itself back and computed the very SHA-256 that ``SHA256SUMS`` records, so nothing is
    left to read.

    ``key_files_found``: the key files the index holds, when the caller knows (the backup that
    just wrote it): the index is then not read again for them (nor, read back, for the count of
    the files this set holds: ``stats.files_changed``)."""
    if level == "none":
        return _Findings(m.id.value, level).freeze()
    if crypto is None and settings is not None:
        full_encrypted = level == "full" and any(a.encryption for a in m.artifacts)
        with crypto_session(settings, restore=full_encrypted) as s:
            return verify_dir(set_dir, m, level=level, key_files=key_files, repo=repo, crypto=s,
                              without_key=without_key, files_read_back=files_read_back, files_stamp=files_stamp,
                              key_files_found=key_files_found)
    decryptor: Decryptor = None
    if level == "full" and crypto is not None and any(a.encryption for a in m.artifacts):
        if without_key == "quick" and not crypto.can_decrypt(m):
            level = NO_KEY_LEVEL
        else:
            decryptor = crypto.decryptor(m, purpose="verify")
    elif level == "full" and any(a.encryption for a in m.artifacts):
        if without_key == "quick":
            level = NO_KEY_LEVEL
        else:
            raise CryptoError(f"cannot verify {m.id}: it is encrypted and no GPG key is configured",
                              hint="configure [encryption] (README: Encryption), or `erp-backup verify --quick`")
    rep = _Findings(m.id.value, level)
    if crypto is not None and crypto.config is not None and crypto.config.sign:
        try:
            crypto.check_signature(set_dir, m.id.value)
        except BackupError as e:
            rep.problems.append(str(e))
            return rep.freeze()
    if files_read_back == "disk" and not _unchanged_since(set_dir, m, files_stamp):
        files_read_back = "stream"  # written to since its SHA-256 was read back: hash it again
    read_back = files_read_back and level == "full"
    _check_artifacts(set_dir, m, rep, hash_now=level != "full",
                     hash_roles=frozenset({"files"}) if read_back and files_read_back != "disk" else frozenset())
    if level != "full" or rep.problems:
        return rep.freeze()
    if read_back:
        if key_files_found is not None:
            rep.files_checked += m.stats.files_changed  # the files this set archived: the ones it holds
        else:
            rep.files_checked += sum(1 for e in m.files if e.type is EntryType.FILE and e.holder == m.id.value)
        if files_read_back == "disk":  # read back from the file and hashed by the backup's own check
            rep.bytes_checked += sum(a.size for a in m.artifacts if a.role == "files")
    else:
        _check_files_archive(set_dir, m, rep, decryptor)
    _check_database(set_dir, m, rep, decryptor)
    wanted = {k.strip("/") for k in key_files or []}
    index = set(key_files_found) if key_files_found is not None else \
        {e.path for e in m.files if e.path in wanted} if wanted else set()
    own = len(rep.problems)
    for k in key_files or []:
        if k.strip("/") not in index:
            rep.problems.append(f"{m.id}: key file {k} is not in the backup")
    if repo is not None:
        for dep in m.depends_on:
            if not repo.exists(dep):
                rep.problems.append(f"{m.id}: needs set {dep}, which is no longer in {repo.root}")
    rep.own_only.update(rep.problems[own:])
    return rep.freeze()


def _verify_own(repo: LocalRepository, set_id: str, level: str, key_files: list[str] | None,
                crypto: Session | None = None) -> tuple[VerifyReport, tuple[BackupId, ...]]:
    """The set by itself (not the sets it needs), and the sets its restore reads."""
    try:
        m = repo.read_manifest(BackupId(set_id))
    except BackupError as e:
        problem = f"{set_id}/{MANIFEST}: {e.message}" if repo.exists(BackupId(set_id)) \
            else f"{set_id}/{MANIFEST} is missing"
        return VerifyReport(set_id, level, (problem,), shared_problems=(problem,)), ()
    rep = verify_dir(repo.set_dir(m.id), m, level=level, key_files=key_files, repo=repo, crypto=crypto,
                     without_key="raise")
    inconsistent = chain.header_problem(m, set_id)
    if inconsistent is not None:
        problem = f"{set_id}/{MANIFEST}: {inconsistent}"
        rep = replace(rep, problems=(problem, *rep.problems), shared_problems=(problem, *rep.shared_problems))
    return rep, m.depends_on


def verify_committed(repo: LocalRepository, set_id: str, *, level: str = "full",
                     key_files: list[str] | None = None, settings: Settings | None = None) -> VerifyReport:
    """One committed set and, through ``verify_sets``, every set its restore reads."""
    return verify_sets(repo, [set_id], level=level, key_files=key_files, settings=settings)[0]


def verify_sets(repo: LocalRepository, set_ids: list[str], *, level: str = "full",
                key_files: list[str] | None = None, settings: Settings | None = None) -> list[VerifyReport]:
    """``_verify_sets`` in one GPG session (``settings``: signatures checked, encrypted sets
    decrypted at the full level; an encrypted set without its private key fails in one line)."""
    decrypt = level == "full" and settings is not None and (settings.encryption is not None
                                                            or _any_encrypted(repo, set_ids))
    ctx = crypto_session(settings, restore=decrypt) if settings is not None else nullcontext()
    with ctx as session:
        return _verify_sets(repo, set_ids, level=level, key_files=key_files, crypto=session)


def _any_encrypted(repo: LocalRepository, set_ids: list[str]) -> bool:
    for sid in set_ids:
        try:
            found = repo.inspect(BackupId(sid))
        except BackupError:
            continue
        if isinstance(found, Manifest) and any(a.encryption for a in found.artifacts):
            return True
    return False


def _verify_sets(repo: LocalRepository, set_ids: list[str], *, level: str, key_files: list[str] | None,
                 crypto: Session | None) -> list[VerifyReport]:
    """A report per set of ``set_ids``. A set verifies only if every set its restore reads (its
    ``depends_on``) holds what it needs: a broken member is named ("needs X, which failed: ...").
    Each set is verified once per call, however many sets need it."""
    own: dict[str, tuple[VerifyReport, tuple[BackupId, ...]]] = {}

    def checked(sid: str) -> tuple[VerifyReport, tuple[BackupId, ...]]:
        if sid not in own:
            own[sid] = _verify_own(repo, sid, level, key_files, crypto)
        return own[sid]

    out = []
    for sid in set_ids:
        rep, needs = checked(sid)
        chain_problems = []
        for dep in needs:
            if not repo.exists(dep):
                gone = f"{sid}: needs set {dep}, which is no longer in {repo.root}"
                if gone not in rep.problems:  # the full level of verify_dir names it already
                    chain_problems.append(gone)
                continue
            dep_rep, _ = checked(dep.value)
            if dep_rep.shared_problems:
                chain_problems.append(f"{sid}: needs {dep}, which failed: {dep_rep.shared_problems[0]}")
        if chain_problems:
            rep = replace(rep, problems=rep.problems + tuple(chain_problems))
        out.append(rep)
    _record(repo, out)
    return out


def _record(repo: LocalRepository, reports: list[VerifyReport]) -> None:
    """The outcome next to each set (``erp_backup.verdicts``: retention reads it). Best effort: a
    user who may read but not write the backup directory can still verify."""
    from erp_backup import verdicts

    for r in reports:
        if r.level != "none" and repo.set_dir(r.set_id).is_dir():
            try:
                verdicts.record(repo.root, r.set_id, ok=r.ok, level=r.level, problems=r.problems)
            except OSError:
                pass


class VerifyFailed(IntegrityError):
    """Several sets failed verification: the message names every one; ``rows`` is the summary table
    (every set, passed or not) so that the caller can still print it."""

    def __init__(self, rows: list[dict[str, Any]], bad: list[VerifyReport]) -> None:
        if len(bad) == 1:
            super().__init__(bad[0].message(), hint="do not rely on this set; run a new full backup and "
                             "restore from another set if needed")
        else:
            super().__init__(f"verification failed for {len(bad)} sets: "
                             + "; ".join(f"{r.set_id}: {r.problems[0]}" for r in bad),
                             hint="do not rely on these sets; run a new full backup and restore from another set "
                             "if needed")
        self.rows = rows
        self.bad = bad

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (a Prefect state may carry it)
        return (VerifyFailed, (self.rows, self.bad))
