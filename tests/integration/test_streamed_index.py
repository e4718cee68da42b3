"""The backup reads its parent's index as a sorted stream of lines (``backup.scan_changes``). A
parent whose manifest is valid but not in that layout (a compact JSON document, an index out of
order: written by hand, by another tool, or crafted) is read whole instead: the incremental still
carries exactly the unchanged files, and restores to the tree."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup.adapters.index_file import IndexFile
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core import manifest as mf
from erp_backup.core.index_table import IndexTable
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from tests.conftest import diff_states, make_settings, make_small_project, tree_state, write_file

pytestmark = pytest.mark.integration
T = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def _rewrite(set_dir: Path, text: str) -> None:
    """Replace the manifest, with SHA256SUMS following (so the set is intact, just laid out otherwise)."""
    (set_dir / "manifest.json").write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    sums = set_dir / "SHA256SUMS"
    sums.write_text(re.sub(r"^[0-9a-f]{64}  manifest\.json$", f"{digest}  manifest.json", sums.read_text(),
                           flags=re.M))


@pytest.mark.parametrize("layout", ["as written", "compact", "out of order"])
def test_an_incremental_on_any_valid_parent_layout(tmp_path: Path, layout: str) -> None:
    root = make_small_project(tmp_path / "erp")
    for odd in ("odd\x85name.py", 'q"uote.py', "back\\slash.py", "line\u2028sep.txt", "apps.py", "apps-x/a.txt"):
        write_file(root / odd, odd)  # escaped in the index, or sorting between "apps" and "apps/"
    os.mkfifo(root / "a-fifo")  # skipped, never in the index
    s = make_settings(tmp_path, root=root)
    full = run_backup(s, BackupKind.FULL, now=T)
    assert isinstance(full.manifest.files, IndexFile)  # handed on as a view of the file, not a tuple
    written = list(full.manifest.files)
    assert [e.path for e in written] == sorted(e.path for e in written) and len(written) == len(full.manifest.files)
    m = mf.loads((full.path / "manifest.json").read_bytes())
    if layout == "compact":
        _rewrite(full.path, json.dumps(json.loads(mf.dumps(m))))
    elif layout == "out of order":
        _rewrite(full.path, mf.dumps(replace(m, files=tuple(reversed(tuple(m.files))))))
    write_file(root / "apps/new.py", "new = 1\n")
    (root / "manage.py").unlink()
    inc = run_backup(s, BackupKind.INCREMENTAL, now=T + timedelta(hours=1))
    st = inc.manifest.stats
    assert (st.files_changed, st.files_deleted) == (1, 1)
    back = LocalRepository(s.storage.local_dir).read_manifest(inc.manifest.id)
    assert isinstance(back.files, IndexTable)
    paths = [e.path for e in back.files]
    assert paths == sorted(paths) and "apps/new.py" in paths and "manage.py" not in paths
    assert back.deleted == ("manage.py",)
    carried = [e for e in back.files if e.holder == full.manifest.id.value]
    assert len(carried) == sum(1 for e in written if e.holder) - 1  # every unchanged file, not archived again
    assert back.depends_on == (full.manifest.id,)
    target = tmp_path / "restored"
    restore(LocalRepository(s.storage.local_dir), target_dir=target, backup_id=inc.manifest.id.value)
    assert diff_states(tree_state(root, skip=["a-fifo"]), tree_state(target)) == []


@pytest.mark.parametrize("layout", ["as written", "compact"])
def test_a_carried_holder_that_cannot_hold_the_file_is_archived_again(tmp_path: Path, layout: str) -> None:
    """A parent (crafted, or damaged and re-summed) whose index names, as a file's holder, a set that
    is neither the parent nor one it depends on: the incremental archives that file itself instead
    of carrying a reference its restore could not follow (a review had it commit and verify clean)."""
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    f0 = run_backup(s, BackupKind.FULL, now=T).manifest
    f1 = run_backup(s, BackupKind.FULL, now=T + timedelta(hours=1)).manifest
    repo = LocalRepository(s.storage.local_dir)
    d = repo.set_dir(f1.id)
    text = (d / "manifest.json").read_text()
    target = '"path":"app/models.py"'
    line = next(x for x in text.splitlines() if target in x)
    crafted = text.replace(line, line.replace(f'"holder":"{f1.id.value}"', f'"holder":"{f0.id.value}"'))
    assert crafted != text
    if layout == "compact":
        crafted = json.dumps(json.loads(crafted), separators=(",", ":"))
    _rewrite(d, crafted)
    inc = run_backup(s, BackupKind.INCREMENTAL, now=T + timedelta(hours=2)).manifest
    held = {e.path: e.holder for e in inc.files}
    assert held["app/models.py"] == inc.id.value  # archived again, not carried from f0
    assert held["manage.py"] == f1.id.value  # the others are carried as usual
    out = tmp_path / "out"
    restore(repo, target_dir=out, backup_id=inc.id.value)
    assert not diff_states(tree_state(root), tree_state(out))
