"""The snapshot-index codec's fast paths (batched JSON decoding, direct string writing) give
exactly what the plain ``json`` module gives, across batch boundaries, and still refuse
malformed lines."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erp_backup.core import manifest as mf
from erp_backup.core.errors import IntegrityError
from erp_backup.core.models import EntryType, FileEntry
from tests.unit.test_core import entries, make_manifest


@given(st.text())
def test_jstr_is_json_dumps(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        assert mf._jstr(text) == json.dumps(text, ensure_ascii=True)
    else:
        assert mf._jstr(text) == json.dumps(text, ensure_ascii=False)


@settings(max_examples=25, deadline=None)
@given(st.lists(entries(), min_size=0, max_size=40), st.integers(1, 5))
def test_roundtrip_across_batch_boundaries(files: list[FileEntry], batch: int) -> None:
    unique = tuple({e.path: e for e in files}.values())
    m = make_manifest(files=unique)
    old = mf._BATCH
    mf._BATCH = batch  # small batches: every boundary case with few entries
    try:
        text = mf.dumps(m)
        assert mf.load_lines(io.StringIO(text, newline="")) == m
        assert mf.loads(text) == m  # the whole-document parser agrees
    finally:
        mf._BATCH = old


def _file(i: int) -> FileEntry:
    return FileEntry(f"f{i}.py", EntryType.FILE, 0o644, i, 10, sha256="ab" * 32, holder="20261128T020000Z-full")


def test_many_entries_roundtrip() -> None:
    m = make_manifest(files=tuple(_file(i) for i in range(3 * mf._BATCH + 7)))
    assert mf.load_lines(io.StringIO(mf.dumps(m), newline="")) == m


@pytest.mark.parametrize("bad", [
    '    {"path": "a", "type": "file"}, {"path": "b", "type": "file"},\n',  # two objects on one line
    '    {"path": "a"]}\n',
    '    {"path": "x", "type": "nonsense", "mode": "0644", "mtime_ns": 1},\n',
    '    {"path": "x", "type": "file", "mode": "zz", "mtime_ns": 1},\n',
])
def test_malformed_lines_are_refused(bad: str) -> None:
    m = make_manifest(files=tuple(_file(i) for i in range(5)))
    lines = mf.dumps(m).splitlines(keepends=True)
    lines.insert(len(lines) - 5, bad)
    with pytest.raises(IntegrityError):
        mf.load_lines(lines)
