"""The files archive read back while it is written (``adapters/archive/selfcheck.py``): the backup's
default (full) verification relies on it instead of decompressing the archive a second time, so it
must catch what that second pass caught: a damaged compressed stream, a truncated one, a tar that
does not hold the index's members."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import zstandard

from erp_backup.adapters.archive import CHUNK, write_tar
from erp_backup.adapters.archive.selfcheck import InlineCheck
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.errors import IntegrityError
from erp_backup.core.models import BackupKind, EntryType, FileEntry
from erp_backup.pipeline import run_backup
from erp_backup.verify import verify_committed
from tests.conftest import make_settings, make_small_project, tree_state, write_file

pytestmark = pytest.mark.integration


def _tree(root: Path) -> list[FileEntry]:
    make_small_project(root)
    write_file(root / "big/noise.bin", os.urandom(3 * CHUNK + 123))
    write_file(root / "big/text.txt", b"invoice line\n" * 300_000)
    write_file(root / ("deep/" + "n" * 120 + ".py"), "long name: PAX header\n")
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath, name)
            st = full.lstat()
            rel = str(full.relative_to(root))
            typ = EntryType.SYMLINK if full.is_symlink() else EntryType.DIR if full.is_dir() else EntryType.FILE
            entries.append(FileEntry(rel, typ, st.st_mode & 0o7777, st.st_mtime_ns,
                                     st.st_size if typ is EntryType.FILE else 0,
                                     target=os.readlink(full) if typ is EntryType.SYMLINK else None))
    return entries


def _compressed(tmp_path: Path) -> tuple[bytes, int, list[FileEntry]]:
    """(zstd bytes of a real tar stream of a small tree, raw size, the entries written)."""
    raw: list[bytes] = []
    res = write_tar(tmp_path / "src", _tree(tmp_path / "src"), lambda b: raw.append(bytes(b)), "S")
    data = b"".join(raw)
    return (zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data), len(data), list(res.entries))


def _check(stream: bytes, raw_size: int, entries: list[FileEntry], piece: int = 65536) -> None:
    c = InlineCheck("S/files.tar.zst")
    for i in range(0, len(stream), piece):
        c.feed(memoryview(stream)[i:i + piece])
    c.result(raw_size, entries)


def test_the_stream_as_written_passes(tmp_path: Path) -> None:
    stream, raw, entries = _compressed(tmp_path)
    _check(stream, raw, entries)
    assert any(e.type is EntryType.SYMLINK for e in entries) and any(len(e.path) > 100 for e in entries)


def test_a_flipped_byte_anywhere_in_the_compressed_stream_is_caught(tmp_path: Path) -> None:
    stream, raw, entries = _compressed(tmp_path)
    for at in (20, len(stream) // 3, len(stream) // 2, len(stream) - 2):
        bad = bytearray(stream)
        bad[at] ^= 0x10
        with pytest.raises(IntegrityError):
            _check(bytes(bad), raw, entries)


def test_a_truncated_stream_is_caught(tmp_path: Path) -> None:
    stream, raw, entries = _compressed(tmp_path)
    for keep in (0, 100, len(stream) // 2, len(stream) - 4, len(stream) - 1):
        with pytest.raises(IntegrityError):
            _check(stream[:keep], raw, entries)


def test_an_index_that_does_not_match_the_archive_is_caught(tmp_path: Path) -> None:
    stream, raw, entries = _compressed(tmp_path)
    files = [i for i, e in enumerate(entries) if e.type is EntryType.FILE]
    variants = [entries[:-1], entries + [entries[files[0]]],
                [*entries[:files[0]], FileEntry(**{**_fields(entries[files[0]]), "size": 1}), *entries[files[0] + 1:]],
                [*entries[:files[0]], FileEntry(**{**_fields(entries[files[0]]), "path": "other"}),
                 *entries[files[0] + 1:]],
                list(reversed(entries))]
    for v in variants:
        with pytest.raises(IntegrityError, match="do not match"):
            _check(stream, raw, v)
    with pytest.raises(IntegrityError, match="decompresses to"):
        _check(stream, raw + 1, entries)


def _fields(e: FileEntry) -> dict[str, object]:
    return {k: getattr(e, k) for k in e.__slots__}


def test_abort_mid_stream_ends_the_reader_thread(tmp_path: Path) -> None:
    stream, _, _ = _compressed(tmp_path)
    c = InlineCheck("S/files.tar.zst")
    c.feed(stream[: len(stream) // 2])
    c.close()
    assert not c._thread.is_alive()


def test_backup_with_default_verification_reads_back_inline_and_stays_verifiable(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _tree(root)
    s = make_settings(tmp_path, root=root)  # verify = "full", the default
    res = run_backup(s, BackupKind.FULL)
    held = sum(1 for e in res.manifest.files if e.type is EntryType.FILE)
    assert res.verify.level == "full" and res.verify.ok and res.verify.files_checked == held > 5
    assert res.verify.bytes_checked >= res.manifest.artifact("files").size  # read back from disk (SHA-256)
    # and the committed set passes the standalone full level (decompress, re-hash every file)
    again = verify_committed(LocalRepository(s.storage.local_dir), res.manifest.id.value, level="full")
    assert again.ok and again.files_checked == held, again.problems
    assert tree_state(root)  # the source is untouched


def test_read_back_mode_checks_and_hashes_the_file_on_disk(tmp_path: Path) -> None:
    """With a path, the check reads the file itself (not the bytes handed to it) and its SHA-256
    is the file's: what SHA256SUMS records is what is on disk."""
    stream, raw, entries = _compressed(tmp_path)
    good = tmp_path / "good.tar.zst"
    good.write_bytes(stream)
    c = InlineCheck("S/files.tar.zst", good)
    for at in range(0, len(stream), 700_000):  # the writer reports its progress in steps
        c.written(min(len(stream), at + 700_000))
    c.result(raw, entries)
    assert c.sha256 == hashlib.sha256(stream).hexdigest() and c.size == len(stream)
    bad = bytearray(stream)
    bad[len(bad) // 2] ^= 0x10
    damaged = tmp_path / "damaged.tar.zst"
    damaged.write_bytes(bytes(bad))
    c = InlineCheck("S/files.tar.zst", damaged)
    c.written(len(bad))
    with pytest.raises(IntegrityError):
        c.result(raw, entries)
    short = tmp_path / "short.tar.zst"
    short.write_bytes(stream[:-3])
    c = InlineCheck("S/files.tar.zst", short)
    c.written(len(stream))  # the writer says more than the file gives back
    with pytest.raises(IntegrityError, match="fewer bytes|cannot be read back"):
        c.result(raw, entries)


def test_a_write_to_the_archive_after_its_read_back_fails_the_backup(tmp_path: Path, monkeypatch) -> None:
    """The read-back took the SHA-256 for SHA256SUMS; a byte changed in the file afterwards (another
    writer, a bug) changes its ctime, so the verification hashes the file again and refuses the set
    (a review had such a set committed with a SHA256SUMS that did not match)."""
    from erp_backup.adapters.archive import artifact

    root = tmp_path / "src"
    _tree(root)
    s = make_settings(tmp_path, root=root)
    first = run_backup(s, BackupKind.FULL)  # a good set that must survive
    real_close = artifact.ArtifactWriter.close

    def close_then_tamper(self: artifact.ArtifactWriter) -> artifact.WrittenArtifact:
        written = real_close(self)
        if self.readback is not None:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                (b,) = os.pread(os.open(self.path, os.O_RDONLY), 1, 100)
                os.pwrite(fd, bytes([b ^ 0x01]), 100)
            finally:
                os.close(fd)
        return written

    monkeypatch.setattr(artifact.ArtifactWriter, "close", close_then_tamper)
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        run_backup(s, BackupKind.FULL)
    monkeypatch.undo()
    repo = LocalRepository(s.storage.local_dir)
    assert repo.list_ids() == [first.manifest.id] and repo.partials() == []
    assert verify_committed(repo, first.manifest.id.value, level="full").ok
