"""The packed snapshot index (``core/index_table.py``): every entry reads back equal, odd values
(crafted manifests: uppercase or short digests, huge inodes, many holders) included."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from erp_backup.core import manifest as mf
from erp_backup.core.index_table import IndexTable
from erp_backup.core.models import EntryType, FileEntry

shas = st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64),
                 st.sampled_from(["AB" * 32, "x", ""]))
ints = st.one_of(st.integers(0, 3), st.integers(-(1 << 70), 1 << 70))


@st.composite
def entry(draw: st.DrawFn) -> FileEntry:
    typ = draw(st.sampled_from(list(EntryType)))
    return FileEntry(draw(st.text(min_size=1, max_size=8)), typ, mode=draw(st.sampled_from([0o644, 0o7777, 1 << 40])),
                     mtime_ns=draw(ints), size=draw(ints), uid=draw(st.sampled_from([0, 1000, (1 << 32) - 2])),
                     gid=draw(st.sampled_from([0, 5, 1 << 33])), ino=draw(ints), sha256=draw(shas),
                     holder=draw(st.sampled_from([None, "20261128T020000Z-full", "20261128T030000Z-incr"])),
                     target=draw(st.sampled_from([None, "t", ""])))


@settings(max_examples=200, deadline=None)
@given(st.lists(entry(), max_size=30))
def test_every_entry_reads_back_equal(entries: list[FileEntry]) -> None:
    t = IndexTable(entries)
    assert len(t) == len(entries)
    assert list(t) == entries
    assert [t[i] for i in range(-len(entries), 0)] == entries
    assert t == tuple(entries) and tuple(entries) == t
    assert [t.path(i) for i in range(len(t))] == [e.path for e in entries]
    assert [t.holder(i) for i in range(len(t))] == [e.holder for e in entries]


def test_more_holders_than_the_packed_codes() -> None:
    es = [FileEntry(f"f{i}", EntryType.FILE, 0o644, 1, holder=f"h{i}") for i in range(70_000)]
    t = IndexTable(es)
    assert t[69_999].holder == "h69999" and t.holder(69_999) == "h69999" and t[3] == es[3]


def test_a_manifest_read_back_holds_a_packed_index() -> None:
    es = tuple(FileEntry(f"d/{i:04d}", EntryType.FILE, 0o644, i, 10, sha256=f"{i:064x}", holder="20261128T020000Z-full")
               for i in range(3000))
    from tests.unit.test_core import make_manifest

    m = make_manifest(files=es)
    back = mf.load_lines(io.StringIO(mf.dumps(m), newline=""))
    assert isinstance(back.files, IndexTable) and back.files == es and back == m
