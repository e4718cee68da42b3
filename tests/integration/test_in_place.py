"""Emergency restore in place, on a real tree and a real database (SQLite, PostgreSQL).

Stop/start/smoke commands are real processes that append their name to a file; failures are real:
a smoke check that exits non-zero, a database dump in the set damaged on disk (the restore fails
after it has dropped the live PostgreSQL database and written the files)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from erp_backup import inplace, safety
from erp_backup.config import Settings
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import RestoreError
from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from erp_backup.recovery_config import RestoreConfig
from tests.conftest import (
    CLI,
    cli_env,
    diff_states,
    flip_byte,
    make_settings,
    make_small_project,
    make_sqlite,
    run_cli,
    tree_state,
    write_config,
    write_file,
)
from tests.integration import test_encrypted_sets

pytestmark = pytest.mark.integration
RECORD = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"]


def recorder(log: Path, name: str) -> list[str]:
    return [*RECORD, str(log), name]


def with_restore(s: Settings, **kw: Any) -> Settings:
    return s.model_copy(update={"restore": RestoreConfig(**kw)})


def commands(log: Path, smoke: list[list[str]] | None = None) -> dict[str, Any]:
    return {"stop": [recorder(log, "stop web"), recorder(log, "stop worker")],
            "start": [recorder(log, "start worker"), recorder(log, "start web")],
            "smoke": smoke if smoke is not None else [recorder(log, "smoke")], "command_timeout": 30}


def sqlite_rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, name FROM customers ORDER BY id").fetchall()
    finally:
        conn.close()


def sqlite_exec(db: Path, statement: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def mutate(root: Path) -> None:
    write_file(root / "app/models.py", "class Changed: pass\n")  # replaced by the restore
    write_file(root / "app/new.py", "print('new')\n")  # deleted by the restore
    (root / "docs/README.md").unlink()  # brought back
    os.chmod(root / "manage.py", 0o700)  # mode put back
    os.chown(root / "app/data.bin", 4321, 4321)  # owner put back (the tests run as root)
    (root / "venv").mkdir(exist_ok=True)
    write_file(root / "venv/keep.py", "excluded: never touched\n")


SKIP = {"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"}


def backed_up_then_changed(tmp_path: Path, restore_cfg: dict[str, Any] | None = None
                           ) -> tuple[Settings, Path, Path]:
    """A project with its SQLite database inside, a full backup, then files and a row changed."""
    root = make_small_project(tmp_path / "erp")
    db = make_sqlite(root / "db.sqlite3")
    s = make_settings(tmp_path, root=root, db=db)
    if restore_cfg is not None:
        s = with_restore(s, **restore_cfg)
    run_backup(s, BackupKind.FULL)
    mutate(root)
    sqlite_exec(db, "INSERT INTO customers(name) VALUES ('after the backup')")
    return s, root, db


def test_in_place_restores_files_and_sqlite_database_and_runs_commands_in_order(tmp_path: Path) -> None:
    root = make_small_project(tmp_path / "erp")
    db = make_sqlite(root / "db.sqlite3")
    log = tmp_path / "commands.log"
    s = with_restore(make_settings(tmp_path, root=root, db=db), **commands(log))
    run_backup(s, BackupKind.FULL)
    want_tree = tree_state(root, skip={"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"})
    want_rows = sqlite_rows(db)
    mutate(root)
    sqlite_exec(db, "DELETE FROM customers WHERE id > 10")
    before_tree = tree_state(root, skip={"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"})
    before_rows = sqlite_rows(db)

    plan = inplace.plan(s, inplace.InPlaceRequest(yes=True))
    rep = inplace.run(s, plan, log=lambda _m: None)

    assert log.read_text().splitlines() == ["stop web", "stop worker", "start worker", "start web", "smoke"]
    assert diff_states(want_tree, tree_state(root, skip={"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"})) == []
    assert sqlite_rows(db) == want_rows
    assert (root / "venv/keep.py").read_text() == "excluded: never touched\n"
    names = [st.name for st in rep.steps]
    assert names[0] == "plan" and "safety copy" in names and "restore files" in names
    assert "restore database" in names and all(st.duration_s >= 0 for st in rep.steps)
    # the safety copy holds exactly what was overwritten or deleted, as it was
    copy = safety.load(Path(rep.safety_copy))
    assert copy.state == "completed"
    assert oct(os.stat(copy.path).st_mode & 0o777) == "0o700"
    saved = {e.path for e in copy.saved}
    assert saved == {"app/models.py", "app/new.py", "manage.py", "app/data.bin"}
    assert (copy.files_dir / "app/models.py").read_text() == "class Changed: pass\n"
    assert (copy.files_dir / "app/new.py").read_text() == "print('new')\n"
    assert before_tree["app/models.py"][1:] == next(
        (e.mode, e.uid, e.gid) for e in copy.saved if e.path == "app/models.py") + before_tree["app/models.py"][4:]
    saved_db = tmp_path / "saved.sqlite3"
    saved_db.write_bytes(copy.dump_path.read_bytes())
    assert sqlite_rows(saved_db) == before_rows
    # the next successful backup removes it
    run_backup(s, BackupKind.INCREMENTAL)
    assert not copy.path.exists()


def test_failed_smoke_check_puts_everything_back_and_starts_services(tmp_path: Path) -> None:
    log = tmp_path / "commands.log"
    failing = [*RECORD[:2], "import sys; open(sys.argv[1], 'a').write('smoke\\n'); sys.exit(3)", str(log)]
    s, root, db = backed_up_then_changed(tmp_path, commands(log, smoke=[failing]))
    skip = SKIP
    before_tree, before_rows = tree_state(root, skip=skip), sqlite_rows(db)

    with pytest.raises(inplace.InPlaceFailed) as err:
        inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True)), log=lambda _m: None)

    assert "failed at step 'smoke:" in err.value.message and "put back" in err.value.message
    assert diff_states(before_tree, tree_state(root, skip=skip)) == []
    assert sqlite_rows(db) == before_rows
    assert log.read_text().splitlines() == ["stop web", "stop worker", "start worker", "start web", "smoke",
                                            "stop web", "stop worker", "start worker", "start web"]
    names = [st.name for st in err.value.steps]
    assert "rollback: put back files" in names and "rollback: put back database" in names
    (copy,) = safety.copies(s.storage.local_dir)
    assert safety.state_of(copy) == "rolled-back"


def test_refuses_without_yes_and_stops_nothing(tmp_path: Path) -> None:
    root = make_small_project(tmp_path / "erp")
    log = tmp_path / "commands.log"
    s = with_restore(make_settings(tmp_path, root=root), **commands(log))
    run_backup(s, BackupKind.FULL)
    with pytest.raises(RestoreError, match="--yes"):
        inplace.plan(s, inplace.InPlaceRequest())
    cfg = write_config(tmp_path / "c.toml", s)
    res = run_cli("--config", str(cfg), "restore", "--in-place")
    assert res.returncode != 0 and "pass --yes" in res.stderr.strip().splitlines()[-1]
    res = run_cli("--config", str(cfg), "restore", "--in-place", "--yes", "--target-dir", str(tmp_path / "x"))
    assert res.returncode == 2 and "--target-dir does not go with it" in res.stderr
    assert not log.exists()


def test_old_newest_set_needs_allow_old(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    run_backup(s, BackupKind.FULL, now=datetime.now(UTC) - timedelta(days=3))
    with pytest.raises(RestoreError, match="max_age") as err:
        inplace.plan(s, inplace.InPlaceRequest(yes=True))
    assert "--allow-old" in str(err.value)
    plan = inplace.plan(s, inplace.InPlaceRequest(yes=True, allow_old=True))
    assert plan.restore.set_id.endswith("-full")


@pytest.fixture
def pg_project(tmp_path: Path, pg_db: Callable[..., DatabaseUrl], pg_sql: Callable[..., Any]
               ) -> tuple[Settings, DatabaseUrl, Path]:
    live = pg_db("live")
    pg_sql(live, "CREATE TABLE orders (id serial PRIMARY KEY, item text)")
    pg_sql(live, "INSERT INTO orders(item) SELECT 'item ' || g FROM generate_series(1, 200) g")
    root = make_small_project(tmp_path / "erp")
    log = tmp_path / "commands.log"
    s = with_restore(make_settings(tmp_path, root=root, db=f"postgresql://postgres@127.0.0.1:5432/{live.name}"),
                     **commands(log))
    return s, live, log


def test_postgres_in_place_and_a_failed_database_restore_rolls_back(
        pg_project: tuple[Settings, DatabaseUrl, Path], pg_sql: Callable[..., Any], tmp_path: Path) -> None:
    s, live, log = pg_project
    root = s.project.root
    first = run_backup(s, BackupKind.FULL)
    want_tree = tree_state(root)
    pg_sql(live, "DELETE FROM orders WHERE id > 50")
    mutate(root)
    rep = inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True)), log=lambda _m: None)
    assert pg_sql(live, "SELECT count(*) FROM orders") == [(200,)]
    assert diff_states({k: v for k, v in want_tree.items()}, tree_state(root)) == []
    assert safety.load(Path(rep.safety_copy)).database is not None

    # now the live state differs again, and the set's dump is damaged on disk: the restore drops the
    # live database, pg_restore fails, and the safety copy's dump must bring it back
    pg_sql(live, "INSERT INTO orders(item) VALUES ('only live')")
    mutate(root)
    before_tree = tree_state(root)
    dump = first.path / "db.postgresql.pgdump.zst"
    flip_byte(dump, dump.stat().st_size // 2)
    log.unlink()
    with pytest.raises(inplace.InPlaceFailed) as err:
        inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True, backup_id=first.manifest.id.value)),
                    log=lambda _m: None)
    assert "failed at step 'restore database'" in err.value.message
    assert pg_sql(live, "SELECT count(*) FROM orders") == [(201,)]
    assert pg_sql(live, "SELECT item FROM orders WHERE item = 'only live'") == [("only live",)]
    assert diff_states(before_tree, tree_state(root)) == []
    assert log.read_text().splitlines() == ["stop web", "stop worker", "start worker", "start web"]


def test_postgres_in_place_keeps_the_application_role_able_to_use_its_tables(
        tmp_path: Path, pg_db: Callable[..., DatabaseUrl], pg_sql: Callable[..., Any], pg_role: Callable[..., str]
        ) -> None:
    """The backups run as the superuser, the application as its own role that owns its database and
    tables (the usual Django set-up). After an in-place restore (and after a put-back) the
    application still reads and writes its tables: a review found every table owned by the confined
    owner role and the application getting `permission denied` (its smoke check failed, and the
    rollback left it the same way)."""
    import psycopg2

    from tests.integration.conftest import PG_HOST, PG_PORT

    app = pg_role()
    live = pg_db("live")
    postgres = DatabaseUrl(engine="postgresql", name="postgres")
    pg_sql(postgres, f'ALTER DATABASE "{live.name}" OWNER TO "{app}"')

    def as_app(statement: str) -> list[tuple[object, ...]]:
        conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=app, dbname=live.name)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(statement)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    as_app("CREATE TABLE orders (id serial PRIMARY KEY, item text)")
    as_app("INSERT INTO orders(item) SELECT 'item ' || g FROM generate_series(1, 20) g")
    root = make_small_project(tmp_path / "erp")
    s = with_restore(make_settings(tmp_path, root=root, db=f"postgresql://postgres@127.0.0.1:5432/{live.name}"),
                     **commands(tmp_path / "commands.log"))
    run_backup(s, BackupKind.FULL)
    as_app("DELETE FROM orders WHERE id > 10")
    rep = inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True, database=True, files=False)),
                      log=lambda _m: None)
    assert as_app("SELECT count(*) FROM orders") == [(20,)]
    as_app("INSERT INTO orders(item) VALUES ('after the restore')")
    copy = inplace.check_put_back(s, rep.safety_copy, yes=True)
    inplace.put_back(s, copy, log=lambda _m: None)
    assert as_app("SELECT count(*) FROM orders") == [(10,)]
    as_app("INSERT INTO orders(item) VALUES ('after the put-back')")


def test_cli_in_place_files_only(tmp_path: Path) -> None:
    import subprocess

    root = make_small_project(tmp_path / "erp")
    db = make_sqlite(tmp_path / "live.sqlite3")
    s = make_settings(tmp_path, root=root, db=db)
    run_backup(s, BackupKind.FULL)
    want = tree_state(root)
    mutate(root)
    sqlite_exec(db, "DELETE FROM customers")
    cfg = write_config(tmp_path / "c.toml", s)
    res = subprocess.run([*CLI, "--config", str(cfg), "restore", "--in-place", "--files-only", "--yes"],
                         capture_output=True, text=True, timeout=300, env=cli_env())
    assert res.returncode == 0, res.stderr
    assert "restore files" in res.stdout and "safety copy" in res.stdout
    assert diff_states(want, tree_state(root)) == []
    assert sqlite_rows(db) == []  # --files-only left the database alone


def test_failed_stop_changes_nothing_and_starts_again(tmp_path: Path) -> None:
    root = make_small_project(tmp_path / "erp")
    log = tmp_path / "commands.log"
    cmds = commands(log)
    cmds["stop"] = [recorder(log, "stop web"), ["no-such-service-manager-xyz", "stop"]]
    s = with_restore(make_settings(tmp_path, root=root), **cmds)
    run_backup(s, BackupKind.FULL)
    mutate(root)
    before = tree_state(root)
    with pytest.raises(inplace.InPlaceFailed) as err:
        inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True)), log=lambda _m: None)
    assert "failed at step 'stop: no-such-service-manager-xyz stop'" in err.value.message
    assert "nothing had been changed and the start commands were run" in err.value.message
    assert " — " not in err.value.message  # one line: the cause's own hint is not repeated inside it
    assert diff_states(before, tree_state(root)) == []
    assert log.read_text().splitlines() == ["stop web", "start worker", "start web"]


KILL_ME = """
import sys
from erp_backup.config import load_settings
from erp_backup import inplace
s = load_settings(sys.argv[1])
inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True)))
"""


def test_killed_in_place_restore_is_flagged_and_put_back(tmp_path: Path) -> None:
    import json

    from erp_backup import status
    from tests.conftest import REPO
    from tests.procs import hang_command, kill_when_hanging

    s, root, db = backed_up_then_changed(tmp_path)
    skip = SKIP
    before_tree, before_rows = tree_state(root, skip=skip), sqlite_rows(db)
    marker = str(tmp_path / "smoke.pid")
    cfg = write_config(tmp_path / "c.toml", s)
    with open(cfg, "a") as f:
        f.write(f"[restore]\nsmoke = [{json.dumps(hang_command(marker))}]\n")
    kill_when_hanging([sys.executable, "-c", KILL_ME, str(cfg)], marker, env=cli_env(), cwd=str(REPO))
    assert diff_states(before_tree, tree_state(root, skip=skip)) != []  # killed half-way: restored state
    doc = status.collect(s)
    (flag,) = [x for x in doc["problems"] if x["check"] == "in_place_restore"]
    assert flag["severity"] == "critical" and "--put-back" in flag["message"]
    (copy,) = safety.copies(s.storage.local_dir)
    run_backup(s, BackupKind.INCREMENTAL)  # a backup meanwhile keeps it
    assert copy.exists()
    res = run_cli("--config", str(cfg), "restore", "--put-back", str(copy))
    assert res.returncode != 0 and "--yes" in res.stderr
    steps = inplace.put_back(s, inplace.check_put_back(s, str(copy), yes=True), log=lambda _m: None)
    assert [st.name for st in steps] == ["put back files", "put back database"]
    assert diff_states(before_tree, tree_state(root, skip=skip)) == []
    assert sqlite_rows(db) == before_rows
    assert safety.state_of(copy) == "put-back"
    assert not [x for x in status.collect(s)["problems"] if x["check"] == "in_place_restore"]


host = test_encrypted_sets.host  # the keyrings fixture: backup host (signing key), restore host (private key)


def test_in_place_restore_of_encrypted_signed_sets(tmp_path: Path, gpg_keys: Any, host: Any) -> None:
    """[encryption] local = true: the sets on disk are GPG-encrypted and signed; the in-place
    restore checks the signature before anything is stopped and decrypts while it writes."""
    root = make_small_project(tmp_path / "erp")
    log = tmp_path / "commands.log"
    s = test_encrypted_sets.enc_settings(tmp_path, gpg_keys, local=True, root=root)
    s = with_restore(s, **commands(log))
    host.backup()
    full = run_backup(s, BackupKind.FULL)
    assert any(a.name.endswith(".gpg") for a in full.manifest.artifacts)
    want = tree_state(root)
    mutate(root)
    host.restore()
    rep = inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True, files=True, database=False)),
                      log=lambda _m: None)
    assert diff_states(want, tree_state(root)) == [] and rep.files_written >= 3
    assert log.read_text().splitlines() == ["stop web", "stop worker", "start worker", "start web", "smoke"]


def test_in_place_through_a_linked_root(tmp_path: Path) -> None:
    """[project] root = /srv/app/current -> releases/3: restored where the link points, the link kept."""
    real = make_small_project(tmp_path / "releases" / "3")
    link = tmp_path / "current"
    os.symlink(real, link)
    s = make_settings(tmp_path, root=link)
    run_backup(s, BackupKind.FULL)
    want = tree_state(real)
    mutate(real)
    changed = tree_state(real)
    rep = inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True)), log=lambda _m: None)
    assert os.path.islink(link) and diff_states(want, tree_state(real)) == []
    # the safety copy records the resolved root: putting it back through the link works (a review
    # found it refused: "is of …/releases/3, not of [project] root …/current")
    inplace.put_back(s, inplace.check_put_back(s, rep.safety_copy, yes=True), log=lambda _m: None)
    assert diff_states(changed, tree_state(real)) == []


def test_put_back_refuses_what_is_not_a_safety_copy(tmp_path: Path) -> None:
    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    run_backup(s, BackupKind.FULL)
    cfg = write_config(tmp_path / "c.toml", s)
    for path in ("/etc", str(s.storage.local_dir), str(s.storage.local_dir / ".safety-x")):
        res = run_cli("--config", str(cfg), "restore", "--put-back", path, "--yes")
        assert res.returncode != 0
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("erp-backup: error:") and ("not a safety copy" in last or "cannot read" in last), last
    assert os.path.isdir("/etc")


def test_deployed_restore_flow_in_place(tmp_path: Path) -> None:
    """The restore deployment's parameters (what the UI form sends): config path, in_place, yes."""
    import subprocess

    s = make_settings(tmp_path, root=make_small_project(tmp_path / "erp"))
    run_backup(s, BackupKind.FULL)
    want = tree_state(s.project.root)
    mutate(s.project.root)
    cfg = write_config(tmp_path / "c.toml", s)
    code = ("import sys, json; from erp_backup.flows.restore import restore_flow; "
            "print(json.dumps(restore_flow(config=sys.argv[1], in_place=True, yes=True, files_only=True)))")
    res = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=300,
                         env=cli_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"in place": "yes"' in res.stdout.strip().splitlines()[-1]
    assert diff_states(want, tree_state(s.project.root)) == []


def test_a_crafted_safety_copy_is_never_put_back(tmp_path: Path) -> None:
    """The backup directory is untrusted: a planted `.safety-*` in state `restoring` makes status say
    `--put-back …`. A review found that put-back then copied a root-only file (a link in `files/`)
    into the project world-readable and wrote a set-uid binary. Now: a link in the copy is refused
    before anything is stopped, and a copy another user made or may write is never ours."""
    import json

    from erp_backup import status

    root = make_small_project(tmp_path / "erp")
    log = tmp_path / "commands.log"
    s = with_restore(make_settings(tmp_path, root=root), **commands(log))
    run_backup(s, BackupKind.FULL)
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    copy = s.storage.local_dir / ".safety-20990101T000000.000000Z-planted"
    (copy / "files").mkdir(parents=True, mode=0o700)
    copy.chmod(0o700)
    os.symlink(secret, copy / "files" / "leak.txt")
    write_file(copy / "files" / "suid", b"#!/bin/sh\n")
    entry = {"type": "file", "mtime_ns": 0, "size": 0, "uid": 0, "gid": 0, "target": None}
    (copy / "safety.json").write_text(json.dumps({
        "state": "restoring", "set": "x", "root": str(root), "saved": [
            {**entry, "path": "leak.txt", "mode": 0o644}, {**entry, "path": "suid", "mode": 0o104755}],
        "dirs": [], "created": [], "database_url": None, "database": None}))
    (copy / "safety.json").chmod(0o600)
    before = tree_state(root)
    with pytest.raises(RestoreError, match="incomplete or was changed"):
        inplace.check_put_back(s, str(copy), yes=True)
    assert not log.exists() and diff_states(before, tree_state(root)) == []

    os.chown(copy, 65534, 65534)  # made by another user (nobody)
    with pytest.raises(RestoreError, match="not a safety copy erp-backup made"):
        inplace.check_put_back(s, str(copy), yes=True)
    os.chown(copy, os.geteuid(), os.getegid())
    (copy / "safety.json").chmod(0o666)  # or writable by others
    with pytest.raises(RestoreError, match="writable by other users"):
        inplace.check_put_back(s, str(copy), yes=True)
    flags = [p for p in status.collect(s)["problems"] if "safety" in p["check"] or "in_place" in p["check"]]
    assert [p["check"] for p in flags] == ["foreign_safety_copy"] and "never put it back" in flags[0]["message"]
    assert diff_states(before, tree_state(root)) == [] and not log.exists()


def test_a_put_back_that_does_not_finish_keeps_its_copy_and_is_flagged(tmp_path: Path) -> None:
    """Undoing a completed in-place restore (`--put-back`) that fails or is killed half-way: a review
    found the copy still `completed` — status quiet, and the next backup deleted it, the only copy of
    the pre-restore database. Now it is `putting-back` from the first change: kept, flagged critical,
    and a second put-back finishes the job."""
    from erp_backup import status

    s, root, db = backed_up_then_changed(tmp_path, commands(tmp_path / "commands.log"))
    want_tree, want_rows = tree_state(root, skip=SKIP), sqlite_rows(db)
    rep = inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True)), log=lambda _m: None)
    copy = Path(rep.safety_copy)
    assert safety.state_of(copy) == "completed"
    dump = copy / safety.DUMP
    good = dump.read_bytes()
    dump.write_bytes(b"not a database" * 100)
    with pytest.raises(inplace.InPlaceFailed, match="put back database"):
        inplace.put_back(s, inplace.check_put_back(s, str(copy), yes=True), log=lambda _m: None)
    assert safety.state_of(copy) == "putting-back"
    (flag,) = [x for x in status.collect(s)["problems"] if x["check"] == "in_place_restore"]
    assert flag["severity"] == "critical" and "--put-back" in flag["message"]
    run_backup(s, BackupKind.INCREMENTAL)
    assert copy.exists()  # the next backup keeps it
    dump.write_bytes(good)
    inplace.put_back(s, inplace.check_put_back(s, str(copy), yes=True), log=lambda _m: None)
    assert safety.state_of(copy) == "put-back"
    assert diff_states(want_tree, tree_state(root, skip=SKIP)) == [] and sqlite_rows(db) == want_rows


def test_command_output_and_labels_never_show_the_database_password(
        tmp_path: Path, pg_db: Callable[..., DatabaseUrl]) -> None:
    """A smoke check that prints its connection string, a command given `env DATABASE_URL=…` (as the
    README suggests): the report table and the flow's artifact showed the live database's password
    (a review found the in-place commands run with no secret to mask, unlike the restore test's)."""
    password = "Zebra9-in-place-SECRET"
    live = pg_db("live")
    url = f"postgresql://postgres:{password}@127.0.0.1:5432/{live.name}"  # trust auth: any password works
    echo = ["sh", "-c", 'echo "conn=$1"; echo "password is $2" >&2', "sh", url, password]
    root = make_small_project(tmp_path / "erp")
    s = with_restore(make_settings(tmp_path, root=root, db=url),
                     stop=[echo], start=[["env", f"DATABASE_URL={url}", "true"]], smoke=[echo], command_timeout=30)
    run_backup(s, BackupKind.FULL)
    mutate(root)
    rep = inplace.run(s, inplace.plan(s, inplace.InPlaceRequest(yes=True, files=True, database=False)),
                      log=lambda _m: None)
    text = repr(rep.rows())
    assert "conn=postgresql://postgres:***@" in text and "password is ***" in text
    assert password not in text


def _procs_running(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


def test_start_commands_may_leave_the_application_running_and_a_hung_stop_is_killed_whole(
        tmp_path: Path) -> None:
    """A start command that launches the application itself (in the background, daemonized or not):
    a review found the CLI waiting for the end of its output (for ever, with a daemon that keeps
    stdout) and the reaper killing the application when the CLI exited. And a stop command that hangs
    with a child: the timeout took until the child ended, and left it running."""
    import json
    import subprocess
    import time
    import uuid

    root = make_small_project(tmp_path / "erp")
    db = make_sqlite(tmp_path / "live.sqlite3")
    s = make_settings(tmp_path, root=root, db=db)
    run_backup(s, BackupKind.FULL)
    tag = str(uuid.uuid4().int)[:8]  # digits: sleep takes them
    plain_bg, daemon, hung = f"311.{tag}1", f"312.{tag}2", f"313.{tag}3"
    cfg = write_config(tmp_path / "c.toml", s)
    start = [["sh", "-c", f"sleep {plain_bg} &"],  # keeps our stdout
             ["sh", "-c", f"setsid sleep {daemon} > /dev/null 2>&1 < /dev/null &"]]
    try:
        with open(cfg, "a") as f:
            f.write(f"[restore]\nstop = []\nsmoke = []\nstart = {json.dumps(start)}\ncommand_timeout = 60\n")
        t0 = time.monotonic()
        res = subprocess.run([*CLI, "--config", str(cfg), "restore", "--in-place", "--files-only", "--yes"],
                             capture_output=True, text=True, timeout=120, env=cli_env())
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - t0 < 30, "the restore waited for what its start command left running"
        time.sleep(3)  # the reaper's grace period, had it stopped them
        assert _procs_running(plain_bg) and _procs_running(daemon), "the application was killed at the CLI's exit"

        cfg2 = write_config(tmp_path / "c2.toml", s)
        with open(cfg2, "a") as f:
            f.write(f"[restore]\nstop = {json.dumps([['sh', '-c', f'sleep {hung} & sleep {hung}']])}\n"
                    "start = []\nsmoke = []\ncommand_timeout = 2\n")
        t0 = time.monotonic()
        res = subprocess.run([*CLI, "--config", str(cfg2), "restore", "--in-place", "--files-only", "--yes"],
                             capture_output=True, text=True, timeout=120, env=cli_env())
        assert res.returncode != 0 and "timed out after 2 s" in res.stderr.strip().splitlines()[-1], res.stderr
        assert time.monotonic() - t0 < 30
        assert _procs_running(hung) == []
    finally:
        for pid in _procs_running(tag):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)


def test_a_damaged_safety_record_neither_crashes_status_nor_fails_backups(tmp_path: Path) -> None:
    """A `.safety-*/safety.json` that is valid JSON but not our record (a list; a state that is not
    a text): a review found `status` crashing with a traceback and every backup ending with one after
    its commit. Now the copy is `damaged`: kept, and status warns."""
    import subprocess

    from erp_backup import status

    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    run_backup(s, BackupKind.FULL)
    cfg = write_config(tmp_path / "c.toml", s)
    copy = s.storage.local_dir / ".safety-20990101T000000.000000Z-x"
    copy.mkdir(mode=0o700)
    for doc in ("[1]", '{"state": ["restoring"]}', '{"state": "whatever"}'):
        (copy / "safety.json").write_text(doc)
        assert safety.state_of(copy) == "damaged"
        (flag,) = [p for p in status.collect(s)["problems"] if p["check"] == "in_place_restore"]
        assert "damaged record" in flag["message"]
        write_file(root / "apps" / "touched.py", doc)
        res = subprocess.run([*CLI, "--config", str(cfg), "backup", "incremental"], capture_output=True, text=True,
                             timeout=120, env=cli_env())
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-1500:]
        assert copy.is_dir()
        res = subprocess.run([*CLI, "--config", str(cfg), "restore", "--put-back", str(copy), "--yes"],
                             capture_output=True, text=True, timeout=120, env=cli_env())
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-1500:]
        assert res.stderr.strip().splitlines()[-1].startswith("erp-backup: error: cannot read the safety copy")
