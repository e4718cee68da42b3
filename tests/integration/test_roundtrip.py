"""Round trip, as a property: full -> mutations -> incremental -> mutations -> differential -> mutations ->
incremental; every set, restored into a fresh directory, is exactly the tree at its moment.

The tree is checked with an independent ``os.walk`` comparator (``tests.conftest.tree_state``), never
with the engine's own scan. Change detection is stat-based by design (size, mtime_ns, inode, mode, owner):
every content change here also gets a new, distinct mtime (a same-size, same-mtime rewrite in place is
undetectable by design and is not generated).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import DEFAULT_EXCLUDES
from erp_backup.core.models import BackupKind, EntryType
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from tests.conftest import diff_states, make_settings, make_sqlite, tree_state

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
NAMES = ["a", "b.txt", "Ç d.py", "数据.bin", "e-f", ".hidden", "g h", "z"]
JUNK = ["__pycache__/x.cpython-311.pyc", "node_modules/pkg/a.js", "stale.pyc", "media/up.jpg", "venv/lib.py"]
FILE_MODES = [0o600, 0o644, 0o755, 0o700, 0o640]
DIR_MODES = [0o700, 0o755, 0o750]
LINK_TARGETS = ["/etc", "/etc/passwd", "../../outside", "does/not/exist", ".", ".."]
NOBODY = 65534
KINDS = [BackupKind.FULL, BackupKind.INCREMENTAL, BackupKind.DIFFERENTIAL, BackupKind.INCREMENTAL]

contents = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=120).map(lambda s: s.encode()),
    st.tuples(st.sampled_from([0, 1, 511, 512, 513, 4096, 70_001]), st.integers(0, 2**32)).map(
        lambda t: random.Random(t[1]).randbytes(t[0])),
)


class Tree:
    """The live tree plus a clock for explicit, always-new mtimes."""

    def __init__(self, root: Path, data: st.DataObject) -> None:
        self.root, self.data = root, data
        self.clock = 1_700_000_000_000_000_000

    def tick(self) -> int:
        self.clock += 1_000_003_007
        return self.clock

    def draw(self, strategy: st.SearchStrategy, label: str) -> object:
        return self.data.draw(strategy, label=label)

    def pick(self, items: list[str], label: str) -> str | None:
        return self.draw(st.sampled_from(sorted(items)), label) if items else None

    def listing(self) -> tuple[list[str], list[str], list[str]]:
        """(files, dirs, links) that the backup includes (rel paths); dirs exclude the root."""
        files, dirs, links = [], [], []
        for rel, facts in tree_state(self.root).items():
            {"file": files, "dir": dirs, "link": links}[str(facts[0])].append(rel)
        return files, dirs, links

    def new_path(self, dirs: list[str]) -> Path | None:
        parent = self.pick(["", *dirs], "parent")
        name = self.draw(st.sampled_from(NAMES), "name")
        p = self.root / (parent or "") / str(name)
        return None if os.path.lexists(p) else p

    def write(self, p: Path, data: bytes | None = None, mode: int | None = None) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.draw(contents, "content") if data is None else data)
        os.chmod(p, self.draw(st.sampled_from(FILE_MODES), "mode") if mode is None else mode)
        t = self.tick()
        os.utime(p, ns=(t, t))

    # ------------------------------------------------------------------ operations
    def op(self, name: str) -> None:
        files, dirs, links = self.listing()
        r = self.root
        if name == "add_file":
            p = self.new_path(dirs)
            if p is not None:
                self.write(p)
        elif name == "add_nested_file":
            p = self.new_path(dirs)
            if p is not None:
                self.write(p / str(self.draw(st.sampled_from(NAMES), "leaf")))
        elif name == "modify_same_size" and files:
            p = r / str(self.pick(files, "file"))
            old = p.read_bytes()
            if old:
                i = self.draw(st.integers(0, len(old) - 1), "at")
                new = old[:i] + bytes([old[i] ^ 0x5A]) + old[i + 1:]
                with open(p, "r+b") as f:  # in place: same inode, same size
                    f.write(new)
            t = self.tick()
            os.utime(p, ns=(t, t))
        elif name == "modify_resize" and files:
            p = r / str(self.pick(files, "file"))
            with open(p, "ab") as f:
                f.write(self.draw(st.binary(min_size=1, max_size=50), "extra"))
            t = self.tick()
            os.utime(p, ns=(t, t))
        elif name == "truncate" and files:
            p = r / str(self.pick(files, "file"))
            os.truncate(p, p.stat().st_size // 2)
            t = self.tick()
            os.utime(p, ns=(t, t))
        elif name == "delete" and files + links:
            (r / str(self.pick(files + links, "victim"))).unlink()
        elif name == "rename_file" and files:
            src = r / str(self.pick(files, "file"))
            dst = self.new_path(dirs)
            if dst is not None:
                os.rename(src, dst)
        elif name == "rename_dir" and dirs:
            src = str(self.pick(dirs, "dir"))
            dst = self.new_path([d for d in dirs if d != src and not d.startswith(src + "/")])
            if dst is not None:
                os.rename(r / src, dst)
        elif name == "chmod" and files + dirs:
            rel = str(self.pick(files + dirs, "target"))
            modes = DIR_MODES if (r / rel).is_dir() else FILE_MODES
            os.chmod(r / rel, self.draw(st.sampled_from(modes), "mode"))
        elif name == "chown" and files + dirs + links:
            os.lchown(r / str(self.pick(files + dirs + links, "target")), NOBODY, NOBODY)
        elif name == "file_to_link" and files:
            p = r / str(self.pick(files, "file"))
            p.unlink()
            os.symlink(str(self.draw(st.sampled_from(LINK_TARGETS + files), "target")), p)
        elif name == "link_to_file" and links:
            p = r / str(self.pick(links, "link"))
            p.unlink()
            self.write(p)
        elif name == "dir_to_file" and dirs:
            rel = str(self.pick(dirs, "dir"))
            shutil.rmtree(r / rel)
            self.write(r / rel)
        elif name == "mkdir_empty":
            p = self.new_path(dirs)
            if p is not None:
                p.mkdir(mode=self.draw(st.sampled_from(DIR_MODES), "mode"))
        elif name == "rmtree" and dirs:
            shutil.rmtree(r / str(self.pick(dirs, "dir")))
        elif name == "add_link":
            p = self.new_path(dirs)
            if p is not None:
                os.symlink(str(self.draw(st.sampled_from(LINK_TARGETS + files + dirs), "target")), p)
        elif name == "add_junk":
            parent = self.pick(["", *dirs], "parent")
            self.write(r / (parent or "") / str(self.draw(st.sampled_from(JUNK), "junk")))


OPS = ["add_file", "add_nested_file", "modify_same_size", "modify_resize", "truncate", "delete", "rename_file",
       "rename_dir", "chmod", "chown", "file_to_link", "link_to_file", "dir_to_file", "mkdir_empty", "rmtree",
       "add_link", "add_junk"]


def skeleton(tree: Tree) -> None:
    """What every example has: the modes, links and junk the criteria name."""
    r = tree.root
    tree.write(r / "manage.py", b"#!/usr/bin/env python\n", 0o755)
    tree.write(r / ".env", b"SECRET_KEY=s3cret\n", 0o600)
    tree.write(r / "private/key.bin", os.urandom(100), 0o700)
    os.chmod(r / "private", 0o700)
    tree.write(r / "apps/sales/models.py", b"class Order: pass\n" * 20, 0o644)
    (r / "apps/empty").mkdir()
    (r / "static/empty/nested").mkdir(parents=True)
    os.symlink("/etc", r / "etc-link")  # points outside the root: kept as a link, never followed
    os.symlink("missing/file", r / "dangling")
    os.symlink("apps/sales", r / "sales-link")  # to a directory inside
    for junk in JUNK:
        tree.write(r / junk, b"junk")
        tree.write(r / "apps/sales" / junk, b"junk")


@settings(max_examples=int(os.environ.get("ERP_BACKUP_TEST_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), big=st.booleans(), n_initial=st.integers(0, 12))
def test_every_set_restores_the_tree_of_its_moment(data: st.DataObject, big: bool, n_initial: int) -> None:
    with tempfile.TemporaryDirectory(prefix="erpb-rt-") as tmp_s:
        tmp = Path(tmp_s)
        root = tmp / "erp"
        root.mkdir()
        make_sqlite(tmp / "db" / "app.sqlite3", rows=5)
        s = make_settings(tmp, root=root)
        tree = Tree(root, data)
        skeleton(tree)
        if big:  # more than one read chunk (1 MiB)
            tree.write(root / "big.bin", random.Random(1).randbytes((1 << 20) + 4097), 0o640)
        for _ in range(n_initial):
            tree.op(data.draw(st.sampled_from(["add_file", "add_nested_file", "mkdir_empty", "add_link"])))

        captured = []
        prev_states: list[dict[str, tuple[object, ...]]] = []
        for step, kind in enumerate(KINDS):
            if step:
                for name in data.draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=8), label="ops"):
                    tree.op(name)
            expected = tree_state(root, dir_mtimes=True)
            assert any(os.path.lexists(root / j) for j in JUNK), "the exclusion check needs junk to exclude"
            res = run_backup(s, kind, now=T0 + timedelta(hours=step))
            m = res.manifest
            assert m.kind is kind
            assert {e.path for e in m.files} == set(expected), "snapshot index != the tree"
            parent_state = None if kind is BackupKind.FULL else (
                prev_states[0] if kind is BackupKind.DIFFERENTIAL else prev_states[-1])
            if parent_state is not None:
                assert set(m.deleted) == set(parent_state) - set(expected)
                # a set archives the files that changed since its parent, and only carries the rest
                archived = {e.path for e in m.files if e.type is EntryType.FILE and e.holder == m.id.value}
                changed = {p for p, f in expected.items() if f[0] == "file" and parent_state.get(p) != f}
                assert changed <= archived
            prev_states.append(expected)
            captured.append((m.id.value, expected))

        repo = LocalRepository(s.storage.local_dir)
        assert [i.value for i in repo.list_ids()] == [c[0] for c in captured]
        for set_id, expected in captured:
            target = tmp / f"restore-{set_id}"
            restore(repo, target_dir=target, backup_id=set_id)
            # no exclusion on the restored side: junk must simply be absent
            actual = tree_state(target, exclude=(), dir_mtimes=True)
            problems = diff_states(expected, actual)
            assert not problems, f"{set_id}: " + "; ".join(problems[:8])
            assert not any(part in DEFAULT_EXCLUDES or part.endswith(".pyc")
                           for p in actual for part in p.split("/"))
        full_target = tmp / f"restore-{captured[0][0]}"
        assert os.readlink(full_target / "etc-link") == "/etc"  # kept as a link, nothing copied from /etc
