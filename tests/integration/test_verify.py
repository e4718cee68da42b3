"""Verification catches damage: one flipped byte in any file of a set (artifacts, manifest.json,
SHA256SUMS), truncation, a missing file, and damage that a rewritten checksum hides (only the full
level, which decompresses and re-hashes the content, sees those)."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import tarfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core import manifest as mf
from erp_backup.core.models import Artifact, BackupId, BackupKind, DatabaseInfo
from erp_backup.pipeline import run_backup
from erp_backup.verify import VerifyReport, verify_committed
from tests.conftest import cli_env, flip_byte, make_settings, make_small_project, run_cli, write_config

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
FILES, DB, MANIFEST, SUMS = "files.tar.zst", "db.sqlite.sqlite3.zst", "manifest.json", "SHA256SUMS"


@pytest.fixture
def repo_with(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``repo_with(n)``: n committed full sets of a small project (and an incremental on the last)."""

    def make(n: int = 1, incremental: bool = False) -> tuple[LocalRepository, list[str], Path]:
        root = make_small_project(tmp_path / "erp")
        s = make_settings(tmp_path, root=root, key_files=["manage.py", ".env"])
        ids = [run_backup(s, BackupKind.FULL, now=T0 + timedelta(hours=i)).manifest.id.value for i in range(n)]
        if incremental:
            (root / "app/models.py").write_text("changed\n")
            ids.append(run_backup(s, BackupKind.INCREMENTAL, now=T0 + timedelta(hours=n)).manifest.id.value)
        repo = LocalRepository(s.storage.local_dir)
        for i in ids:
            assert verify_committed(repo, i).ok
        return repo, ids, write_config(tmp_path / "config.toml", s)

    return make


def names(rep: VerifyReport, sid: str, file: str) -> bool:
    """Some problem names both the set and the file."""
    return any(sid in p and file in p for p in rep.problems)


def reseal(set_dir: Path, **artifact_bytes: bytes) -> None:
    """Replace artifacts (by role) and make manifest.json and SHA256SUMS consistent with them again,
    as a careless or malicious hand would: every checksum then matches."""
    m = mf.loads((set_dir / MANIFEST).read_bytes())
    arts = []
    for a in m.artifacts:
        if a.role in artifact_bytes:
            data = artifact_bytes[a.role]
            (set_dir / a.name).write_bytes(data)
            a = replace(a, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        arts.append(a)
    m = replace(m, artifacts=tuple(arts))
    text = mf.dumps(m).encode()
    (set_dir / MANIFEST).write_bytes(text)
    sums = [*arts, Artifact(MANIFEST, "manifest", len(text), hashlib.sha256(text).hexdigest())]
    (set_dir / SUMS).write_text(mf.sha256sums(sums))


# ----------------------------------------------------------------------------- one flipped byte


@pytest.mark.parametrize("name", [FILES, DB, MANIFEST, SUMS])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_fails_both_levels_naming_set_and_file(repo_with, name: str, where: str) -> None:
    repo, (sid,), _ = repo_with(1)
    path = repo.set_dir(sid) / name
    size = path.stat().st_size
    flip_byte(path, {"first": 0, "middle": size // 2, "last": size - 1}[where], 0x01)
    for level in ("quick", "full"):
        rep = verify_committed(repo, sid, level=level)
        assert not rep.ok, f"{level}: flipped {name}[{where}] not detected"
        assert names(rep, sid, name), rep.problems


@pytest.mark.parametrize("name", [MANIFEST, SUMS])
def test_every_single_byte_flip_of_the_metadata_is_caught(repo_with, name: str) -> None:
    """Not just the artifact checksums: a damaged mode, mtime or holder in the snapshot index would
    restore wrong data silently, so every byte of manifest.json (and SHA256SUMS) is covered."""
    repo, (sid,), _ = repo_with(1)
    path = repo.set_dir(sid) / name
    original = path.read_bytes()
    missed = []
    for i in range(len(original)):
        flip_byte(path, i, 0x01)
        if verify_committed(repo, sid, level="quick").ok:
            missed.append((i, original[max(0, i - 20):i + 5]))
        path.write_bytes(original)
    assert not missed, f"{len(missed)} undetected flips, e.g. {missed[:3]}"


def test_truncated_and_missing_artifacts(repo_with) -> None:
    repo, (a, b), _ = repo_with(2)
    p = repo.set_dir(a) / FILES
    p.write_bytes(p.read_bytes()[:-10])
    (repo.set_dir(b) / DB).unlink()
    for level in ("quick", "full"):
        ra, rb = verify_committed(repo, a, level=level), verify_committed(repo, b, level=level)
        assert names(ra, a, FILES) and any("size" in x for x in ra.problems)
        assert names(rb, b, DB) and any("missing" in x for x in rb.problems)


def test_missing_base_of_an_incremental(repo_with) -> None:
    repo, (full, incr), _ = repo_with(1, incremental=True)
    repo.delete(BackupId(full))
    rep = verify_committed(repo, incr)
    assert not rep.ok and any(full in p and "no longer" in p for p in rep.problems)


# ----------------------------------------------------------------------------- damage behind matching checksums


def test_corrupt_archive_with_matching_checksums_fails_the_full_level(repo_with) -> None:
    repo, (sid,), _ = repo_with(1)
    d = repo.set_dir(sid)
    data = bytearray((d / FILES).read_bytes())
    data[len(data) // 2] ^= 0xFF
    reseal(d, files=bytes(data))
    assert verify_committed(repo, sid, level="quick").ok  # every checksum matches: quick cannot see it
    rep = verify_committed(repo, sid, level="full")
    assert not rep.ok and names(rep, sid, FILES), rep.problems


def test_valid_archive_with_altered_content_fails_the_full_level(repo_with) -> None:
    """A well-formed zstd stream of a well-formed tar whose file bytes differ from the index."""
    repo, (sid,), _ = repo_with(1)
    d = repo.set_dir(sid)
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((d / FILES).read_bytes())).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as src, \
            tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            body = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "app/models.py":
                body = body.replace(b"Order", b"Evil!")  # type: ignore[union-attr]  # same size
            dst.addfile(member, io.BytesIO(body) if body is not None else None)
    reseal(d, files=zstandard.ZstdCompressor().compress(out.getvalue()))
    assert verify_committed(repo, sid, level="quick").ok
    rep = verify_committed(repo, sid, level="full")
    assert any("app/models.py" in p and "does not match" in p for p in rep.problems), rep.problems


def test_valid_database_dump_with_other_rows_fails_the_full_level(repo_with, tmp_path: Path) -> None:
    repo, (sid,), _ = repo_with(1)
    d = repo.set_dir(sid)
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(zstandard.ZstdDecompressor().stream_reader(io.BytesIO((d / DB).read_bytes())).read())
    conn = sqlite3.connect(copy)
    conn.execute("INSERT INTO customers(name) VALUES ('intruder')")
    conn.commit()
    conn.close()
    reseal(d, database=zstandard.ZstdCompressor().compress(copy.read_bytes()))
    assert verify_committed(repo, sid, level="quick").ok
    rep = verify_committed(repo, sid, level="full")
    assert any(DB in p and "customers" in p and "manifest says" in p for p in rep.problems), rep.problems

    reseal(d, database=zstandard.ZstdCompressor().compress(b"not a database at all" * 100))
    rep = verify_committed(repo, sid, level="full")
    assert any(DB in p and "not an SQLite database" in p for p in rep.problems), rep.problems


def test_a_manifest_naming_an_unknown_engine_is_a_problem_not_a_crash(repo_with) -> None:
    repo, (sid,), _ = repo_with(1)
    d = repo.set_dir(sid)
    m = mf.loads((d / MANIFEST).read_bytes())
    assert isinstance(m.database, DatabaseInfo)
    text = mf.dumps(replace(m, database=replace(m.database, engine="rqlite"))).encode()
    (d / MANIFEST).write_bytes(text)
    sums = [*m.artifacts, Artifact(MANIFEST, "manifest", len(text), hashlib.sha256(text).hexdigest())]
    (d / SUMS).write_text(mf.sha256sums(sums))
    rep = verify_committed(repo, sid, level="full")
    assert any(DB in p and "rqlite" in p for p in rep.problems), rep.problems


# ----------------------------------------------------------------------------- the CLI (one Prefect run)


# in this process; the Prefect flow variant (temporary server, ~15 s) is the restore's below, and the
# filter on Prefect's loggers is tested in tests/unit/test_cli_quiet.py
@pytest.mark.parametrize("runner", ["plain"])
def test_cli_verify_fails_naming_the_set_and_the_file(runner: str, repo_with) -> None:
    repo, (good, bad), config = repo_with(2)
    flip_byte(repo.set_dir(bad) / FILES, 100)
    res = run_cli("--config", str(config), "verify", timeout=300, env=cli_env(ERP_BACKUP_RUNNER=runner))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("erp-backup: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr[-2000:]
    assert f"verification of {bad} failed" in errors[0] and f"{bad}/{FILES}" in errors[0]
    assert good not in errors[0]
    assert f"{good}: verification passed" in res.stdout + res.stderr  # the other set was checked too
    # the operator sees the table, then one error line: no traceback, no repeated failure list
    assert "Traceback" not in res.stderr and "Encountered exception" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count(f"{bad}/{FILES}") == 1, res.stderr[-3000:]
    assert res.stdout.count(f"{bad}/{FILES}") == 1 and "FAILED" in res.stdout, res.stdout


@pytest.mark.parametrize("runner", ["plain", "flow"])
def test_cli_failed_restore_prints_one_error_line_and_no_traceback(runner: str, repo_with, tmp_path: Path) -> None:
    repo, (sid,), config = repo_with(1)
    flip_byte(repo.set_dir(sid) / FILES, 100)
    target = tmp_path / "restored"
    res = run_cli("--config", str(config), "restore", "--backup", sid, "--target-dir", str(target), timeout=300,
                  env=cli_env(ERP_BACKUP_RUNNER=runner))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("erp-backup: error: ") and "corrupt" in lines[-1], res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Encountered exception" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("corrupt") == 1, res.stderr[-3000:]
