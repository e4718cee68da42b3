"""Shared helpers for the engine tests: settings, small projects, an independent tree comparator, the CLI.

Plain functions (importable as ``tests.conftest``) plus thin fixtures around them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from erp_backup.config import DEFAULT_EXCLUDES, Settings, settings_from_dict

REPO = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "erp-backup")]
ERROR_PREFIX = "erp-backup: error:"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


# ----------------------------------------------------------------------------- settings


def make_settings(tmp_path: Path, *, root: Path | None = None, db: Path | str | None = None,
                  backups: Path | None = None, exclude: list[str] | None = None, include: list[str] | None = None,
                  key_files: list[str] | None = None, verify: str = "full", lock_wait_s: float = 1.0,
                  missing_parent: str = "fail", retention: dict[str, Any] | None = None,
                  **backup: Any) -> Settings:
    """Settings built the way the config file builds them (``settings_from_dict``), test-friendly:
    no retry delays, a short lock wait, no key files unless asked for, and no prune after each
    backup unless ``retention`` says so (tests that pin the clock mix times freely).

    ``db``: a path (SQLite) or a full database URL; default ``<tmp>/db/app.sqlite3`` (created if missing)."""
    root = root or tmp_path / "erp"
    backups = backups or tmp_path / "backups"
    if db is None:
        db = tmp_path / "db" / "app.sqlite3"
        if not db.exists():
            make_sqlite(db)
    url = db if isinstance(db, str) and "://" in db else f"sqlite:///{db}"
    data: dict[str, Any] = {
        "project": {"root": str(root), "exclude": list(DEFAULT_EXCLUDES) if exclude is None else exclude,
                    "key_files": key_files or []},
        "database": {"url": url},
        "storage": {"local_dir": str(backups)},
        "backup": {"verify": verify, "lock_wait_s": lock_wait_s, "missing_parent": missing_parent,
                   "retry_delay_s": [0], "task_retries": 0, **backup},
        "retention": {"after_backup": False} if retention is None else retention,
        "verify": {"log": str(tmp_path / "log" / "verify.log")},  # never the machine's /var/log
    }
    if include is not None:
        data["project"]["include"] = include
    return settings_from_dict(data, source="test")


def write_config(path: Path, settings: Settings) -> Path:
    """The TOML file equivalent of ``settings`` (for the CLI and subprocesses)."""
    s = settings
    lines = [
        "[project]",
        f"root = {_toml(str(s.project.root))}",
        f"include = {_toml(s.project.include)}",
        f"exclude = {_toml(s.project.exclude)}",
        f"key_files = {_toml(s.project.key_files)}",
        "[database]",
        f"url = {_toml(s.database.url.get_secret_value() if s.database.url else '')}",
        "[storage]",
        f"local_dir = {_toml(str(s.storage.local_dir))}",
        "[backup]",
        f"verify = {_toml(s.backup.verify)}",
        f"lock_wait_s = {s.backup.lock_wait_s}",
        f"missing_parent = {_toml(s.backup.missing_parent)}",
        f"task_retries = {s.backup.task_retries}",
        f"retry_delay_s = {list(s.backup.retry_delay_s)}",
        "[retention]",
        f"after_backup = {_toml(s.retention.after_backup)}",
        f"leftover_grace_hours = {s.retention.leftover_grace_hours}",
        "[verify]",
        f"log = {_toml(str(s.verify.log))}",
    ]
    for where, pol in (("local", s.retention.local), ("remote", s.retention.remote)):
        lines += [f"[retention.{where}]", *(f"{k} = {v}" for k, v in pol.model_dump().items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(v: object) -> str:
    import json

    return json.dumps(v, ensure_ascii=False)


# ----------------------------------------------------------------------------- sample data


def make_sqlite(path: Path, rows: int = 50) -> Path:
    """A small WAL-mode SQLite database with two tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body BLOB)")
        conn.executemany("INSERT INTO customers(name) VALUES (?)", [(f"c{i}",) for i in range(rows)])
        conn.executemany("INSERT INTO notes(body) VALUES (?)", [(os.urandom(64),) for _ in range(rows // 2)])
        conn.commit()
    finally:
        conn.close()
    return path


def write_file(path: Path, data: bytes | str, mode: int = 0o644, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def make_small_project(root: Path) -> Path:
    """A few files, a link and an empty directory: enough for verify/lock/crash bookkeeping."""
    write_file(root / "manage.py", "#!/usr/bin/env python\n", 0o755)
    write_file(root / ".env", "SECRET_KEY=x\n", 0o600)
    write_file(root / "app/models.py", "class Order: pass\n" * 50)
    write_file(root / "app/data.bin", os.urandom(5000))
    write_file(root / "docs/README.md", "# docs\n" * 100)
    (root / "docs/empty").mkdir(parents=True)
    os.symlink("README.md", root / "docs/index.md")
    return root


# ----------------------------------------------------------------------------- independent comparator


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def tree_state(root: Path, exclude: Iterable[str] = DEFAULT_EXCLUDES, skip: Iterable[str] = (),
               dir_mtimes: bool = False) -> dict[str, tuple[object, ...]]:
    """rel path -> facts, by ``os.walk`` + ``lstat`` (never the engine's scan).

    file: (type, mode, uid, gid, sha256, size, mtime_ns); dir: (type, mode, uid, gid[, mtime_ns]);
    symlink: (type, target, uid, gid). ``exclude``: name patterns dropped wherever they appear."""
    pats = list(exclude)
    skipped = set(skip)
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        keep = []
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if _excluded(name, pats) or rel in skipped:
                continue
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) + (
                    (st.st_mtime_ns,) if dir_mtimes else ())
                keep.append(name)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest, st.st_size,
                            st.st_mtime_ns)
            else:
                out[rel] = ("special",)
        dirnames[:] = [d for d in dirnames if d in keep]
    return out


def diff_states(expected: dict[str, tuple[object, ...]], actual: dict[str, tuple[object, ...]]) -> list[str]:
    out = []
    for p in sorted(set(expected) | set(actual)):
        if p not in actual:
            out.append(f"missing {p}: {expected[p]}")
        elif p not in expected:
            out.append(f"unexpected {p}: {actual[p]}")
        elif expected[p] != actual[p]:
            out.append(f"differs {p}: expected {expected[p]}, got {actual[p]}")
    return out


def listing(path: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``path`` with (size, mtime_ns): detects any write."""
    out: dict[str, tuple[int, int]] = {}
    if not path.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            st = os.lstat(full)
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return out


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


# ----------------------------------------------------------------------------- the CLI


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERP_BACKUP_", "PREFECT_API"))}
    env.pop("DATABASE_URL", None)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PYTHONPATH=str(REPO))
    # the ephemeral API server shares ~/.prefect with every concurrent run on the machine: under load
    # its start-up exceeds Prefect's default 20 s ("Timed out while attempting to connect")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # as the CLI sets it
    env.update(extra)
    return env


NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search",
          "--"]


def run_cli(*args: str, user: str | None = None, no_dac: bool = False, timeout: float = 120,
            cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``erp-backup ARGS`` in a fresh process: optionally as another user (``runuser``), or as root
    without the capabilities that bypass file permissions (``no_dac``: root then obeys modes like
    any user, for paths it does not own)."""
    argv = [*CLI, *args]
    if no_dac:
        argv = [*NO_DAC, *argv]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env or cli_env(),
                          cwd=cwd or REPO, check=False)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    def make(**kw: Any) -> Settings:
        return make_settings(tmp_path, **kw)

    return make
