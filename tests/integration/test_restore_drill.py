"""The restore-by-hand drill: the README's marked block, run as written by ``sh`` on real sets.

Only the example values change: ``SET=`` and ``DEST=`` get the real set and an empty directory, the
database name ``erp_restored`` a unique one, and of the three database sections only the set's
engine is run. The restored tree must equal the source tree at the time of the set (tar keeps whole
seconds for mtimes) and the restored database the source's rows."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from tests.conftest import REPO, make_settings, make_small_project, make_sqlite, tree_state, write_file
from tests.integration.conftest import unique

pytestmark = pytest.mark.integration
ENGINES = {"sqlite": "# SQLite", "postgresql": "# PostgreSQL", "mysql": "# MySQL/MariaDB"}


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- restore-by-hand:begin -->\n```sh\n(.*?)```\n<!-- restore-by-hand:end -->", text, re.S)
    assert m, "README lost its marked restore-by-hand block"
    return m.group(1)


def script_for(engine: str, set_dir: Path, dest: Path, dbname: str) -> str:
    """The block with the example values replaced and only ``engine``'s database lines."""
    lines = readme_block().splitlines()
    heads = [i for i, ln in enumerate(lines) if ln.startswith(tuple(ENGINES.values()))]
    assert len(heads) == 3, "the block must keep one '# <engine>' section per engine"
    common = lines[: heads[0]]
    (start,) = [i for i in heads if lines[i].startswith(ENGINES[engine])]
    end = min([h for h in heads if h > start], default=len(lines))
    ours = [ln.replace("erp_restored", dbname) for ln in lines[start:end]]
    text = "\n".join(common + ours) + "\n"
    text, n1 = re.subn(r"^SET=\S+", f"SET='{set_dir}'", text, flags=re.M)
    text, n2 = re.subn(r"^DEST=\S+", f"DEST='{dest}'", text, flags=re.M)
    assert n1 == n2 == 1, "the block must start by setting SET= and DEST="
    return text


def run_drill(engine: str, set_dir: Path, dest: Path, dbname: str = "unused") -> str:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PGHOST": "127.0.0.1", "PGUSER": "postgres",
           "MYSQL_HOST": "127.0.0.1", "HOME": str(dest.parent), "LC_ALL": "C.UTF-8"}
    res = subprocess.run(["sh", "-c", script_for(engine, set_dir, dest, dbname)], capture_output=True, text=True,
                         timeout=300, env=env, cwd="/", check=False)
    assert res.returncode == 0, f"the README block failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def coarse(state: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {p: (v[:6] + (int(v[6]) // 10**9,) if v[0] == "file" else v) for p, v in state.items()}  # type: ignore[call-overload]


def chain_of_three(s: Any, root: Path, kinds: tuple[BackupKind, ...]) -> list[tuple[Path, dict[str, Any]]]:
    """Backups of ``kinds`` with changes (new, changed, deleted files) in between: (set dir, tree then)."""
    out = []
    for i, kind in enumerate(kinds):
        if i:
            write_file(root / f"app/added_{i}.py", f"print({i})\n")
            write_file(root / "app/models.py", f"class Order{i}: pass\n" * (10 + i))
            if i == 1:
                (root / "docs/README.md").unlink()
        out.append((run_backup(s, kind).path, tree_state(root)))
    return out


@pytest.mark.parametrize("kinds", [(BackupKind.FULL, BackupKind.INCREMENTAL, BackupKind.INCREMENTAL),
                                   (BackupKind.FULL, BackupKind.INCREMENTAL, BackupKind.DIFFERENTIAL)],
                         ids=["incremental-chain", "differential"])
def test_drill_sqlite(tmp_path: Path, kinds: tuple[BackupKind, ...]) -> None:
    root = make_small_project(tmp_path / "erp")
    db = make_sqlite(tmp_path / "live" / "app.sqlite3")
    s = make_settings(tmp_path, root=root, db=db)
    sets = chain_of_three(s, root, kinds)
    conn = sqlite3.connect(db)
    want_rows = conn.execute("SELECT * FROM customers ORDER BY id").fetchall()
    conn.close()
    set_dir, want_tree = sets[-1]
    dest = tmp_path / "restore" / "erp"
    out = run_drill("sqlite", set_dir, dest)
    assert "ok" in out.splitlines()[-1]  # PRAGMA integrity_check
    assert coarse(tree_state(dest, skip={"db.sqlite3"})) == coarse(want_tree)
    conn = sqlite3.connect(dest / "db.sqlite3")
    assert conn.execute("SELECT * FROM customers ORDER BY id").fetchall() == want_rows
    conn.close()


def test_drill_postgres(tmp_path: Path, pg_db: Callable[..., DatabaseUrl], pg_sql: Callable[..., Any]) -> None:
    live = pg_db("drill")
    pg_sql(live, "CREATE TABLE orders (id serial PRIMARY KEY, item text, price numeric)")
    pg_sql(live, "INSERT INTO orders(item, price) SELECT 'i' || g, g * 1.5 FROM generate_series(1, 250) g")
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root, db=f"postgresql://postgres@127.0.0.1:5432/{live.name}")
    set_dir, want_tree = chain_of_three(s, root, (BackupKind.FULL, BackupKind.INCREMENTAL))[-1]
    target = pg_db("drilled", create=False)  # dropped afterwards by the fixture; the block creates it
    dest = tmp_path / "restore" / "erp"
    run_drill("postgresql", set_dir, dest, target.name)
    assert coarse(tree_state(dest)) == coarse(want_tree)
    assert pg_sql(target, "SELECT count(*), sum(price) FROM orders") == pg_sql(
        live, "SELECT count(*), sum(price) FROM orders")


def test_drill_mariadb(tmp_path: Path, my_db: Callable[..., DatabaseUrl], my_sql: Callable[..., Any]) -> None:
    live = my_db("drill")
    my_sql(live, "CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, item TEXT)")
    my_sql(live, "INSERT INTO orders(item) VALUES " + ",".join(f"('i{i}')" for i in range(150)))
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root, db=f"mysql://root@127.0.0.1:3306/{live.name}")
    set_dir, want_tree = chain_of_three(s, root, (BackupKind.FULL, BackupKind.INCREMENTAL))[-1]
    target = my_db("drilled", create=False)
    dest = tmp_path / "restore" / "erp"
    run_drill("mysql", set_dir, dest, target.name)
    assert coarse(tree_state(dest)) == coarse(want_tree)
    assert my_sql(target, "SELECT COUNT(*), MAX(item) FROM orders") == my_sql(live, "SELECT COUNT(*), MAX(item) "
                                                                                  "FROM orders")


def test_unique_names_do_not_clash() -> None:
    assert unique("a") != unique("a")
