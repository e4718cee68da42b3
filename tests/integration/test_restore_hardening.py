"""Restore hardening: the database restore obeys the file restore's rules (nothing created, written,
renamed or deleted through a link or outside the target), a failed restore leaves the target as it
found it, sparse files stay sparse, set-id bits are dropped unless asked for, hints name real flags.

Crafted sets are real sets (the engine's backup) whose manifest is edited afterwards, with
SHA256SUMS rewritten so that the set still verifies: what an attacker with write access to the
backup directory could make. "Nothing outside" is checked with a hash-walk of a sentinel directory."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.cli import build_parser
from erp_backup.core import manifest as mf
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import BackupError, RestoreError, UnsafeArchiveError
from erp_backup.core.models import BackupId, BackupKind, EntryType, FileEntry, Manifest
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from erp_backup.verify import verify_committed
from tests.conftest import (
    cli_env,
    flip_byte,
    make_settings,
    make_small_project,
    run_cli,
    tree_state,
    write_config,
    write_file,
)
from tests.integration.test_restore_safety import (
    T0,
    back_up_project_with_db,
    craft_set,
    dentry,
    fentry,
    holder_id,
    lentry,
)

pytestmark = pytest.mark.integration

State = dict[str, tuple[object, ...]]


def walk(d: Path) -> State:
    """Hash-walk: every path under ``d`` with type, mode, owner, content hash, size, mtime (dirs too)."""
    return tree_state(d, exclude=(), dir_mtimes=True)


@pytest.fixture
def sentinel() -> Iterator[Path]:
    """A directory outside every test directory holding a SQLite database and its companions,
    a file and a subdirectory: whatever a crafted set aims at."""
    d = Path("/tmp") / f"erpb-sentinel-{uuid.uuid4().hex[:10]}"
    (d / "sub").mkdir(parents=True)
    conn = sqlite3.connect(d / "db.sqlite3")
    conn.execute("CREATE TABLE precious (x)")
    conn.execute("INSERT INTO precious VALUES (1)")
    conn.commit()
    conn.close()
    for s in ("-wal", "-shm", "-journal"):
        (d / f"db.sqlite3{s}").write_bytes(b"precious " + s.encode())
    (d / "victim.txt").write_text("original")
    (d / "sub" / "keep.txt").write_text("keep")
    try:
        yield d
    finally:
        shutil.rmtree(d)


@dataclasses.dataclass
class RealSet:
    repo: LocalRepository
    sid: str
    root: Path  # the project that was backed up
    config: Path

    def edit(self, change: Callable[[Manifest], Manifest], *, verifies: bool = True) -> None:
        """Rewrite the manifest (and SHA256SUMS over it) as an attacker would; the set still verifies
        (unless the change is damage that a full verification finds: ``verifies=False``)."""
        d = self.repo.set_dir(self.sid)
        m = change(self.repo.read_manifest(BackupId(self.sid)))
        text = "".join(mf.dump_lines(m)).encode()
        (d / "manifest.json").write_bytes(text)
        sums = mf.parse_sha256sums((d / "SHA256SUMS").read_text())
        sums["manifest.json"] = hashlib.sha256(text).hexdigest()
        for a in m.artifacts:
            sums[a.name] = a.sha256
        (d / "SHA256SUMS").write_text("".join(f"{v}  {k}\n" for k, v in sorted(sums.items())))
        rep = verify_committed(self.repo, self.sid, level="full" if verifies else "quick")
        assert rep.ok, rep.problems

    def manifest(self) -> Manifest:
        return self.repo.read_manifest(BackupId(self.sid))


def make_real_set(tmp_path: Path, *, extra: Callable[[Path], None] | None = None) -> RealSet:
    """A real backup of a small project whose SQLite database (table t, 10 rows) is inside it."""
    s, res = back_up_project_with_db(tmp_path, extra)
    root = s.project.root
    assert res.manifest.database is not None and res.manifest.database.database == "db.sqlite3"
    return RealSet(LocalRepository(s.storage.local_dir), res.manifest.id.value, root,
                   write_config(tmp_path / "c.toml", s))


@pytest.fixture
def real(tmp_path: Path) -> RealSet:
    return make_real_set(tmp_path)


def with_db(m: Manifest, database: str) -> Manifest:
    assert m.database is not None
    return dataclasses.replace(m, database=dataclasses.replace(m.database, database=database))


def add_entries(*entries: FileEntry) -> Callable[[Manifest], Manifest]:
    return lambda m: dataclasses.replace(m, files=(*m.files, *entries))


def link(path: str, target: str) -> FileEntry:
    return lentry(path, target)


def count_rows(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])
    finally:
        conn.close()


# ============================================================================ 1. no write through a link


@pytest.mark.parametrize("links,database", [
    ([("dbdir", "{out}")], "dbdir/db.sqlite3"),  # the set
    ([("dbdir", "{out}")], "dbdir/sub/db.sqlite3"),  # mkdir through the link
    ([("a", "{out}/sub")], "a/db.sqlite3"),
    ([("dbdir", "{out}/db.sqlite3")], "dbdir"),  # the database path itself is an indexed link
])
@pytest.mark.parametrize("force", [False, True])
def test_a_database_path_under_an_indexed_link_is_refused_and_nothing_outside_changes(
        tmp_path: Path, real: RealSet, sentinel: Path, links: list[tuple[str, str]], database: str,
        force: bool) -> None:
    real.edit(lambda m: add_entries(*(link(p, t.format(out=sentinel)) for p, t in links))(with_db(m, database)))
    before = walk(sentinel)
    target = tmp_path / "restore"
    if force:
        write_file(target / "keep.txt", "mine")
    found = walk(target)
    with pytest.raises(UnsafeArchiveError) as ei:
        restore(real.repo, target_dir=target, backup_id=real.sid, force=force)
    assert "refusing SQLite database path" in str(ei.value)
    assert walk(sentinel) == before
    assert walk(target) == found, "refused before anything was written"


@pytest.mark.parametrize("planted", ["dbdir", "dbdir/inner"])
def test_a_link_planted_in_a_force_target_is_replaced_not_followed_by_the_database_restore(
        tmp_path: Path, real: RealSet, sentinel: Path, planted: str) -> None:
    """The index has no ``dbdir``; the --force target has ``dbdir -> <outside>`` (or deeper)."""
    real.edit(lambda m: with_db(m, "dbdir/inner/db.sqlite3"))
    target = tmp_path / "restore"
    (target / planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(sentinel, target / planted)
    before = walk(sentinel)
    rep = restore(real.repo, target_dir=target, backup_id=real.sid, force=True)
    assert rep.db_tables == {"t": 10}
    assert walk(sentinel) == before
    assert not (target / "dbdir").is_symlink() and not (target / "dbdir" / "inner").is_symlink()
    assert count_rows(target / "dbdir" / "inner" / "db.sqlite3") == 10


def test_links_planted_at_the_database_file_its_companions_and_old_temporary_are_not_followed(
        tmp_path: Path, real: RealSet, sentinel: Path) -> None:
    target = tmp_path / "restore"
    target.mkdir()
    for name, aim in [("db.sqlite3", "db.sqlite3"), ("db.sqlite3-wal", "db.sqlite3-wal"),
                      ("db.sqlite3-shm", "db.sqlite3-shm"), ("db.sqlite3-journal", "db.sqlite3-journal"),
                      (".db.sqlite3.restoring", "victim.txt")]:
        os.symlink(sentinel / aim, target / name)
    before = walk(sentinel)
    rep = restore(real.repo, target_dir=target, backup_id=real.sid, force=True)
    assert rep.db_tables == {"t": 10}
    assert walk(sentinel) == before
    assert not (target / "db.sqlite3").is_symlink() and count_rows(target / "db.sqlite3") == 10
    assert not any(os.path.lexists(target / f"db.sqlite3{s}") for s in ("-wal", "-shm", "-journal"))
    # a stranger's file that only looks like a temporary is not ours to delete
    assert os.readlink(target / ".db.sqlite3.restoring") == str(sentinel / "victim.txt")
    assert not [n for n in os.listdir(target) if n.startswith(".db.sqlite3.restoring-")]


def test_a_directory_at_the_database_path_of_a_force_target_is_refused_and_the_files_rolled_back(
        tmp_path: Path, real: RealSet) -> None:
    target = tmp_path / "restore"
    write_file(target / "db.sqlite3" / "mine.txt", "mine")
    before = tree_state(target, exclude=())
    with pytest.raises(RestoreError) as ei:
        restore(real.repo, target_dir=target, backup_id=real.sid, force=True)
    assert "is a directory" in str(ei.value) and "was left as it was found" in str(ei.value)
    assert tree_state(target, exclude=()) == before


@pytest.mark.parametrize("force", [False, True])
def test_a_target_directory_that_is_a_link_is_refused(tmp_path: Path, real: RealSet, sentinel: Path,
                                                      force: bool) -> None:
    empty = sentinel / "sub" / "empty"
    empty.mkdir()
    before = walk(sentinel)
    for aim in (empty, sentinel):  # an empty directory, and a non-empty one (with --force)
        target = tmp_path / f"link-to-{aim.name}"
        os.symlink(aim, target)
        with pytest.raises(RestoreError) as ei:
            restore(real.repo, target_dir=target, backup_id=real.sid, force=force)
        assert "symbolic link" in str(ei.value) and str(aim) in str(ei.value)
        assert walk(sentinel) == before


@pytest.mark.parametrize("database,kind", [
    ("app", "dir"),  # names an indexed directory
    ("manage.py", "file"),  # names an indexed file
    ("docs/index.md", "symlink"),  # names an indexed link
    ("manage.py/db.sqlite3", "parent file"),  # lies under an indexed file
])
def test_a_database_path_that_collides_with_the_index_is_refused(tmp_path: Path, real: RealSet, sentinel: Path,
                                                                 database: str, kind: str) -> None:
    real.edit(lambda m: with_db(m, database))
    target = tmp_path / "restore"
    with pytest.raises(UnsafeArchiveError) as ei:
        restore(real.repo, target_dir=target, backup_id=real.sid)
    assert "refusing SQLite database path" in str(ei.value) and database in str(ei.value)
    assert not target.exists()


@pytest.mark.parametrize("database", ["../db.sqlite3", "a/../../db.sqlite3", "", "./db.sqlite3", "a//b"])
def test_an_escaping_or_empty_database_path_is_refused_before_anything_is_written(
        tmp_path: Path, real: RealSet, database: str) -> None:
    real.edit(lambda m: with_db(m, database))
    target = tmp_path / "w" / "restore"
    with pytest.raises(UnsafeArchiveError):
        restore(real.repo, target_dir=target, backup_id=real.sid)
    assert not (tmp_path / "w").exists() and not (tmp_path / "db.sqlite3").exists()


def test_an_absolute_database_path_in_the_set_is_not_written_without_a_target_url(
        tmp_path: Path, real: RealSet, sentinel: Path) -> None:
    real.edit(lambda m: with_db(m, str(sentinel / "db.sqlite3")))
    before = walk(sentinel)
    rep = restore(real.repo, target_dir=tmp_path / "restore", backup_id=real.sid)
    assert rep.files > 0 and rep.database is None
    assert rep.notes == ("database not restored: pass --target-database URL",)
    assert walk(sentinel) == before


def test_an_operator_url_inside_the_target_under_an_indexed_link_is_refused(
        tmp_path: Path, real: RealSet, sentinel: Path) -> None:
    real.edit(add_entries(link("lnk", str(sentinel))))
    before = walk(sentinel)
    target = tmp_path / "restore"
    with pytest.raises(UnsafeArchiveError):
        restore(real.repo, target_dir=target, backup_id=real.sid,
                target_db=DatabaseUrl("sqlite", str(target / "lnk" / "db.sqlite3")))
    assert walk(sentinel) == before and not target.exists()


def test_an_operator_url_spelled_through_a_link_to_the_target_is_still_inside_it(
        tmp_path: Path, real: RealSet, sentinel: Path) -> None:
    """A review wrote the database into the sentinel: the target database was spelled through a
    link to the target's parent, so it counted as outside, and its parent was then opened by path
    through the link the set had just created."""
    real.edit(add_entries(link("evil", str(sentinel))))
    before = walk(sentinel)
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    target = tmp_path / "real" / "T"
    with pytest.raises(UnsafeArchiveError):
        restore(real.repo, target_dir=target, backup_id=real.sid,
                target_db=DatabaseUrl("sqlite", str(tmp_path / "alias" / "T" / "evil" / "db.sqlite3")))
    assert walk(sentinel) == before and not target.exists()


def test_an_operator_url_outside_the_target_is_the_operators_choice(tmp_path: Path, real: RealSet,
                                                                    sentinel: Path) -> None:
    before = walk(sentinel)
    chosen = sentinel / "sub" / "new" / "restored.sqlite3"
    rep = restore(real.repo, target_dir=tmp_path / "restore", backup_id=real.sid,
                  target_db=DatabaseUrl("sqlite", str(chosen)))
    assert rep.db_tables == {"t": 10} and count_rows(chosen) == 10
    after = walk(sentinel)
    assert {k: v for k, v in after.items() if not k.startswith("sub")} == \
        {k: v for k, v in before.items() if not k.startswith("sub")}
    assert sorted(k for k in after if k.startswith("sub/")) == ["sub/keep.txt", "sub/new", "sub/new/restored.sqlite3"]


def test_a_planted_spool_directory_link_in_the_repository_is_not_used(tmp_path: Path, real: RealSet,
                                                                      sentinel: Path) -> None:
    """The spool directory had a predictable name (.restore-<id>-<pid>): a link planted there made
    the restore spool into, and clean up (delete files in), whatever it pointed at."""
    os.symlink(sentinel, real.repo.root / f".restore-{real.sid}-{os.getpid()}")
    before = walk(sentinel)
    out = tmp_path / "elsewhere" / "db.sqlite3"
    rep = restore(real.repo, target_dir=None, backup_id=real.sid, target_db=DatabaseUrl("sqlite", str(out)))
    assert rep.db_tables == {"t": 10}
    assert walk(sentinel) == before
    assert [p.name for p in real.repo.root.iterdir() if p.name.startswith(".restore-")] == \
        [f".restore-{real.sid}-{os.getpid()}"], "the spool directory is removed, the planted link left alone"


def test_the_parallel_postgres_restore_spools_in_a_fresh_private_directory(
        tmp_path: Path, sentinel: Path, pg_db: Callable[..., DatabaseUrl],
        pg_sql: Callable[..., list[tuple[object, ...]]]) -> None:
    src = pg_db("spool")
    pg_sql(src, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 500)")
    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"), db=src.redacted())
    sid = run_backup(s, BackupKind.FULL, now=T0).manifest.id.value
    repo = LocalRepository(s.storage.local_dir)
    os.symlink(sentinel, repo.root / f".restore-{sid}-{os.getpid()}")
    before = walk(sentinel)
    dst = pg_db("spool_dst", create=False)
    rep = restore(repo, target_dir=None, backup_id=sid, target_db=dst, jobs=2)
    assert rep.db_tables == {"public.t": 500}
    assert walk(sentinel) == before
    assert len([p for p in repo.root.iterdir() if p.name.startswith(".restore-")]) == 1  # the planted link


# ============================================================================ 2. a failed restore cleans up


def _bigger_project(root: Path) -> None:
    for i in range(40):
        write_file(root / f"bulk/d{i % 4}/f{i:03}.bin", os.urandom(20_000))


@pytest.fixture
def bigger(tmp_path: Path) -> RealSet:
    return make_real_set(tmp_path, extra=_bigger_project)


def _break_archive(rs: RealSet) -> None:
    """Flip a byte near the end of the files archive (re-summed: only the content is wrong)."""
    m = rs.manifest()
    art = m.artifact("files")
    assert art is not None
    path = rs.repo.set_dir(rs.sid) / art.name
    flip_byte(path, path.stat().st_size // 2)
    data = path.read_bytes()
    new = dataclasses.replace(art, sha256=hashlib.sha256(data).hexdigest())
    rs.edit(lambda m: dataclasses.replace(m, artifacts=tuple(new if a.role == "files" else a for a in m.artifacts)),
            verifies=False)


def _wrong_checksum(rs: RealSet) -> None:
    last = max((e for e in rs.manifest().files if e.type is EntryType.FILE), key=lambda e: e.path)
    rs.edit(lambda m: dataclasses.replace(m, files=tuple(
        dataclasses.replace(e, sha256="0" * 64) if e.path == last.path else e for e in m.files)), verifies=False)


def _missing_member(rs: RealSet) -> None:
    rs.edit(add_entries(fentry("zzz/not-in-the-archive.txt", b"ghost", rs.sid)), verifies=False)


def _bad_database(rs: RealSet) -> None:
    m = rs.manifest()
    art = m.artifact("database")
    assert art is not None
    path = rs.repo.set_dir(rs.sid) / art.name
    path.write_bytes(zstandard.ZstdCompressor().compress(b"SQLite format 3\x00" + os.urandom(8192)))
    data = path.read_bytes()
    new = dataclasses.replace(art, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    rs.edit(lambda m: dataclasses.replace(m, artifacts=tuple(new if a.role == "database" else a for a in m.artifacts)),
            verifies=False)


def _row_counts_differ(rs: RealSet) -> None:
    """The database is restored, then found to differ from the manifest (11 rows expected)."""
    rs.edit(lambda m: dataclasses.replace(m, database=dataclasses.replace(m.database, tables={"t": 11})),
            verifies=False)


FAILURES: dict[str, tuple[Callable[[RealSet], None], str]] = {
    "corrupt archive": (_break_archive, ""),
    "checksum mismatch": (_wrong_checksum, "does not match its checksum"),
    "member missing": (_missing_member, "lacks 1 file(s)"),
    "database unreadable": (_bad_database, "SQLite"),
    "row counts differ": (_row_counts_differ, "expected 11"),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("where", ["new", "nested-new", "empty"])
def test_a_failed_restore_leaves_the_target_as_it_found_it(tmp_path: Path, bigger: RealSet, failure: str,
                                                          where: str) -> None:
    make_failure, fragment = FAILURES[failure]
    make_failure(bigger)
    base = tmp_path / "place"
    base.mkdir()
    target = {"new": base / "restore", "nested-new": base / "a" / "b" / "restore", "empty": base / "empty"}[where]
    if where == "empty":
        target.mkdir()
    before = tree_state(base, exclude=())
    with pytest.raises(BackupError) as ei:
        restore(bigger.repo, target_dir=target, backup_id=bigger.sid)
    text = str(ei.value)
    assert fragment in text and "\n" not in text
    assert "was left as it was found" in text, text
    assert tree_state(base, exclude=()) == before


def test_a_missing_holder_set_is_found_before_the_first_write(tmp_path: Path, bigger: RealSet) -> None:
    """A file of the index is held by a set that is not there (and not in depends_on)."""
    missing = holder_id(T0.replace(year=2030))
    bigger.edit(add_entries(fentry("late.txt", b"x", missing)), verifies=False)
    target = tmp_path / "restore"
    with pytest.raises(BackupError) as ei:
        restore(bigger.repo, target_dir=target, backup_id=bigger.sid)
    assert missing in str(ei.value)
    assert not target.exists()


@pytest.mark.parametrize("failure", ["checksum mismatch", "row counts differ"])
def test_a_failed_force_restore_removes_only_its_own_and_names_what_it_wrote_over(
        tmp_path: Path, bigger: RealSet, failure: str) -> None:
    FAILURES[failure][0](bigger)
    target = tmp_path / "restore"
    write_file(target / "keep.txt", "mine")  # not in the set: never touched
    write_file(target / "manage.py", "# an older manage.py\n")  # in the set: replaced before the failure
    write_file(target / "app" / "mine.txt", "mine")  # a directory of the set holding a stranger's file
    write_file(target / "bulk" / "d0" / "local.txt", "mine")
    kept = {k: v for k, v in walk(target).items() if k in ("keep.txt", "app/mine.txt", "bulk/d0/local.txt")}
    index = {e.path for e in bigger.manifest().files}
    with pytest.raises(BackupError) as ei:
        restore(bigger.repo, target_dir=target, backup_id=bigger.sid, force=True)
    text = str(ei.value)
    assert "already written over" in text and "manage.py" in text, text
    after = walk(target)
    assert {k: after.get(k) for k in kept} == kept
    created = (index | {"db.sqlite3"}) - {"manage.py", "app", "bulk", "bulk/d0"}
    assert {"app/models.py", "docs/index.md", "bulk/d1", "bulk/d1/f001.bin"} <= created
    assert not created & set(after), sorted(created & set(after))
    assert "bulk/d0/f000.bin" not in after and "bulk/d0" in after and "app" in after


# ============================================================================ 3. sparse files


GiB = 1 << 30


def data_regions(path: Path) -> list[tuple[int, bytes]]:
    """(offset, bytes) of every data region (SEEK_DATA/SEEK_HOLE): the rest of the file is holes."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, os.pread(fd, end - start, start)))
            pos = end
    finally:
        os.close(fd)
    return out


def same_content(a: Path, b: Path) -> bool:
    """Equal bytes, compared through the data regions of both files: a region of one is compared
    with the same range of the other (holes read as zeros), so no 5 GiB of zeros is read."""
    if a.stat().st_size != b.stat().st_size:
        return False
    for x, y in ((a, b), (b, a)):
        with open(y, "rb") as f:
            for off, data in data_regions(x):
                f.seek(off)
                if f.read(len(data)) != data:
                    return False
    return True


def make_sparse(path: Path, size: int, data_at: dict[int, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in data_at.items():
            f.seek(off)
            f.write(data)
    return path


def test_a_sparse_file_comes_back_sparse(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    write_file(root / "manage.py", "#!/usr/bin/env python\n")
    big = make_sparse(root / "data" / "disk.img", 5 * GiB,
                      {0: os.urandom(4096), 3 * GiB + 12345: os.urandom(4096)})  # 8 KiB of data in 5 GiB
    assert big.stat().st_blocks * 512 <= 64 * 1024
    # restored before disk.img (archive order): its tampered digest below stops the restore at once,
    # instead of after 5 GiB more of zeros (the test took ~28 s, a third of it that second restore)
    small = make_sparse(root / "data" / "a-small.img", 64 << 20, {0: os.urandom(4096), 40 << 20: os.urandom(100)})
    s = make_settings(tmp_path, root=root, verify="quick")
    sid = run_backup(s, BackupKind.FULL, now=T0).manifest.id.value
    repo = LocalRepository(s.storage.local_dir)
    entry = next(e for e in repo.read_manifest(BackupId(sid)).files if e.path == "data/disk.img")
    assert entry.size == 5 * GiB
    target = tmp_path / "restore"
    rep = restore(repo, target_dir=target, backup_id=sid)  # checks the SHA-256 of what it wrote
    assert rep.files == 3 and rep.bytes == 5 * GiB + (64 << 20) + len("#!/usr/bin/env python\n")
    out = target / "data" / "disk.img"
    st = out.stat()
    assert st.st_size == 5 * GiB
    assert st.st_blocks * 512 <= 256 * 1024, f"{st.st_blocks * 512} bytes allocated"
    assert same_content(big, out)
    assert same_content(small, target / "data" / "a-small.img")
    assert (target / "data" / "a-small.img").stat().st_blocks * 512 <= 256 * 1024
    # the checksum check of a sparse restore is real: the same set with another recorded digest is refused
    RealSet(repo, sid, root, tmp_path / "unused.toml").edit(lambda m: dataclasses.replace(m, files=tuple(
        dataclasses.replace(e, sha256="0" * 64) if e.path == "data/a-small.img" else e for e in m.files)),
        verifies=False)
    with pytest.raises(BackupError, match="does not match its checksum") as e:
        restore(repo, target_dir=tmp_path / "again", backup_id=sid)
    assert "a-small.img" in str(e.value)
    assert entry.sha256 and entry.sha256 != "0" * 64


def test_a_sparse_file_in_the_archive_is_a_plain_member_that_tar_extracts(tmp_path: Path) -> None:
    """The backup reads no hole (SEEK_DATA/SEEK_HOLE) but still archives the zeros: GNU tar and
    the engine restore the same bytes; holes at the start, the end, unaligned, data at the end."""
    root = tmp_path / "erp"
    mib = 1 << 20
    shapes = {
        "hole-first.img": (9 * mib, {5 * mib + 7: os.urandom(70_000)}),
        "data-last.img": (3 * mib + 5, {0: b"x", 3 * mib - 100: os.urandom(105)}),
        "many.img": (20 * mib, {i * mib + 333: os.urandom(5000) for i in range(0, 20, 3)}),
        "all-hole.img": (2 * mib, {}),
    }
    for name, (size, data_at) in shapes.items():
        make_sparse(root / name, size, data_at)
    s = make_settings(tmp_path, root=root, verify="full")
    res = run_backup(s, BackupKind.FULL, now=T0)
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    z = subprocess.Popen(["zstd", "-dc", str(res.path / "files.tar.zst")], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-xf", "-", "-C", str(by_hand)], stdin=z.stdout, check=True)
    assert z.wait() == 0
    engine = tmp_path / "engine"
    restore(LocalRepository(s.storage.local_dir), target_dir=engine, backup_id=res.manifest.id.value)
    for name in shapes:
        assert same_content(root / name, by_hand / name), name
        assert (by_hand / name).read_bytes() == (root / name).read_bytes() == (engine / name).read_bytes(), name
        # holes are made in 64 KiB blocks: each data region costs at most two of them
        data_at = shapes[name][1]
        assert (engine / name).stat().st_blocks * 512 <= (2 * len(data_at) + 1) * 64 * 1024, name
        assert (engine / name).stat().st_blocks * 512 < (root / name).stat().st_size // 2 or not data_at, name


def test_zero_runs_inside_ordinary_files_are_restored_exactly(tmp_path: Path) -> None:
    """Files with zero runs of every shape (aligned or not, at the start, the end, across reads)."""
    root = tmp_path / "erp"
    z = bytes
    shapes = {
        "all-zero-small": z(100), "all-zero-block": z(1 << 16), "all-zero-3MiB": z(3 << 20),
        "zero-head": z(200_000) + b"x" * 10, "zero-tail": b"x" * 10 + z(200_000),
        "zero-middle": os.urandom(70_000) + z(300_000) + os.urandom(5), "one-byte": b"\x00",
        "alternating": b"".join(os.urandom(1000) + z(70_000) for _ in range(40)), "empty": b"",
    }
    for name, data in shapes.items():
        write_file(root / name, data)
    s = make_settings(tmp_path, root=root, verify="quick")
    sid = run_backup(s, BackupKind.FULL, now=T0).manifest.id.value
    target = tmp_path / "restore"
    restore(LocalRepository(s.storage.local_dir), target_dir=target, backup_id=sid)
    for name, data in shapes.items():
        assert (target / name).read_bytes() == data, name
    assert (target / "all-zero-3MiB").stat().st_blocks == 0


# ============================================================================ 4. set-id bits


def _setid_set(rs: RealSet) -> None:
    def change(m: Manifest) -> Manifest:
        modes = {"manage.py": (0o4755, 0, 0), "app/data.bin": (0o2750, 0, 0), "app": (0o2775, 0, 0),
                 "docs": (0o1777, 0, 0), "docs/empty": (0o3755, 0, 0)}
        return dataclasses.replace(m, files=tuple(
            dataclasses.replace(e, mode=modes[e.path][0], uid=modes[e.path][1], gid=modes[e.path][2])
            if e.path in modes else e for e in m.files))
    rs.edit(change)


def test_setid_bits_are_dropped_with_one_warning_unless_asked_for(tmp_path: Path, real: RealSet) -> None:
    _setid_set(real)
    target = tmp_path / "restore"
    rep = restore(real.repo, target_dir=target, backup_id=real.sid)
    modes = {p: stat.S_IMODE(os.lstat(target / p).st_mode) for p in ("manage.py", "app/data.bin", "app", "docs",
                                                                      "docs/empty")}
    assert modes == {"manage.py": 0o755, "app/data.bin": 0o750, "app": 0o775, "docs": 0o1777, "docs/empty": 0o1755}
    warning = [n for n in rep.notes if "setuid/setgid" in n]
    assert len(warning) == 1 and "4 path(s)" in warning[0] and "--keep-setid" in warning[0], rep.notes
    assert all(p in warning[0] for p in ("manage.py", "app/data.bin", "app", "docs/empty"))
    if os.geteuid() == 0:
        assert os.stat(target / "manage.py").st_uid == 0  # ownership still applied, the bit is not

    kept = tmp_path / "kept"
    rep = restore(real.repo, target_dir=kept, backup_id=real.sid, keep_setid=True)
    assert not [n for n in rep.notes if "setuid" in n]
    assert stat.S_IMODE(os.stat(kept / "manage.py").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(kept / "app" / "data.bin").st_mode) == 0o2750
    assert stat.S_IMODE(os.stat(kept / "app").st_mode) == 0o2775
    assert stat.S_IMODE(os.stat(kept / "docs" / "empty").st_mode) == 0o3755


def test_many_dropped_bits_are_summarised(tmp_path: Path) -> None:
    h = holder_id()
    files = [fentry(f"bin/tool{i:02}", b"#!/bin/sh\n", h) for i in range(12)]
    files = [dataclasses.replace(e, mode=0o4755) for e in files]
    sid = craft_set(tmp_path / "backups", [dentry("bin"), *files], [(e.path, b"#!/bin/sh\n", "file") for e in files])
    rep = restore(LocalRepository(tmp_path / "backups"), target_dir=tmp_path / "r", backup_id=sid)
    (note,) = rep.notes
    assert "12 path(s)" in note and "bin/tool00" in note and "bin/tool04" in note and "bin/tool05" not in note
    assert "\n" not in note
    assert all(not os.stat(tmp_path / "r" / e.path).st_mode & 0o6000 for e in files)


def test_keep_setid_is_a_cli_flag_and_a_flow_parameter() -> None:
    import inspect

    from erp_backup.flows.restore import restore_flow

    args = build_parser().parse_args(["restore", "--target-dir", "/x", "--keep-setid"])
    assert args.keep_setid is True
    assert build_parser().parse_args(["restore", "--target-dir", "/x"]).keep_setid is False
    params = inspect.signature(restore_flow.fn).parameters
    assert params["keep_setid"].default is False


def test_the_cli_restore_keeps_setid_bits_only_with_the_flag(tmp_path: Path, real: RealSet) -> None:
    _setid_set(real)
    target = tmp_path / "cli-restore"
    res = run_cli("--config", str(real.config), "restore", "--backup", real.sid, "--target-dir", str(target),
                  "--keep-setid", timeout=400,
                  env=cli_env(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="240"))  # a loaded machine
    assert res.returncode == 0, res.stderr[-3000:]
    assert stat.S_IMODE(os.stat(target / "manage.py").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(target / "app").st_mode) == 0o2775


# ============================================================================ 5. hints name real flags


def test_restoring_into_a_non_empty_sqlite_database_names_force(tmp_path: Path, real: RealSet) -> None:
    busy = tmp_path / "busy.sqlite3"
    conn = sqlite3.connect(busy)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    digest = hashlib.sha256(busy.read_bytes()).hexdigest()
    with pytest.raises(RestoreError) as ei:
        restore(real.repo, target_dir=None, backup_id=real.sid, target_db=DatabaseUrl("sqlite", str(busy)))
    assert "--force" in str(ei.value) and "already exists" in str(ei.value)
    assert hashlib.sha256(busy.read_bytes()).hexdigest() == digest
    rep = restore(real.repo, target_dir=None, backup_id=real.sid, target_db=DatabaseUrl("sqlite", str(busy)),
                  force=True)
    assert rep.db_tables == {"t": 10}


def test_restoring_into_a_non_empty_postgres_database_names_force(
        tmp_path: Path, pg_db: Callable[..., DatabaseUrl], pg_sql: Callable[..., list[tuple[object, ...]]]) -> None:
    src = pg_db("hint")
    pg_sql(src, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"), db=src.redacted())
    sid = run_backup(s, BackupKind.FULL, now=T0).manifest.id.value
    busy = pg_db("hint_busy")
    pg_sql(busy, "CREATE TABLE precious (id int)")
    with pytest.raises(RestoreError) as ei:
        restore(LocalRepository(s.storage.local_dir), target_dir=None, backup_id=sid,
                target_db=busy)
    text = str(ei.value)
    assert "--force" in text and "pass replace" not in text, text
    assert pg_sql(busy, "SELECT count(*) FROM pg_tables WHERE tablename = 'precious'") == [(1,)]


def test_an_os_error_mid_restore_is_one_actionable_line_and_rolled_back(tmp_path: Path) -> None:
    """An OSError while writing (here: a crafted name longer than the file system allows) becomes a
    RestoreError with a hint, after what the restore had created is removed."""
    h = holder_id()
    long = "x" * 300
    sid = craft_set(tmp_path / "backups", [fentry("a.txt", b"a", h), fentry(f"d/{long}", b"c", h)],
                    [("a.txt", b"a", "file"), (f"d/{long}", b"c", "file")])
    target = tmp_path / "restore"
    with pytest.raises(RestoreError) as ei:
        restore(LocalRepository(tmp_path / "backups"), target_dir=target, backup_id=sid)
    text = str(ei.value)
    assert "File name too long" in text and " — " in text and "\n" not in text
    assert "was left as it was found" in text
    assert not target.exists()


def test_index_entries_with_two_types_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    h = holder_id()
    sid = craft_set(tmp_path / "backups", [dentry("a"), fentry("a", b"x", h)], [("a", b"x", "file")])
    with pytest.raises(UnsafeArchiveError) as ei:
        restore(LocalRepository(tmp_path / "backups"), target_dir=tmp_path / "r", backup_id=sid)
    assert "a dir and a file" in str(ei.value)
    assert not (tmp_path / "r").exists()


def test_a_directory_swapped_for_a_link_while_restoring_fails_the_restore(tmp_path: Path, sentinel: Path) -> None:
    """A review swapped a directory of the target for a link in the middle of a restore: the files
    went (through the held descriptor) into the moved directory and the restore said it succeeded.
    Here the swap happens at a chosen moment, between writing and the final check."""
    from erp_backup.restore import SafeTarget

    target = tmp_path / "T"
    safe = SafeTarget(target)
    fd = safe.open_file("bigdir/sub/a.txt")
    os.close(fd)
    safe.check_in_place()  # nothing moved: passes
    os.rename(target / "bigdir", tmp_path / "moved")
    os.symlink(sentinel, target / "bigdir")
    with pytest.raises(RestoreError) as ei:
        safe.check_in_place()
    assert "bigdir" in str(ei.value) and "moved or replaced" in str(ei.value)


# ============================================================================ 6. crafted tar headers


def _tar_header(name: bytes, typ: bytes, size: int) -> bytes:
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108], h[108:116], h[116:124] = b"0000644\x00", b"0000000\x00", b"0000000\x00"
    h[124:136], h[136:148] = b"%011o\x00" % size, b"00000000000\x00"
    h[156:157], h[257:265] = typ, b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


@pytest.mark.parametrize("size", [b"abc", b"-512", b" 3", b"1_0", b"\xd9\xa3", b"9" * 40])
def test_a_pax_size_that_is_no_number_is_one_error_line(tmp_path: Path, real: RealSet, size: bytes) -> None:
    """A review's crafted archive (PAX ``size=abc``) ended restore and verify with a ValueError traceback."""
    record = _pax_record(b"size", size)
    tar = (_tar_header(b"PaxHeader/manage.py", b"x", len(record)) + record + bytes(-len(record) % 512)
           + _tar_header(b"manage.py", b"0", 3) + b"hi\n" + bytes(509) + bytes(1024))
    data = zstandard.ZstdCompressor().compress(tar)
    m = real.manifest()
    art = m.artifact("files")
    assert art is not None
    (real.repo.set_dir(real.sid) / art.name).write_bytes(data)
    new = dataclasses.replace(art, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    real.edit(lambda m: dataclasses.replace(m, artifacts=tuple(new if a.role == "files" else a for a in m.artifacts)),
              verifies=False)
    env = cli_env(ERP_BACKUP_RUNNER="plain")
    for args in (["restore", "--backup", real.sid, "--target-dir", str(tmp_path / "out")], ["verify", real.sid]):
        res = run_cli("--config", str(real.config), *args, env=env)
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("erp-backup: error:")]
        assert len(errors) == 1 and "PAX header" in errors[0], res.stderr[-2000:]
    assert not (tmp_path / "out").exists()
