"""The parallel MariaDB restore (table data in several sessions) restores exactly what the serial
restore does (real MariaDB 10.11 server): rows (count + checksum per table), AUTO_INCREMENT values,
triggers, views, routines and sequences, foreign keys across tables loaded by different sessions, a
trigger that writes another table; it fails in one line naming the table when a statement of one
table's data fails, stops the other sessions, and refuses a crafted dump as the serial restore does."""

from __future__ import annotations

import threading
from pathlib import Path

import pymysql
import pytest

from erp_backup.adapters.databases import mysql as mysql_mod
from erp_backup.adapters.databases.mysql import MysqlAdapter, restore_sessions
from erp_backup.adapters.databases.mysql_confine import TEMP_PREFIX
from erp_backup.core.errors import ConfigError, RestoreError
from tests.integration.conftest import assert_actionable, my_connect
from tests.integration.test_mysql import SCHEMA, TABLES, auto_increments, checksum, routines, triggers

pytestmark = pytest.mark.integration

# more tables than sessions, sizes apart, so that sessions overlap; parents after children in
# name order (mariadb-dump writes tables by name), rows that point across tables
EXTRA = [
    """CREATE TABLE zz_parent (id INT AUTO_INCREMENT PRIMARY KEY, label VARCHAR(40)) ENGINE=InnoDB""",
    """CREATE TABLE aa_child (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT NOT NULL, v INT,
        FOREIGN KEY (parent_id) REFERENCES zz_parent(id)) ENGINE=InnoDB""",
    "INSERT INTO zz_parent (label) SELECT CONCAT('p', seq) FROM seq_1_to_30000",
    "INSERT INTO aa_child (parent_id, v) SELECT 1 + seq % 30000, seq FROM seq_1_to_60000",
    "DELETE FROM zz_parent WHERE id > 29990 AND id NOT IN (SELECT parent_id FROM aa_child)",  # gaps
    "ALTER TABLE zz_parent AUTO_INCREMENT = 50000",
]


@pytest.fixture(autouse=True)
def _helpers(my_sql, monkeypatch) -> None:
    from tests.integration import test_mysql
    monkeypatch.setattr(test_mysql, "_run", my_sql, raising=False)  # its checksum() and friends


def sql(url, statement: str, args: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    with my_connect(url.name if url else None) as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall()) if cur.description else []


def restore_account_sessions() -> list[tuple[object, ...]]:
    return sql(None, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER LIKE %s",
               (TEMP_PREFIX.replace("_", "\\_") + "%",))


@pytest.fixture
def source(my_db, dump_to_file):
    src = my_db("par_src")
    for statement in [*SCHEMA, *EXTRA]:
        sql(src, statement)
    adapter = MysqlAdapter(src)
    return src, adapter, dump_to_file(adapter)


def test_parallel_restore_equals_the_serial_one(source, my_db, workdir: Path, monkeypatch) -> None:
    src, adapter, dump = source
    loaded: dict[str, set[str]] = {}  # data session thread -> tables it loaded
    real = mysql_mod._run_statement

    def spy(conn, st, sql_, target, table=None):  # type: ignore[no-untyped-def]
        if table is not None:
            loaded.setdefault(threading.current_thread().name, set()).add(table)
        return real(conn, st, sql_, target, table)

    monkeypatch.setattr(mysql_mod, "_run_statement", spy)
    monkeypatch.setenv("ERP_BACKUP_MYSQL_RESTORE_JOBS", "1")
    serial = my_db("par_serial", create=False)
    assert adapter.restore(dump.chunks(), dump.info, serial, replace=False, workdir=workdir) == dump.info.tables
    assert loaded == {}, "the serial restore used data sessions"

    parallel = my_db("par_parallel", create=False)
    counts = adapter.restore(dump.chunks(size=64 * 1024), dump.info, parallel, replace=False, workdir=workdir,
                             jobs=3)
    assert counts == dump.info.tables
    assert len(loaded) >= 2, f"the data went to one session only: {loaded}"
    assert set().union(*loaded.values()) == set(dump.info.tables)

    for table in [*TABLES, "zz_parent", "aa_child", "big_orders"]:
        assert checksum(parallel, table) == checksum(serial, table) == checksum(src, table), table
    assert auto_increments(parallel) == auto_increments(serial) == auto_increments(src)
    assert routines(parallel) == routines(src) and len(routines(parallel)) == 2
    assert triggers(parallel) == triggers(src) and len(triggers(parallel)) == 1
    assert sql(parallel, "SELECT order_total(5)") == sql(src, "SELECT order_total(5)")
    assert sql(parallel, "SELECT NEXTVAL(invoice_no)") == [(1042,)]
    sql(parallel, "INSERT INTO orders (customer_id, total) VALUES (1, 1)")  # the trigger fires, into audit
    assert sql(parallel, "SELECT COUNT(*) FROM audit") == [(20001,)]
    with pytest.raises(pymysql.err.IntegrityError):  # the foreign key holds
        sql(parallel, "INSERT INTO aa_child (parent_id, v) VALUES (999999, 1)")
    assert sql(parallel, "SELECT COUNT(*) FROM aa_child c LEFT JOIN zz_parent p ON p.id = c.parent_id "
                         "WHERE p.id IS NULL") == [(0,)]
    assert list(workdir.iterdir()) == [], "a spool file was left in the scratch directory"
    assert restore_account_sessions() == []


def test_a_failing_statement_in_one_tables_data_fails_the_restore_in_one_line(source, my_db,
                                                                             workdir: Path) -> None:
    _src, adapter, dump = source
    raw = dump.path.read_bytes()
    # a duplicate key in the middle of order_lines' data, while other tables load in other sessions
    start = raw.index(b"INSERT INTO `order_lines` VALUES")
    broken = raw[:start] + b"INSERT INTO `order_lines` VALUES (1,1,'dup',1,1.000,1);\n" + raw[start:]
    dst = my_db("par_fail", create=False)
    with pytest.raises(RestoreError) as e:
        adapter.restore(iter([broken[i:i + 65536] for i in range(0, len(broken), 65536)]), dump.info, dst,
                        replace=False, workdir=workdir, jobs=2)
    text = assert_actionable(e.value, "restore into database", "ERROR 1062", "order_lines", "partly restored")
    line = broken[:start].count(b"\n") + 2  # the dump's own first row of order_lines is the duplicate
    assert f"at line {line}" in text
    # stopped: nothing after the failing table's section ran (the trigger of orders, routines come later)
    assert sql(dst, "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
               (dst.name,)) == [(0,)]
    assert sql(dst, "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
               (dst.name,)) == [(0,)]
    assert restore_account_sessions() == [], "a restore session is still connected"
    assert sql(None, "SELECT COUNT(*) FROM mysql.user WHERE User LIKE %s",
               (TEMP_PREFIX.replace("_", "\\_") + "%",)) == [(0,)]
    assert list(workdir.iterdir()) == []


CRAFTED_BETWEEN = [
    b"INSERT INTO `{v}`.t VALUES (666);\n",
    b"/*!40101 DELETE FROM `{v}`.t */;\n",
    b"USE `{v}`;\n",
    b"DROP TABLE `{v}`.t;\n",
]


@pytest.mark.parametrize("payload", CRAFTED_BETWEEN, ids=["insert", "delete", "use", "drop"])
def test_a_crafted_statement_between_tables_is_refused_as_in_the_serial_restore(payload: bytes, source, my_db,
                                                                                 workdir: Path) -> None:
    _src, adapter, dump = source
    victim = my_db("par_victim")
    sql(victim, "CREATE TABLE t (id INT)")
    sql(victim, "INSERT INTO t VALUES (1)")
    raw = dump.path.read_bytes()
    at = raw.index(b"--\n-- Table structure for table `orders`")  # after other tables' data sections
    crafted = raw[:at] + payload.replace(b"{v}", victim.name.encode()) + raw[at:]
    dst = my_db("par_crafted", create=False)
    with pytest.raises(RestoreError) as e:
        adapter.restore(iter([crafted]), dump.info, dst, replace=False, workdir=workdir, jobs=2)
    assert_actionable(e.value, "restore")
    assert sql(victim, "SELECT id FROM t") == [(1,)], "the other database was changed"
    assert sql(dst, "SHOW TABLES LIKE 'orders'") == [], "the restore went on after the refused statement"
    assert restore_account_sessions() == []


def test_restore_sessions_setting(monkeypatch) -> None:
    monkeypatch.delenv("ERP_BACKUP_MYSQL_RESTORE_JOBS", raising=False)
    assert restore_sessions(1) == 2
    assert restore_sessions(4) == 4
    monkeypatch.setenv("ERP_BACKUP_MYSQL_RESTORE_JOBS", "1")
    assert restore_sessions(1) == 1
    monkeypatch.setenv("ERP_BACKUP_MYSQL_RESTORE_JOBS", "two")
    with pytest.raises(ConfigError) as e:
        restore_sessions(1)
    assert_actionable(e.value, "ERP_BACKUP_MYSQL_RESTORE_JOBS")


def test_a_wrong_sessions_setting_fails_before_the_target_is_touched(my_db, workdir: Path, monkeypatch) -> None:
    target = my_db("par_keep")
    sql(target, "CREATE TABLE kept (id INT)")
    monkeypatch.setenv("ERP_BACKUP_MYSQL_RESTORE_JOBS", "0")
    with pytest.raises(ConfigError):
        MysqlAdapter(target).restore(iter([b"SELECT 1;\n"]), None, target, replace=True,  # type: ignore[arg-type]
                                     workdir=workdir)
    assert sql(target, "SHOW TABLES") == [("kept",)], "the target was dropped before the setting was read"


def test_a_session_failing_while_its_section_is_still_read_reports_its_own_error(source, my_db,
                                                                                 workdir: Path) -> None:
    """The first row of the biggest table's data fails while the reader still appends the rest of
    that section to its spool: the restore reports the duplicate key, never the spool's closed
    descriptor (a review saw 'Bad file descriptor' in 2 of 8 runs)."""
    _src, adapter, dump = source
    raw = dump.path.read_bytes()
    start = raw.index(b"INSERT INTO `aa_child` VALUES")
    broken = raw[:start] + b"INSERT INTO `aa_child` VALUES (1,1,1),(1,1,1);\n" + raw[start:]
    for attempt in range(4):
        dst = my_db(f"par_ebadf{attempt}", create=False)
        with pytest.raises(RestoreError) as e:
            adapter.restore(iter([broken[i:i + 4096] for i in range(0, len(broken), 4096)]), dump.info, dst,
                            replace=False, workdir=workdir, jobs=2)
        text = assert_actionable(e.value, "aa_child", "partly restored")
        # the server's own error (1062, or 1180 at the COMMIT of a bulk insert with unique_checks=0)
        assert ("ERROR 1062" in text or "ERROR 1180" in text) and "descriptor" not in text, text
        assert list(workdir.iterdir()) == []


def test_sessions_outlive_a_short_server_wait_timeout(my_db) -> None:
    """Every connection of ours asks for a long wait_timeout: a data session idle while one big table
    loads elsewhere, or the admin session holding the account's lock, is not dropped by the server."""
    target = my_db("par_idle")
    conn = mysql_mod._open(target, 10, target.name, True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@session.wait_timeout")
            assert cur.fetchone()[0] >= 86400
    finally:
        conn.close()


def test_too_many_sessions_is_refused_before_anything_runs(monkeypatch) -> None:
    monkeypatch.delenv("ERP_BACKUP_MYSQL_RESTORE_JOBS", raising=False)
    with pytest.raises(ConfigError) as e:
        restore_sessions(400)
    assert_actionable(e.value, "--jobs 400")
    monkeypatch.setenv("ERP_BACKUP_MYSQL_RESTORE_JOBS", "400")
    with pytest.raises(ConfigError):
        restore_sessions(1)
