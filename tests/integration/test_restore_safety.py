"""Restore never writes outside its target, refuses to write over things unasked, and guards the live
database. The malicious sets are hand-made (manifest module + tarfile + zstd) with consistent
SHA256SUMS, as an attacker with write access to the backup directory would make them."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import tarfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.backup import BackupResult
from erp_backup.config import Settings
from erp_backup.core import manifest as mf
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import BackupError, RestoreError, UnsafeArchiveError
from erp_backup.core.models import Artifact, BackupId, BackupKind, EntryType, FileEntry, Manifest
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from tests.conftest import ERROR_PREFIX, listing, make_settings, make_small_project, run_cli, write_config

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
MTIME = 1_700_000_000_000_000_000


@pytest.fixture
def outside() -> Iterator[Path]:
    """A unique directory outside every test directory (under /tmp), empty; removed afterwards."""
    d = Path("/tmp") / f"erpb-outside-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    try:
        yield d
    finally:
        for p in sorted(d.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
        d.rmdir()


def fentry(path: str, data: bytes, holder: str) -> FileEntry:
    return FileEntry(path=path, type=EntryType.FILE, mode=0o644, mtime_ns=MTIME, size=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), holder=holder)


def lentry(path: str, target: str) -> FileEntry:
    return FileEntry(path=path, type=EntryType.SYMLINK, mode=0o777, mtime_ns=MTIME, target=target)


def dentry(path: str) -> FileEntry:
    return FileEntry(path=path, type=EntryType.DIR, mode=0o755, mtime_ns=MTIME)


def tar_bytes(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """(name, data, kind) with kind 'file' | 'symlink:TARGET' | 'hardlink:TARGET' | 'dir'."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tf:
        for name, data, kind in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = MTIME // 10**9
            if kind == "file":
                ti.size = len(data or b"")
                tf.addfile(ti, io.BytesIO(data or b""))
                continue
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
            else:
                how, _, target = kind.partition(":")
                ti.type = tarfile.SYMTYPE if how == "symlink" else tarfile.LNKTYPE
                ti.linkname = target
            tf.addfile(ti)
    return out.getvalue()


def craft_set(repo_root: Path, files: list[FileEntry], members: list[tuple[str, bytes | None, str]],
              when: datetime = T0) -> str:
    """Write a committed set by hand: files.tar.zst, manifest.json, SHA256SUMS (all consistent)."""
    sid = BackupId.make(when, BackupKind.FULL)
    d = repo_root / sid.value
    d.mkdir(parents=True)
    archive = zstandard.ZstdCompressor().compress(tar_bytes(members))
    (d / "files.tar.zst").write_bytes(archive)
    art = Artifact("files.tar.zst", "files", len(archive), hashlib.sha256(archive).hexdigest())
    m = Manifest(id=sid, kind=BackupKind.FULL, started_at=when, finished_at=when + timedelta(seconds=1),
                 host="evil", tool_version="0.1.0", source_root="/srv/x", base=sid, artifacts=(art,),
                 files=tuple(files))
    text = mf.dumps(m).encode()
    (d / "manifest.json").write_bytes(text)
    man = Artifact("manifest.json", "manifest", len(text), hashlib.sha256(text).hexdigest())
    (d / "SHA256SUMS").write_text(mf.sha256sums([art, man]))
    return sid.value


def holder_id(when: datetime = T0) -> str:
    return BackupId.make(when, BackupKind.FULL).value


# ----------------------------------------------------------------------------- malicious index paths


@pytest.mark.parametrize("bad", [
    "../escape", "../../escape", "a/../../escape", "a/../b", "/ABS/x", "//ABS/x", "./a", "a/./b", "a//b",
    "a/", "", "a\x00b", "..",
])
@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_unsafe_index_paths_are_refused_before_anything_is_written(tmp_path: Path, outside: Path, bad: str,
                                                                    kind: str) -> None:
    bad = bad.replace("/ABS", str(outside))
    h = holder_id()
    good = fentry("fine.txt", b"fine", h)
    entry = {"file": lambda: fentry(bad, b"pwned", h), "dir": lambda: dentry(bad),
             "symlink": lambda: lentry(bad, "/etc/passwd")}[kind]()
    members = [("fine.txt", b"fine", "file")] + ([(bad, b"pwned", "file")] if kind == "file" else [])
    repo_root = tmp_path / "backups"
    sid = craft_set(repo_root, [good, entry], members)
    target = tmp_path / "work" / "restore"
    target.parent.mkdir()
    with pytest.raises(UnsafeArchiveError) as ei:
        restore(LocalRepository(repo_root), target_dir=target, backup_id=sid)
    assert "refusing" in str(ei.value)
    assert not target.exists(), "refused sets must not start writing"
    assert listing(outside) == {} and sorted(os.listdir(tmp_path / "work")) == []
    assert not (tmp_path / "escape").exists() and not (tmp_path / "work" / "escape").exists()


def test_a_file_under_a_symlink_to_outside_is_never_written_through_it(tmp_path: Path, outside: Path) -> None:
    """Index: ``a -> <outside>`` and a file ``a/x``. Whatever order, nothing lands in <outside>."""
    h = holder_id()
    files = [lentry("a", str(outside)), fentry("a/x", b"pwned", h), lentry("b", str(outside)),
             lentry("b/c", "/etc/passwd")]
    repo_root = tmp_path / "backups"
    sid = craft_set(repo_root, files, [("a/x", b"pwned", "file")])
    target = tmp_path / "restore"
    with pytest.raises(RestoreError):  # a link and a directory cannot both be "a"
        restore(LocalRepository(repo_root), target_dir=target, backup_id=sid)
    assert listing(outside) == {}
    assert not os.path.islink(target / "a") or not (target / "a" / "x").exists()


def test_tar_member_names_never_choose_where_bytes_go(tmp_path: Path, outside: Path) -> None:
    """The archive carries escaping members the index does not list: they are skipped, not written."""
    h = holder_id()
    members = [("../escape", b"pwned", "file"), (f"{outside}/abs", b"pwned", "file"),
               ("sub/../../escape2", b"pwned", "file"), ("link", None, f"symlink:{outside}"),
               ("link/x", b"pwned", "file"), ("ok.txt", b"ok", "file")]
    repo_root = tmp_path / "backups"
    sid = craft_set(repo_root, [fentry("ok.txt", b"ok", h)], members)
    target = tmp_path / "w" / "restore"
    rep = restore(LocalRepository(repo_root), target_dir=target, backup_id=sid)
    assert rep.files == 1 and sorted(os.listdir(target)) == ["ok.txt"]
    assert (target / "ok.txt").read_bytes() == b"ok"
    assert listing(outside) == {}
    assert not (tmp_path / "w" / "escape").exists() and not (tmp_path / "escape").exists()
    assert not (tmp_path / "escape2").exists()


@pytest.mark.parametrize("kind", ["hardlink:/etc/passwd", "symlink:/etc/passwd", "dir"])
def test_an_indexed_file_that_is_not_a_regular_member_is_refused(tmp_path: Path, kind: str) -> None:
    h = holder_id()
    passwd = os.stat("/etc/passwd")
    repo_root = tmp_path / "backups"
    sid = craft_set(repo_root, [fentry("ok.txt", b"ok", h)], [("ok.txt", None, kind)])
    target = tmp_path / "restore"
    with pytest.raises(BackupError) as ei:
        restore(LocalRepository(repo_root), target_dir=target, backup_id=sid)
    assert "not a regular file" in str(ei.value)
    assert os.stat("/etc/passwd").st_nlink == passwd.st_nlink
    assert not os.path.lexists(target / "ok.txt")


def test_a_holder_naming_another_directory_is_refused(tmp_path: Path, outside: Path) -> None:
    """The holder id of an index entry picks the archive to read: it must be a set id, not a path."""
    (outside / "files.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(
        tar_bytes([("x", b"from outside", "file")])))
    repo_root = tmp_path / "backups"
    sid = craft_set(repo_root, [fentry("x", b"from outside", f"../../{outside}")], [])
    with pytest.raises(BackupError):
        restore(LocalRepository(repo_root), target_dir=tmp_path / "restore", backup_id=sid)
    assert not (tmp_path / "restore" / "x").exists()


def test_force_over_planted_links_replaces_them_without_following(tmp_path: Path, outside: Path) -> None:
    """--force over a directory where someone planted links: the links are replaced, never followed."""
    h = holder_id()
    victim = outside / "victim"
    victim.write_bytes(b"original")
    repo_root = tmp_path / "backups"
    sid = craft_set(repo_root, [dentry("a"), fentry("a/x", b"new", h), fentry("b.txt", b"new", h)],
                    [("a/x", b"new", "file"), ("b.txt", b"new", "file")])
    target = tmp_path / "restore"
    target.mkdir()
    os.symlink(outside, target / "a")
    os.symlink(victim, target / "b.txt")
    restore(LocalRepository(repo_root), target_dir=target, backup_id=sid, force=True)
    assert victim.read_bytes() == b"original" and sorted(os.listdir(outside)) == ["victim"]
    assert not (target / "a").is_symlink() and (target / "a" / "x").read_bytes() == b"new"
    assert not (target / "b.txt").is_symlink() and (target / "b.txt").read_bytes() == b"new"


# ----------------------------------------------------------------------------- refusing to overwrite


@pytest.fixture
def real_set(tmp_path: Path) -> tuple[LocalRepository, str, Path, Path]:
    """(repo, set id, live db path, config) of a real backup of a project with its SQLite db inside."""
    s, res = back_up_project_with_db(tmp_path)
    db = s.project.root / "db.sqlite3"
    return LocalRepository(s.storage.local_dir), res.manifest.id.value, db, write_config(tmp_path / "c.toml", s)


def back_up_project_with_db(tmp_path: Path, extra: Callable[[Path], None] | None = None
                            ) -> tuple[Settings, BackupResult]:
    """A full backup (at T0) of a small project whose SQLite database (table t, 10 rows) is inside it;
    ``extra`` may add to the project first."""
    root = make_small_project(tmp_path / "erp")
    if extra is not None:
        extra(root)
    db = root / "db.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
    conn.commit()
    conn.close()
    s = make_settings(tmp_path, root=root, db=db)
    return s, run_backup(s, BackupKind.FULL, now=T0)


def test_non_empty_target_needs_force(tmp_path: Path, real_set: tuple[LocalRepository, str, Path, Path]) -> None:
    repo, sid, _, config = real_set
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = listing(target)
    with pytest.raises(RestoreError) as ei:
        restore(repo, target_dir=target, backup_id=sid)
    assert "not empty" in str(ei.value) and "--force" in str(ei.value)
    assert listing(target) == before

    res = run_cli("--config", str(config), "restore", "--backup", sid, "--target-dir", str(target))
    assert res.returncode != 0 and res.stderr.splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith(ERROR_PREFIX) and "not empty" in res.stderr
    assert listing(target) == before

    rep = restore(repo, target_dir=target, backup_id=sid, force=True)
    assert rep.files > 0 and (target / "keep.txt").read_text() == "mine" and (target / "manage.py").exists()


def test_restoring_into_the_live_database_needs_yes(tmp_path: Path,
                                                    real_set: tuple[LocalRepository, str, Path, Path]) -> None:
    repo, sid, db, config = real_set
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO t VALUES (99)")  # the live database moved on after the backup
    conn.commit()
    conn.close()
    live = DatabaseUrl("sqlite", str(db))
    digest = hashlib.sha256(db.read_bytes()).hexdigest()

    with pytest.raises(RestoreError) as ei:
        restore(repo, target_dir=None, backup_id=sid, target_db=live, live_db=live)
    assert "live database" in str(ei.value) and "--yes" in str(ei.value)
    # the same file named differently is still the live database
    alias = DatabaseUrl("sqlite", str(db.parent / "." / db.name))
    with pytest.raises(RestoreError):
        restore(repo, target_dir=None, backup_id=sid, target_db=alias, live_db=live)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest

    res = run_cli("--config", str(config), "restore", "--backup", sid, "--target-database", f"sqlite:///{db}")
    assert res.returncode != 0 and res.stderr.splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith(ERROR_PREFIX) and "live database" in res.stderr and "--yes" in res.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest

    rep = restore(repo, target_dir=None, backup_id=sid, target_db=live, live_db=live, yes=True)
    assert rep.db_tables == {"t": 10}
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), MAX(x) FROM t").fetchone() == (10, 9)
    conn.close()


def test_the_live_sqlite_database_is_recognised_through_links_and_relative_paths(
        tmp_path: Path, real_set: tuple[LocalRepository, str, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A review found ``--target-dir <link to the project's parent>/erp --force`` replaced the live
    database without --yes: the guard compared paths as written. It compares the files now."""
    repo, sid, db, _ = real_set
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    live = DatabaseUrl("sqlite", str(db))
    link = tmp_path / "via-link"
    link.symlink_to(db.parent.parent)
    through_link = link / db.parent.name  # the project directory, reached through a link
    with pytest.raises(RestoreError) as ei:
        restore(repo, target_dir=through_link, backup_id=sid, live_db=live, force=True)
    assert "live database" in str(ei.value) and "--yes" in str(ei.value)
    monkeypatch.chdir(db.parent)
    with pytest.raises(RestoreError):
        restore(repo, target_dir=None, backup_id=sid, target_db=DatabaseUrl("sqlite", db.name), live_db=live)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
