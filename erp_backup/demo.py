"""``erp-backup demo``: a sample Django ERP, three backups, three restores, checked.

It builds a small but realistic deployment (SQLite database with a few thousand
rows, settings, .env, apps, scripts, docs, plus the junk that must be left out:
venv, node_modules, media, staticfiles, __pycache__), then runs the real flows
under Prefect's ephemeral API: full -> changes -> incremental -> changes ->
differential, restores each set into a fresh directory and compares it with the
state captured at that moment.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import random
import shutil
import sqlite3
import stat
import sys
import tempfile
import time
from pathlib import Path

from erp_backup.config import DEFAULT_EXCLUDES
from erp_backup.tables import print_table

State = dict[str, tuple[object, ...]]


# ----------------------------------------------------------------------------- sample project

SETTINGS_PY = '''"""Django settings for django_erp (demo)."""
import environ

env = environ.Env()
environ.Env.read_env()
SECRET_KEY = env("SECRET_KEY")
DEBUG = False
INSTALLED_APPS = ["apps.sales", "apps.inventory", "apps.ledger"]
DATABASES = {"default": env.db()}
'''


def _write(p: Path, text: str | bytes, mode: int = 0o644) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        p.write_text(text)
    else:
        p.write_bytes(text)
    os.chmod(p, mode)


def make_project(root: Path, seed: int = 7) -> Path:
    """Create the sample deployment; return the path of its SQLite database."""
    rng = random.Random(seed)
    db = root / "db.sqlite3"
    _write(root / ".env", f"SECRET_KEY=demo-{seed}-not-a-real-secret\nDATABASE_URL=sqlite:///{db}\n", 0o600)
    _write(root / "manage.py", "#!/usr/bin/env python\nimport sys\n# django manage.py\n", 0o755)
    _write(root / "django_erp/__init__.py", "")
    _write(root / "django_erp/settings.py", SETTINGS_PY)
    _write(root / "django_erp/urls.py", "urlpatterns = []\n")
    for app in ("sales", "inventory", "ledger"):
        _write(root / f"apps/{app}/__init__.py", "")
        for mod in ("models", "views", "admin", "serializers"):
            body = "".join(f"# {app}.{mod} line {i}: {rng.random():.6f}\n" for i in range(rng.randint(50, 400)))
            _write(root / f"apps/{app}/{mod}.py", body)
        _write(root / f"apps/{app}/migrations/0001_initial.py", "# migration\n" * 30)
        _write(root / f"apps/{app}/__pycache__/models.cpython-311.pyc", os.urandom(2048))
        _write(root / f"apps/{app}/models.pyc", os.urandom(512))
    _write(root / "scripts/deploy.sh", "#!/bin/sh\necho deploy\n", 0o750)
    _write(root / "scripts/cron.txt", "0 2 * * * backup\n")
    _write(root / "docs/README.md", "# ERP docs\n" + "Lorem ipsum dolor sit amet.\n" * 200)
    _write(root / "docs/logo.bin", os.urandom(64 * 1024))
    (root / "docs/empty-section").mkdir(parents=True, exist_ok=True)
    os.symlink("README.md", root / "docs/index.md")
    # junk that must never reach a backup
    _write(root / "venv/lib/python3.11/site-packages/django/__init__.py", "VERSION = (5, 0)\n")
    _write(root / "node_modules/left-pad/index.js", "module.exports = 1\n")
    _write(root / "media/uploads/invoice-1.pdf", os.urandom(32 * 1024))
    _write(root / "staticfiles/admin/base.css", "body{}\n")
    _make_db(db, rng)
    return db


def _make_db(db: Path, rng: random.Random) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT);
        CREATE TABLE products (id INTEGER PRIMARY KEY, sku TEXT UNIQUE, price NUMERIC, stock INTEGER);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                             created TEXT, total NUMERIC);
        CREATE TABLE order_lines (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders(id),
                                  product_id INTEGER REFERENCES products(id), qty INTEGER);
    """)
    conn.executemany("INSERT INTO customers(name, city) VALUES (?, ?)",
                     [(f"Customer {i}", rng.choice(["上海", "Berlin", "Lyon", None])) for i in range(500)])
    conn.executemany("INSERT INTO products(sku, price, stock) VALUES (?, ?, ?)",
                     [(f"SKU-{i:05d}", round(rng.uniform(1, 500), 2), rng.randint(0, 900)) for i in range(800)])
    conn.executemany("INSERT INTO orders(customer_id, created, total) VALUES (?, ?, ?)",
                     [(rng.randint(1, 500), f"2026-11-{rng.randint(1, 27):02d}", rng.uniform(5, 5000))
                      for _ in range(1500)])
    conn.executemany("INSERT INTO order_lines(order_id, product_id, qty) VALUES (?, ?, ?)",
                     [(rng.randint(1, 1500), rng.randint(1, 800), rng.randint(1, 9)) for _ in range(3000)])
    conn.commit()
    conn.close()


def mutate_files(root: Path, step: int) -> None:
    """Modify, add, delete, rename, chmod, re-link, add an empty directory."""
    p = root / "apps/sales/views.py"
    p.write_text(p.read_text() + f"# change {step}\n")
    _write(root / f"apps/sales/reports_{step}.py", f"REPORT = {step}\n")
    if (root / "apps/inventory/admin.py").exists():
        (root / "apps/inventory/admin.py").unlink()
    src = root / "scripts/cron.txt"
    if src.exists():
        src.rename(root / f"scripts/cron-{step}.txt")
    os.chmod(root / "docs/README.md", 0o600 if step % 2 else 0o640)
    link = root / "docs/index.md"
    link.unlink()
    os.symlink("../django_erp/settings.py" if step % 2 else "README.md", link)
    (root / f"docs/empty-{step}").mkdir()
    _write(root / f"media/new-upload-{step}.jpg", os.urandom(1024))  # excluded: must not appear


def mutate_db(db: Path, step: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO customers(name, city) VALUES (?, ?)", (f"New customer {step}", "Paris"))
    conn.execute("UPDATE products SET stock = stock + ? WHERE id % 7 = 0", (step,))
    conn.execute("DELETE FROM order_lines WHERE id % 50 = ?", (step,))
    conn.commit()
    conn.close()


# ----------------------------------------------------------------------------- state capture


def tree_state(root: Path, exclude: list[str], skip: set[str]) -> State:
    """path -> (type, mode, content digest | link target): an independent walk, for checking."""
    out: State = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        keep = []
        for d in sorted(dirnames):
            rel = os.path.normpath(os.path.join(rel_dir, d))
            if any(fnmatch.fnmatch(d, pat) for pat in exclude) or rel in skip:
                continue
            full = os.path.join(dirpath, d)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            else:
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if any(fnmatch.fnmatch(f, pat) for pat in exclude) or rel in skip:
                continue
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(Path(full).read_bytes()).hexdigest(),
                            st.st_mtime_ns)
    return out


def db_state(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        out = {}
        for t in tables:
            rows = sorted(repr(r) for r in conn.execute(f'SELECT * FROM "{t}"'))
            out[t] = f"{len(rows)} rows, sha256 {hashlib.sha256(chr(10).join(rows).encode()).hexdigest()[:16]}"
        return out
    finally:
        conn.close()


def compare(expected: State, actual: State) -> list[str]:
    problems = []
    for p in sorted(set(expected) | set(actual)):
        if p not in actual:
            problems.append(f"missing {p}")
        elif p not in expected:
            problems.append(f"unexpected {p}")
        elif expected[p] != actual[p]:
            problems.append(f"differs {p}: {expected[p]} != {actual[p]}")
    return problems


# ----------------------------------------------------------------------------- the demo


def run_demo(workdir: Path | None = None, *, keep: bool = False) -> int:
    from erp_backup.config import load_settings
    from erp_backup.core.models import BackupJob
    from erp_backup.flows.backup import CLI_FLOWS
    from erp_backup.flows.restore import restore_flow

    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="erp-backup-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    root, backups = base / "erp", base / "backups"
    if root.exists() or backups.exists():
        print(f"{base} already holds a demo; use an empty --dir", file=sys.stderr)
        return 2
    db = make_project(root)
    config = base / "config.toml"
    config.write_text(
        f'[project]\nroot = "{root}"\n'
        f'[database]\nurl = "sqlite:///{db}"\n'
        f'[storage]\nlocal_dir = "{backups}"\n'
        "[backup]\nretry_delay_s = [1]\n"
    )
    settings = load_settings(config)  # loaded once, handed to every flow
    print(f"demo project: {root}\nbackups:      {backups}\nconfig:       {config}\n")
    skip = {"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"}
    steps = [(job.value, CLI_FLOWS[job]) for job in (BackupJob.FULL, BackupJob.INCREMENTAL, BackupJob.DIFFERENTIAL)]
    captured = []
    for n, (name, fl) in enumerate(steps):
        if n:
            time.sleep(1.0)  # distinct mtimes and set ids
            mutate_files(root, n)
            mutate_db(db, n)
        t = time.monotonic()
        row = fl(settings, None)
        row["_wall"] = time.monotonic() - t
        captured.append((name, row, tree_state(root, list(DEFAULT_EXCLUDES), skip), db_state(db)))
    summary = []
    failed = False
    for name, row, files, dbs in captured:
        target = base / f"restore-{name}"
        t = time.monotonic()
        restore_flow(target_dir=str(target), backup_id=str(row["id"]), config=str(config))
        took = time.monotonic() - t
        problems = compare(files, tree_state(target, list(DEFAULT_EXCLUDES), skip))
        restored_db = db_state(target / "db.sqlite3")
        if restored_db != dbs:
            problems.append(f"database differs: {restored_db} != {dbs}")
        failed |= bool(problems)
        for p in problems[:10]:
            print(f"  {name}: {p}", file=sys.stderr)
        summary.append({
            "kind": name, "id": row["id"], "files changed": row["files changed"],
            "deleted": row["files deleted"], "bytes out": row["bytes out"], "backup s": round(row["_wall"], 2),
            "restore s": round(took, 2), "files checked": len(files),
            "db rows": sum(int(v.split()[0]) for v in dbs.values()),
            "restore matches": "yes" if not problems else f"NO ({len(problems)} differences)",
        })
    print()
    print_table(summary)
    print(f"\nsets in {backups}: " + ", ".join(sorted(p.name for p in backups.iterdir() if not p.name.startswith("."))))
    if not keep and workdir is None:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"kept {base}")
    return 1 if failed else 0
