"""The streaming change plan (``core/changes.py:stream_changes``) and the index-line helpers it runs
on in a backup (``core/manifest.py``: ``line_path``, ``carry_line``, ``dump_with_index``): the
same plan as the set-based ``plan_changes`` on random trees, whether the reference is entries or
the parent's index lines; out-of-order input refused; manifests byte for byte as before."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erp_backup.core import manifest as mf
from erp_backup.core.changes import (
    ARCHIVE,
    CARRY,
    DELETED,
    UnsortedIndex,
    plan_changes,
    same_stat_carry,
    stream_changes,
)
from erp_backup.core.models import BackupId, BackupKind, EntryType, FileEntry, Manifest

names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
                min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
# surrogate-escaped bytes (names that are not UTF-8), quotes and backslashes included
odd = st.sampled_from(['a"b', "c\\d", "e\udcff", 'x","type":"', "\n", "\x85", "\u2028", "é", "a.py", "a-b", "a b"])
paths = st.lists(st.one_of(names, odd), min_size=1, max_size=3).map("/".join)
HOLDERS = ["20261128T020000Z-full", "20261128T030000Z-incr", "20261101T010000Z-monthly"]


@st.composite
def entries(draw: st.DrawFn, *, reference: bool) -> list[FileEntry]:
    ps = draw(st.lists(paths, max_size=25, unique=True))
    out = []
    for p in ps:
        typ = draw(st.sampled_from(list(EntryType)))
        e = FileEntry(p, typ, mode=draw(st.sampled_from([0o644, 0o600, 0o4755])), mtime_ns=draw(st.integers(0, 2)),
                      size=draw(st.integers(0, 2)) if typ is EntryType.FILE else 0, uid=draw(st.integers(0, 1)),
                      gid=0, ino=draw(st.integers(0, 2)),
                      target=draw(st.sampled_from(["t", 'q"\\'])) if typ is EntryType.SYMLINK else None)
        if reference and typ is EntryType.FILE:
            holder = draw(st.sampled_from([*HOLDERS, None]))
            sha = draw(st.sampled_from(["0" * 64, "ab" * 32, None]))
            e = FileEntry(e.path, e.type, e.mode, e.mtime_ns, e.size, e.uid, e.gid, e.ino, sha, holder)
        out.append(e)
    return out


def _by_path(es: list[FileEntry]) -> list[FileEntry]:
    return sorted(es, key=lambda e: e.path)


def _split(events: list[tuple[str, object]]) -> tuple[list[object], list[object], list[object]]:
    return ([x for k, x in events if k == ARCHIVE], [x for k, x in events if k == CARRY],
            [x for k, x in events if k == DELETED])


@settings(max_examples=300, deadline=None)
@given(entries(reference=True), entries(reference=False), st.randoms(use_true_random=False))
def test_the_stream_plans_what_the_set_based_plan_does(old: list[FileEntry], cur: list[FileEntry], rnd) -> None:
    # the current scan keeps some of the reference's paths unchanged (else nothing is ever carried)
    cur_paths = {e.path for e in cur}
    cur = cur + [FileEntry(o.path, o.type, o.mode, o.mtime_ns, o.size, o.uid, o.gid, o.ino, target=o.target)
                 for o in old if o.path not in cur_paths and rnd.random() < 0.6]
    plan = plan_changes(cur, {e.path: e for e in old})
    events = list(stream_changes(_by_path(cur), _by_path(old), lambda e: e.path, same_stat_carry))
    archive, carried, deleted = _split(events)
    assert archive == list(plan.archive)
    assert carried == list(plan.carried)
    assert deleted == list(plan.deleted)
    assert [x if isinstance(x, str) else x.path for _, x in events if True] == \
        sorted(x if isinstance(x, str) else x.path for _, x in events)  # type: ignore[union-attr]

    # the same plan from the reference's index lines, as a backup reads the parent's manifest
    lines = [mf.entry_line(e) for e in _by_path(old)]
    assert [mf.line_path(t) for t in lines] == [e.path for e in _by_path(old)]
    events = list(stream_changes(_by_path(cur), lines, mf.line_path, mf.carry_line))
    archive, carried_l, deleted = _split(events)
    # a carried file whose reference sha256/holder is malformed (here: no holder) is archived again
    assert archive == list(plan.archive) and deleted == list(plan.deleted)
    assert [c[0] for c in carried_l] == [mf.entry_line(e) for e in plan.carried]  # type: ignore[index]
    assert [c[1] for c in carried_l] == [e.holder if e.type is EntryType.FILE else None  # type: ignore[index]
                                         for e in plan.carried]


def test_a_malformed_reference_value_is_archived_again_not_copied() -> None:
    cur = FileEntry("a", EntryType.FILE, 0o644, 5, 3, 0, 0, 7)
    good = mf.entry_line(FileEntry("a", EntryType.FILE, 0o644, 5, 3, 0, 0, 7, "ab" * 32, HOLDERS[0]))
    assert mf.carry_line(cur, good) == (good, HOLDERS[0], "a")
    for bad in (good.replace("ab" * 32, "AB" * 32), good.replace(HOLDERS[0], "../../etc"),
                good.replace('"holder"', '"holder2"'), good[:-1] + ',"x":1}',
                good.replace('"mtime_ns":5', '"mtime_ns":6')):
        assert mf.carry_line(cur, bad) is None, bad


@pytest.mark.parametrize("which", ["reference", "current"])
def test_a_stream_out_of_order_is_refused(which: str) -> None:
    a, b = (FileEntry(p, EntryType.DIR, 0o755, 1) for p in ("a", "b"))
    ordered, unordered = [a, b], [b, a]
    ref, cur = (unordered, ordered) if which == "reference" else (ordered, unordered)
    with pytest.raises(UnsortedIndex):
        list(stream_changes(cur, ref, lambda e: e.path, same_stat_carry))
    with pytest.raises(UnsortedIndex):  # a path twice
        list(stream_changes([a], [a, a] if which == "reference" else [], lambda e: e.path, same_stat_carry)
             if which == "reference" else stream_changes([a, a], [], lambda e: e.path, same_stat_carry))


def test_a_line_in_another_layout_is_no_index_line() -> None:
    with pytest.raises(mf.IntegrityError):
        mf.line_path('{"type":"dir","path":"a"}')


def _old_dump_lines(m: Manifest) -> str:
    """``dump_lines`` as it was before the index could stream from a file (the reference format)."""
    head = json.dumps(mf._header(m), indent=2, ensure_ascii=True)
    if not m.files:
        return head[:-2] + ',\n  "files": []\n}\n'
    body = ",\n".join("    " + mf.entry_line(e) for e in m.files)
    return head[:-2] + ",\n" + mf.FILES_MARKER + "\n" + body + "\n  ]\n}\n"


@settings(max_examples=50, deadline=None)
@given(entries(reference=True), st.integers(0, 5000))
def test_the_streamed_manifest_is_byte_for_byte_the_old_one(files: list[FileEntry], extra: int) -> None:
    t = datetime(2026, 11, 28, 2, tzinfo=UTC)
    files = _by_path(files) + [FileEntry(f"z/{i:05d}", EntryType.DIR, 0o755, i) for i in range(extra % 3 * 2100)]
    m = Manifest(BackupId("20261128T020000Z-full"), BackupKind.FULL, t, t, "h", "v", "/src", files=tuple(files))
    text = _old_dump_lines(m)
    assert "".join(mf.dump_lines(m)) == text
    assert "".join(mf.dump_with_index(Manifest(m.id, m.kind, t, t, "h", "v", "/src"),
                                      (mf.entry_line(e) for e in files))) == text
    assert mf.load_lines(io.StringIO(text, newline="")).files == tuple(files)
