"""Verification of a backup set (committed, or still ``.partial`` before commit).

quick: every artifact's size and SHA-256 against the manifest and ``SHA256SUMS``.
full:  quick + decompression of every artifact to its end, the tar structure,
       the SHA-256 of every file this set holds against the snapshot index,
       the key files present, the database dump complete (engine-specific check),
       and every set this one depends on still committed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from erp_backup.adapters import archive
from erp_backup.adapters.databases.base import adapter_for
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository
from erp_backup.core import manifest as mf
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import BackupError, IntegrityError
from erp_backup.core.models import EntryType, Manifest


@dataclass
class _Findings:
    """What a verification finds as it goes (private, mutable); frozen into a VerifyReport."""

    set_id: str
    level: str
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0

    def freeze(self) -> VerifyReport:
        return VerifyReport(self.set_id, self.level, tuple(self.problems), self.files_checked, self.bytes_checked)


@dataclass(frozen=True)
class VerifyReport:
    set_id: str
    level: str
    problems: tuple[str, ...] = ()
    files_checked: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise IntegrityError(f"verification of {self.set_id} failed: {self.problems[0]}{more}",
                                 hint="do not rely on this set; run a new full backup and "
                                 "restore from another set if needed")


def _digest_problem(sid: str, name: str, digest: str, expected: str) -> str | None:
    if digest == expected:
        return None
    return f"{sid}/{name}: checksum mismatch (sha256 {digest[:12]}…, expected {expected[:12]}…)"


def _check_artifacts(set_dir: Path, m: Manifest, rep: _Findings, *, hash_now: bool) -> None:
    """Presence, size, SHA256SUMS agreement; with ``hash_now`` also the SHA-256 (quick level).
    The full level hashes while it decompresses, in the same pass."""
    sid = m.id.value
    try:
        sums = mf.parse_sha256sums((set_dir / SUMS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        rep.problems.append(f"{sid}/{SUMS} is missing")
        sums = {}
    except BackupError as e:
        rep.problems.append(f"{sid}/{SUMS}: {e.message}")
        sums = {}
    if sums:
        if MANIFEST not in sums:
            rep.problems.append(f"{sid}/{SUMS} does not list {MANIFEST}")
        elif archive.file_digest(set_dir / MANIFEST) != sums[MANIFEST]:
            rep.problems.append(f"{sid}/{MANIFEST}: checksum mismatch with {SUMS} (the manifest is damaged)")
        for name in sorted(set(sums) - {a.name for a in m.artifacts} - {MANIFEST}):
            rep.problems.append(f"{sid}/{SUMS} lists {name!r}, which is not an artifact of the set")
    for a in m.artifacts:
        p = set_dir / a.name
        if not p.is_file():
            rep.problems.append(f"{sid}/{a.name} is missing")
            continue
        if sums.get(a.name) != a.sha256:
            rep.problems.append(f"{sid}/{a.name}: {SUMS} and the manifest disagree")
        size = p.stat().st_size
        if size != a.size:
            rep.problems.append(f"{sid}/{a.name}: size {size} bytes, manifest says {a.size}")
            continue
        if hash_now:
            rep.bytes_checked += size
            problem = _digest_problem(sid, a.name, archive.file_digest(p), a.sha256)
            if problem:
                rep.problems.append(problem)


def _drain_and_check(r: archive.DecompressingReader, sid: str, name: str, expected: str, rep: _Findings) -> None:
    while r.read(archive.CHUNK):
        pass
    rep.bytes_checked += r.compressed_size
    problem = _digest_problem(sid, name, r.hexdigest(), expected)
    if problem:
        rep.problems.append(problem)


def _check_files_archive(set_dir: Path, m: Manifest, rep: _Findings) -> None:
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
        with archive.open_decompressed(set_dir / art.name) as r:
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


def _check_database(set_dir: Path, m: Manifest, rep: _Findings) -> None:
    art = m.artifact("database")
    if m.database is None or art is None:
        return
    with LocalRepository(set_dir.parent).scratch("verify") as tmp:
        try:
            adapter = adapter_for(DatabaseUrl(m.database.engine, m.database.database))
            with archive.open_decompressed(set_dir / art.name) as r:
                problems = adapter.verify_dump(iter(lambda: r.read(archive.CHUNK), b""), m.database, Path(tmp))
                _drain_and_check(r, m.id.value, art.name, art.sha256, rep)
        except BackupError as e:
            problems = [str(e)]
    rep.problems.extend(f"{m.id}/{art.name}: {p}" for p in problems)


def verify_dir(set_dir: Path, m: Manifest, *, level: str = "full", key_files: list[str] | None = None,
               repo: LocalRepository | None = None) -> VerifyReport:
    rep = _Findings(m.id.value, level)
    if level == "none":
        return rep.freeze()
    _check_artifacts(set_dir, m, rep, hash_now=level == "quick")
    if level == "quick" or rep.problems:
        return rep.freeze()
    _check_files_archive(set_dir, m, rep)
    _check_database(set_dir, m, rep)
    index = {e.path for e in m.files}
    for k in key_files or []:
        if k.strip("/") not in index:
            rep.problems.append(f"{m.id}: key file {k} is not in the backup")
    if repo is not None:
        for dep in m.depends_on:
            if not repo.exists(dep):
                rep.problems.append(f"{m.id}: needs set {dep}, which is no longer in {repo.root}")
    return rep.freeze()


def verify_committed(repo: LocalRepository, set_id: str, *, level: str = "full",
                     key_files: list[str] | None = None) -> VerifyReport:
    from erp_backup.core.models import BackupId

    try:
        m = repo.read_manifest(BackupId(set_id))
    except BackupError as e:
        return VerifyReport(set_id, level, (f"{set_id}/{MANIFEST}: {e}",))
    return verify_dir(repo.set_dir(m.id), m, level=level, key_files=key_files, repo=repo)


class VerifyFailed(IntegrityError):
    """Several sets failed verification: the message names every one; ``rows`` is the summary table
    (every set, passed or not) so that the caller can still print it."""

    def __init__(self, rows: list[dict[str, Any]], bad: list[VerifyReport]) -> None:
        super().__init__(f"verification failed for {len(bad)} sets: "
                         + "; ".join(f"{r.set_id}: {r.problems[0]}" for r in bad),
                         hint="do not rely on these sets; run a new full backup and restore from another set "
                         "if needed")
        self.rows = rows
