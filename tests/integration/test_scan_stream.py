"""The scan as a stream (``adapters/scan.py:iter_tree``): the same entries as ``scan_tree``, no
duplicates from overlapping include paths, root errors raised before the walk starts. Before: an
include listed before ``.`` (``["apps/a", "."]``) made the walk skip the rest of ``apps`` (its
ancestor ``apps`` was "seen", so never walked): those files were not backed up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from erp_backup.adapters.scan import iter_tree, scan_tree
from erp_backup.core.errors import SourceError
from tests.conftest import make_small_project, write_file

pytestmark = pytest.mark.integration


def _tree(root: Path) -> Path:
    make_small_project(root)
    write_file(root / "apps/a-b/x.py", "x")
    write_file(root / "apps/a/y.py", "y")
    write_file(root / "apps/a0/z.py", "z")
    os.mkfifo(root / "apps/pipe")
    return root


@pytest.mark.parametrize("include", [(".",), ("apps", "apps/a", "apps/a/y.py"), ("apps/a", "."), ("",)])
def test_the_stream_is_the_scan_without_duplicates(tmp_path: Path, include: tuple[str, ...]) -> None:
    root = _tree(tmp_path / "erp")
    skipped: list[tuple[str, str]] = []
    streamed = list(iter_tree(root, include, ["*.pyc"], [], skipped))
    paths = [e.path for e in streamed]
    assert len(paths) == len(set(paths)), paths
    whole = scan_tree(root, include, ["*.pyc"])
    assert sorted(streamed, key=lambda e: e.path) == whole.entries
    assert skipped == whole.skipped and any(p == "apps/pipe" for p, _ in skipped)
    if "." in include or "" in include:  # the whole tree, whatever else is listed before it
        assert {"apps/a-b/x.py", "apps/a/y.py", "apps/a0/z.py", "manage.py"} <= set(paths), paths
    if include == ("apps", "apps/a", "apps/a/y.py"):
        assert "apps/a/y.py" in paths and "manage.py" not in paths


def test_a_missing_root_fails_at_the_call_not_later(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        iter_tree(tmp_path / "gone")  # not iterated: the check is eager


def test_the_whole_tree_streams_in_path_order(tmp_path: Path) -> None:
    """The backup merges the walk with the parent's sorted index, so the walk itself must come in
    path order: a directory's subtree after its siblings ``name.py``, ``name-x``, ``name x``
    (``.``, ``-`` and `` `` sort before ``/``), which plain depth-first order gets wrong."""
    root = tmp_path / "erp"
    for p in ["a/x", "a.py", "a-b/y", "a b", "a/z/q", "a/z.txt", "a/z-1/r", "b", "ab/c", "a0/k", "é/k", "a/z/q.py"]:
        write_file(root / p, "x")
    (root / "lnk").symlink_to("a")
    paths = [e.path for e in iter_tree(root)]
    assert paths == sorted(paths) and len(paths) == len(set(paths)) == 20, paths
    assert paths.index("a.py") < paths.index("a/x")  # not depth-first
