"""MysqlAdapter against the real MariaDB 10.11 server (127.0.0.1:3306)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from erp_backup.adapters.databases.mysql import MysqlAdapter
from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.errors import DatabaseError, RestoreError, ToolMissingError
from tests.integration.conftest import SECRET, assert_actionable

pytestmark = pytest.mark.integration

SCHEMA = [
    """CREATE TABLE customers (
        id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200) NOT NULL, note TEXT NULL, photo BLOB NULL,
        balance DECIMAL(14,2), created DATETIME(3) NOT NULL) ENGINE=InnoDB""",
    """CREATE TABLE orders (
        id INT AUTO_INCREMENT PRIMARY KEY, customer_id BIGINT NOT NULL, total DECIMAL(12,2),
        placed_at TIMESTAMP NULL, status VARCHAR(20) NULL,
        FOREIGN KEY (customer_id) REFERENCES customers(id)) ENGINE=InnoDB""",
    """CREATE TABLE order_lines (
        id BIGINT AUTO_INCREMENT PRIMARY KEY, order_id INT NOT NULL, sku VARCHAR(40), qty INT,
        price DECIMAL(10,3), line_no INT NOT NULL,
        FOREIGN KEY (order_id) REFERENCES orders(id) ON DELETE CASCADE) ENGINE=InnoDB""",
    """CREATE TABLE audit (
        id INT AUTO_INCREMENT PRIMARY KEY, order_id INT, action VARCHAR(20)) ENGINE=InnoDB""",
    """CREATE TABLE `Ledger Entries €` (
        id INT AUTO_INCREMENT PRIMARY KEY, `Amount` DECIMAL(18,4), memo TEXT, raw VARBINARY(64)) ENGINE=InnoDB""",
    "CREATE SEQUENCE invoice_no START WITH 1000 NOCACHE",  # cached values are skipped by a dump
    """CREATE VIEW big_orders AS SELECT o.id, c.name, o.total FROM orders o
        JOIN customers c ON c.id = o.customer_id WHERE o.total > 500""",
    """CREATE TRIGGER orders_ai AFTER INSERT ON orders FOR EACH ROW
        INSERT INTO audit (order_id, action) VALUES (NEW.id, 'insert')""",
    """CREATE FUNCTION order_total(oid INT) RETURNS DECIMAL(20,3) READS SQL DATA
        RETURN (SELECT COALESCE(SUM(qty * price), 0) FROM order_lines WHERE order_id = oid)""",
    "CREATE PROCEDURE count_orders(OUT n INT) SELECT COUNT(*) INTO n FROM orders",
    """INSERT INTO customers (name, note, photo, balance, created)
        SELECT CONCAT('Kunde ', seq, ' 顧客 ✓ 😀'), IF(seq % 7 = 0, NULL, 'note ''quoted'' \\\\ back\\n'),
               IF(seq % 5 = 0, NULL, UNHEX(CONCAT(MD5(seq), '00ff0a0d27'))), seq * 1.37,
               '2024-01-01 00:00:00.250' + INTERVAL seq MINUTE
        FROM seq_1_to_20000""",
    """INSERT INTO orders (customer_id, total, placed_at, status)
        SELECT 1 + seq % 20000, (seq % 1000) + 0.99, '2025-06-01 12:00:00' - INTERVAL seq HOUR,
               IF(seq % 3 = 0, NULL, 'paid')
        FROM seq_1_to_20000""",
    """INSERT INTO order_lines (order_id, sku, qty, price, line_no)
        SELECT 1 + seq % 20000, CONCAT('SKU-', seq), seq % 10, seq / 7, seq FROM seq_1_to_40000""",
    """INSERT INTO `Ledger Entries €` (`Amount`, memo, raw)
        SELECT seq * 0.0001, 'line\\nbreak\\ttab', UNHEX(MD5(seq)) FROM seq_1_to_5000""",
    "DO (SELECT COUNT(NEXTVAL(invoice_no)) FROM seq_1_to_42)",
]
TABLES = ["customers", "orders", "order_lines", "audit", "Ledger Entries €"]


@pytest.fixture(autouse=True)
def _sql(my_sql) -> None:
    global _run
    _run = my_sql


def execute(url: DatabaseUrl | None, *statements: str) -> None:
    for statement in statements:
        _run(url, statement)


def query(url: DatabaseUrl | None, sql: str, args: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    return _run(url, sql, args)


def q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def checksum(url: DatabaseUrl, relation: str) -> tuple[object, ...]:
    """Row count + order-independent sum of an md5 of every row (NULL distinct from '')."""
    cols = [r[0] for r in query(url, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                                     "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (url.name, relation))]
    assert cols, relation
    row = ", ".join(f"IFNULL(CONCAT('v', HEX({q(c)})), 'N')" for c in cols)
    return query(url, f"SELECT COUNT(*), SUM(CONV(LEFT(MD5(CONCAT_WS('|', {row})), 15), 16, 10)) "
                      f"FROM {q(relation)}")[0]


def auto_increments(url: DatabaseUrl) -> list[tuple[object, ...]]:
    return query(url, "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                      "AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1", (url.name,))


def routines(url: DatabaseUrl) -> list[tuple[object, ...]]:
    return query(url, "SELECT ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_DEFINITION FROM information_schema.ROUTINES "
                      "WHERE ROUTINE_SCHEMA = %s ORDER BY 1", (url.name,))


def triggers(url: DatabaseUrl) -> list[tuple[object, ...]]:
    return query(url, "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
                      "WHERE TRIGGER_SCHEMA = %s ORDER BY 1", (url.name,))


# ---- 1. round trip ----------------------------------------------------------------------------------


def test_round_trip_preserves_rows_view_trigger_routines_and_sequences(my_db, dump_to_file, workdir) -> None:
    src = my_db("src")
    execute(src, *SCHEMA)
    adapter = MysqlAdapter(src)
    adapter.check_available()

    dump = dump_to_file(adapter)

    info = dump.info
    assert info.engine == "mysql" and info.dump_format == "sql"
    assert "MariaDB" in info.server_version and "mariadb-dump" in info.dump_tool
    assert info.tables == {"Ledger Entries €": 5000, "audit": 20000, "customers": 20000,
                           "order_lines": 40000, "orders": 20000}
    assert adapter.counts_consistent
    head = dump.path.open("rb").read(4096)
    assert b"CREATE DATABASE" not in head and b"\nUSE " not in head, "dump must restore into any name"
    assert adapter.verify_dump(dump.chunks(), info, workdir) == []

    dst = my_db("dst", create=False)
    restored = adapter.restore(dump.chunks(), info, dst, replace=False, workdir=workdir)

    assert restored == info.tables
    for table in [*TABLES, "big_orders"]:
        assert checksum(dst, table) == checksum(src, table), table
    assert auto_increments(dst) == auto_increments(src)
    assert routines(dst) == routines(src) and len(routines(dst)) == 2
    assert triggers(dst) == triggers(src) and len(triggers(dst)) == 1
    assert query(dst, "SELECT order_total(5)") == query(src, "SELECT order_total(5)")
    assert query(dst, "SELECT NEXTVAL(invoice_no)") == query(src, "SELECT NEXTVAL(invoice_no)") == [(1042,)]
    execute(dst, "INSERT INTO orders (customer_id, total) VALUES (1, 1)")  # the trigger still fires
    assert query(dst, "SELECT COUNT(*) FROM audit") == [(20001,)]
    assert list(workdir.iterdir()) == [], "the option file with the password was not deleted"


# ---- 2. consistency under concurrent writes -----------------------------------------------------------

ORDERS_SCHEMA = [
    "CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(255)) ENGINE=InnoDB",
    """CREATE TABLE order_lines (id BIGINT AUTO_INCREMENT PRIMARY KEY, order_id INT NOT NULL, qty INT,
        FOREIGN KEY (order_id) REFERENCES orders(id)) ENGINE=InnoDB""",
    "INSERT INTO orders (note) SELECT REPEAT('x', 200) FROM seq_1_to_60000",
    "INSERT INTO order_lines (order_id, qty) SELECT o.id, s.seq FROM orders o JOIN seq_1_to_3 s",
]


class Writer(threading.Thread):
    """Inserts an order and exactly three lines per transaction until stopped."""

    def __init__(self, url: DatabaseUrl, connect) -> None:
        super().__init__(daemon=True)
        self.url, self.connect = url, connect
        self.stop = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.connect(self.url.name, autocommit=False) as conn, conn.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute("INSERT INTO orders (note) VALUES ('live')")
                    oid = cur.lastrowid
                    cur.execute("INSERT INTO order_lines (order_id, qty) VALUES (%s, 1), (%s, 2), (%s, 3)",
                                (oid, oid, oid))
                    conn.commit()
                    self.commits += 1
        except BaseException as e:
            self.error = e


def test_counts_come_from_the_dump_snapshot_under_concurrent_writes(my_db, my_connect_fn, dump_to_file,
                                                                   workdir) -> None:
    src = my_db("live")
    execute(src, *ORDERS_SCHEMA)
    writer = Writer(src, my_connect_fn)
    writer.start()
    adapter = MysqlAdapter(src)
    try:
        while writer.commits < 20 and writer.error is None:
            time.sleep(0.01)
        before = writer.commits
        dump = dump_to_file(adapter)
        during = writer.commits - before
        time.sleep(0.2)
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None
    assert during > 0, "the writer made no commit while the dump ran: the test proves nothing"
    assert adapter.counts_consistent

    dst = my_db("live_dst", create=False)
    restored = adapter.restore(dump.chunks(), dump.info, dst, replace=False, workdir=workdir)

    assert restored == dump.info.tables
    assert restored["order_lines"] == 3 * restored["orders"]
    assert query(dst, "SELECT COUNT(*) FROM (SELECT o.id FROM orders o LEFT JOIN order_lines l "
                      "ON l.order_id = o.id GROUP BY o.id HAVING COUNT(l.id) <> 3) bad") == [(0,)]
    assert adapter.row_counts(src)["orders"] > dump.info.tables["orders"]


# ---- 3. errors ----------------------------------------------------------------------------------------

ODD_PASSWORD = "p\"a\\ss#w'rd ;x=€"


def test_server_down(tmp_path: Path) -> None:
    adapter = MysqlAdapter(parse_database_url(f"mysql://root:{SECRET}@127.0.0.1:1/erp"))
    with pytest.raises(DatabaseError) as e:
        adapter.check_available()
    assert_actionable(e.value, "127.0.0.1:1", "not reachable", "start the server")
    with pytest.raises(DatabaseError) as e:
        adapter.dump(lambda chunk: None, tmp_path)
    assert_actionable(e.value, "not reachable")


def test_wrong_password(my_db, my_user) -> None:
    src = my_db("pw")
    user = my_user(SECRET)
    adapter = MysqlAdapter(replace(src, user=user, password="Wrong-" + SECRET))
    with pytest.raises(DatabaseError) as e:
        adapter.check_available()
    assert_actionable(e.value, f"refused the login of user '{user}'", "check the user and password",
                      secrets=(SECRET, "Wrong-" + SECRET))


def test_missing_database(my_server) -> None:
    adapter = MysqlAdapter(parse_database_url("mysql://root@127.0.0.1:3306/no_such_db"))
    with pytest.raises(DatabaseError) as e:
        adapter.check_available()
    assert_actionable(e.value, "database 'no_such_db' does not exist", "create it")


def test_missing_client_binary(my_db, monkeypatch, tmp_path: Path) -> None:
    src = my_db("nobin")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    adapter = MysqlAdapter(src)
    with pytest.raises(ToolMissingError) as e:
        adapter.check_available()
    assert_actionable(e.value, "neither 'mariadb-dump' nor 'mysqldump'", "apt-get install mariadb-client")
    with pytest.raises(ToolMissingError):
        adapter.dump(lambda chunk: None, tmp_path)


def test_user_with_odd_password_and_full_grants_dumps_consistently(my_db, my_user, dump_to_file,
                                                                   workdir) -> None:
    # the password travels through the 0600 option file: quotes, backslash, '#', ';' must survive
    src = my_db("odd")
    execute(src, "CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t SELECT seq FROM seq_1_to_100")
    user = my_user(ODD_PASSWORD)
    execute(None, f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{src.name}`.* TO '{user}'@'%'")
    adapter = MysqlAdapter(replace(src, user=user, password=ODD_PASSWORD))
    adapter.check_available()

    dump = dump_to_file(adapter)
    assert dump.info.tables == {"t": 100}
    assert not adapter.counts_consistent, "without RELOAD the counts are best effort"

    execute(None, f"GRANT RELOAD ON *.* TO '{user}'@'%'")
    dump = dump_to_file(adapter)
    assert adapter.counts_consistent
    assert adapter.verify_dump(dump.chunks(), dump.info, workdir) == []


def test_table_without_select_permission(my_db, my_user, tmp_path: Path) -> None:
    src = my_db("perm")
    execute(src, "CREATE TABLE visible (id INT)", "CREATE TABLE secret (id INT)",
            "INSERT INTO secret VALUES (1)")
    user = my_user(SECRET)
    execute(None, f"GRANT SELECT ON `{src.name}`.visible TO '{user}'@'%'",
            f"GRANT INSERT ON `{src.name}`.secret TO '{user}'@'%'")  # visible to the user, not readable
    adapter = MysqlAdapter(replace(src, user=user, password=SECRET))
    with pytest.raises(DatabaseError) as e:
        adapter.check_available()
    assert_actionable(e.value, f"user '{user}' cannot read table `secret`", "GRANT SELECT")
    with pytest.raises(DatabaseError) as e:
        adapter.dump(lambda chunk: None, tmp_path)
    assert_actionable(e.value, "denied")


def test_verify_reports_truncated_and_incomplete_dumps(my_db, dump_to_file, workdir) -> None:
    src = my_db("trunc")
    # 3,000 orders (~1 MB of dump; 60,000 took ~15 s to read three times): still many statements
    # across every cut and 997-byte chunk boundary
    execute(src, *(q.replace("seq_1_to_60000", "seq_1_to_3000") for q in ORDERS_SCHEMA))
    adapter = MysqlAdapter(src)
    dump = dump_to_file(adapter)
    size = dump.path.stat().st_size

    for limit in (size // 2, size - 60):
        problems = adapter.verify_dump(dump.chunks(limit=limit), dump.info, workdir)
        assert problems and "truncated" in problems[0], problems
    assert adapter.verify_dump(iter([]), dump.info, workdir) == ["the dump is empty"]
    ghost = replace(dump.info, tables={**dump.info.tables, "ghost": 7})
    assert adapter.verify_dump(dump.chunks(size=997), ghost, workdir) == [
        "table `ghost` recorded in the manifest has no CREATE TABLE in the dump"]


def test_restore_refuses_a_non_empty_target_unless_replace(my_db, dump_to_file, workdir) -> None:
    src = my_db("refuse")
    execute(src, "CREATE TABLE t (id INT)", "INSERT INTO t SELECT seq FROM seq_1_to_10")
    adapter = MysqlAdapter(src)
    dump = dump_to_file(adapter)
    dst = my_db("occupied")
    execute(dst, "CREATE TABLE precious (id INT)", "INSERT INTO precious VALUES (1)")

    with pytest.raises(RestoreError) as e:
        adapter.restore(dump.chunks(), dump.info, dst, replace=False, workdir=workdir)
    assert_actionable(e.value, f"'{dst.name}' already exists", "pass --force to drop and recreate it")
    assert query(dst, "SELECT COUNT(*) FROM precious") == [(1,)]

    assert adapter.restore(dump.chunks(), dump.info, dst, replace=True, workdir=workdir) == {"t": 10}
    assert query(dst, "SHOW TABLES") == [("t",)]


def test_restore_stops_at_the_first_error(my_db, dump_to_file, workdir, tmp_path: Path) -> None:
    src = my_db("err")
    execute(src, "CREATE TABLE a (id INT)", "CREATE TABLE b (id INT)", "INSERT INTO a VALUES (1)",
            "INSERT INTO b VALUES (2)")
    adapter = MysqlAdapter(src)
    dump = dump_to_file(adapter)
    broken = dump.path.read_bytes().replace(b"INSERT INTO `a` VALUES", b"INSERT INTO `a` VALUEZ", 1)
    dst = my_db("err_dst", create=False)
    with pytest.raises(RestoreError) as e:
        adapter.restore(iter([broken]), dump.info, dst, replace=False, workdir=workdir)
    assert_actionable(e.value, "restore into database", "ERROR 1064")
    assert query(dst, "SHOW TABLES LIKE 'b'") == [], "the client went on after an error"
