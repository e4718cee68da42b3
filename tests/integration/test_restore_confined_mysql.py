"""A MariaDB restore runs with the rights of the target database only (mysql_confine).

Crafted dumps (written here, real MariaDB server) name another database's table in every way
``check_confined`` lets through — plain, quoted, in an executable comment, in a trigger, view or
routine body, with ``DEFINER=root`` so that it would run with root's rights later — and the target's
name with ``_`` is matched by a wildcard grant unless escaped. After each: the other database is
unchanged, no temporary account is left, the owner role holds rights on the target only; the restore
fails in one line (or the stored object, fired later by root, is refused)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pymysql
import pytest

from erp_backup.adapters.databases.mysql import MysqlAdapter
from erp_backup.adapters.databases.mysql_confine import TEMP_PREFIX, owner_role
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import RestoreError
from tests.integration.conftest import assert_actionable, my_connect
from tests.integration.test_mysql_crafted import crafted, info_for

pytestmark = pytest.mark.integration

Sql = Callable[..., list[tuple[object, ...]]]

# {v}: the other database (it holds table t with one row, id 1)
REACHING = {
    "insert, plain name": b"INSERT INTO {v}.t VALUES (666);\n",
    "insert, quoted name": b"INSERT INTO `{v}`.`t` VALUES (666);\n",
    "insert in an executable comment": b"/*!40101 INSERT INTO `{v}`.t VALUES (666) */;\n",
    "delete": b"DELETE FROM `{v}`.t;\n",
    "drop table": b"DROP TABLE `{v}`.t;\n",
    "create table": b"CREATE TABLE `{v}`.evil (id int);\n",
    "rename into it": b"RENAME TABLE t TO `{v}`.stolen;\n",
    "read the account table": b"INSERT INTO t (id, note) SELECT 1000, authentication_string FROM mysql.user;\n",
    "trigger as root": (b"DELIMITER ;;\n/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER "
                        b"tr AFTER INSERT ON t FOR EACH ROW INSERT INTO `{v}`.t VALUES (NEW.id) */;;\nDELIMITER ;\n"),
    "view as root over mysql.user": (b"/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=`root`@`%` SQL "
                                     b"SECURITY DEFINER */ /*!50001 VIEW leak AS SELECT authentication_string "
                                     b"FROM mysql.user */;\n"),
    "definer the rewrite does not read": b"CREATE DEFINER/**/=root@localhost PROCEDURE p() SELECT 1;\n",
}


def other_db(my_db: Callable[..., DatabaseUrl], my_sql: Sql, name: str | None = None) -> DatabaseUrl:
    victim = my_db("victim") if name is None else my_db_named(my_db, name)
    my_sql(victim, "CREATE TABLE t (id INT)")
    my_sql(victim, "INSERT INTO t VALUES (1)")
    return victim


def my_db_named(my_db: Callable[..., DatabaseUrl], name: str) -> DatabaseUrl:
    url = my_db("x", create=False)
    with my_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
        cur.execute(f"DROP DATABASE IF EXISTS `{url.name}`")
    return DatabaseUrl(engine="mysql", name=name, host=url.host, port=url.port, user=url.user)


def state(my_sql: Sql, victim: DatabaseUrl) -> list[tuple[object, ...]]:
    return my_sql(None, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY 1",
                  (victim.name,)) + my_sql(victim, "SELECT id FROM t ORDER BY id")


def leftover_accounts(my_sql: Sql) -> list[tuple[object, ...]]:
    return my_sql(None, "SELECT User, Host FROM mysql.user WHERE User LIKE %s",
                  (TEMP_PREFIX.replace("_", "\\_") + "%",))


def assert_role_confined(my_sql: Sql, target: DatabaseUrl) -> None:
    grants = [str(r[0]) for r in my_sql(None, f"SHOW GRANTS FOR {owner_role(target.name)}")]
    assert len(grants) == 2, grants
    assert grants[0] == f"GRANT USAGE ON *.* TO `{owner_role(target.name)}`", grants
    escaped = target.name.replace("_", "\\_")
    assert grants[1] == f"GRANT ALL PRIVILEGES ON `{escaped}`.* TO `{owner_role(target.name)}`", grants


@pytest.mark.parametrize("shape", sorted(REACHING))
def test_a_dump_cannot_reach_another_database(shape: str, my_db, my_sql: Sql, workdir: Path) -> None:
    victim = other_db(my_db, my_sql)
    before = state(my_sql, victim)
    dst = my_db("dst", create=False)
    dump = crafted(REACHING[shape].replace(b"{v}", victim.name.encode()))
    with pytest.raises(RestoreError) as e:
        MysqlAdapter(dst).restore(iter([dump]), info_for(dst.name), dst, replace=False, workdir=workdir)
    assert_actionable(e.value, f"restore into database '{dst.name}' failed", "denied", "tampered")
    assert state(my_sql, victim) == before
    assert leftover_accounts(my_sql) == []
    assert_role_confined(my_sql, dst)


def test_an_underscore_in_the_target_name_is_no_wildcard(my_db, my_sql: Sql, workdir: Path) -> None:
    dst = my_db("dst", create=False)
    victim = other_db(my_db, my_sql, dst.name.replace("_", "X"))  # matched by `erpb_dst_…`.* unescaped
    before = state(my_sql, victim)
    dump = crafted(f"INSERT INTO `{victim.name}`.t VALUES (666);\n".encode())
    with pytest.raises(RestoreError, match="denied"):
        MysqlAdapter(dst).restore(iter([dump]), info_for(dst.name), dst, replace=False, workdir=workdir)
    assert state(my_sql, victim) == before


STORED = (b"DELIMITER ;;\n"
          b"CREATE DEFINER=`root`@`localhost` PROCEDURE `p`() INSERT INTO `{v}`.t VALUES (7) ;;\n"
          b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr AFTER DELETE ON t "
          b"FOR EACH ROW INSERT INTO `{v}`.t VALUES (OLD.id) */;;\n"
          b"DELIMITER ;\n"
          b"/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */ "
          b"/*!50001 VIEW v AS SELECT id FROM t */;\n")


def test_stored_objects_run_as_the_owner_role_not_as_root(my_db, my_sql: Sql, workdir: Path) -> None:
    """A routine or trigger whose body reaches past the target restores (nothing runs it during the
    restore) but runs later with the owner role's rights, even when root fires it."""
    victim = other_db(my_db, my_sql)
    before = state(my_sql, victim)
    dst = my_db("dst", create=False)
    dump = crafted(STORED.replace(b"{v}", victim.name.encode()))
    counts = MysqlAdapter(dst).restore(iter([dump]), info_for(dst.name), dst, replace=False, workdir=workdir)
    assert counts == {"t": 3}
    role = owner_role(dst.name)
    definers = my_sql(None, "SELECT DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s UNION ALL "
                      "SELECT DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s UNION ALL "
                      "SELECT DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s",
                      (dst.name, dst.name, dst.name))
    assert [str(d).rstrip("@") for (d,) in definers] == [role] * 3
    assert my_sql(dst, "SELECT COUNT(*) FROM v") == [(3,)]  # an honest view works as the role
    for statement in ("CALL p()", "DELETE FROM t WHERE id = 1"):
        with pytest.raises(pymysql.err.OperationalError, match="denied"):
            my_sql(dst, statement)  # as root
    assert state(my_sql, victim) == before
    assert leftover_accounts(my_sql) == []


def killed_inside(block: str) -> str:
    """Run ``block`` (Python ending inside a ``with`` that prints the temporary login's name) in a
    fresh process that then kills itself (SIGKILL) right there; return the name."""
    code = "import os, signal\n" + block + "    os.kill(os.getpid(), signal.SIGKILL)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done.stdout.strip()


def test_an_account_left_by_a_killed_restore_is_dropped_by_the_next(my_db, my_sql: Sql,
                                                                    workdir: Path) -> None:
    dst = my_db("dst")
    left = killed_inside("from erp_backup.adapters.databases.mysql import _connect\n"
                         "from erp_backup.adapters.databases.mysql_confine import confined_login\n"
                         "from erp_backup.core.dburl import parse_database_url\n"
                         f"url = parse_database_url({str(dst.redacted())!r})\n"
                         "with _connect(url, 10, None) as admin, confined_login(admin, url) as login:\n"
                         "    print(login.url.user, flush=True)\n")
    assert left.startswith(TEMP_PREFIX) and [r[0] for r in leftover_accounts(my_sql)] == [left]

    counts = MysqlAdapter(dst).restore(iter([crafted(b"")]), info_for(dst.name), dst, replace=False, workdir=workdir)
    assert counts == {"t": 3}
    assert leftover_accounts(my_sql) == []


def test_a_running_restore_keeps_its_account(my_db, my_sql: Sql) -> None:
    """The clean-up of a second restore does not drop the account of one that is still running."""
    from erp_backup.adapters.databases.mysql import _connect
    from erp_backup.adapters.databases.mysql_confine import confined_login, drop_stale_accounts

    dst = my_db("dst")
    with _connect(dst, 10, None) as admin, confined_login(admin, dst) as login:
        with _connect(dst, 10, None) as other:
            assert drop_stale_accounts(other) == []
        assert [r[0] for r in leftover_accounts(my_sql)] == [login.url.user]
    assert leftover_accounts(my_sql) == []


def test_a_restore_user_that_cannot_create_accounts_restores_with_its_own_rights(
        my_db, my_sql: Sql, my_user, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """As before this change: such a user's rights are all a crafted dump gets; the operator is told."""
    user = my_user("pw-4711")
    dst = my_db("dst", create=False)
    victim = other_db(my_db, my_sql)
    before = state(my_sql, victim)
    my_sql(None, f"GRANT ALL ON `{dst.name}`.* TO '{user}'@'%'")
    as_user = DatabaseUrl(engine="mysql", name=dst.name, host=dst.host, port=dst.port, user=user, password="pw-4711")
    dump = crafted(STORED.replace(b"{v}", victim.name.encode()))
    with caplog.at_level("WARNING", logger="erp_backup.databases"):
        counts = MysqlAdapter(as_user).restore(iter([dump]), info_for(dst.name), as_user, replace=False,
                                               workdir=workdir)
    assert counts == {"t": 3}
    warned = [r.getMessage() for r in caplog.records if "rights of the configured user" in r.getMessage()]
    assert len(warned) == 1 and "CREATE USER" in warned[0] and "pw-4711" not in caplog.text, caplog.text
    definers = my_sql(None, "SELECT DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
                      (dst.name,))
    assert definers == [(f"{user}@%",)]  # not root, as the dump said
    assert leftover_accounts(my_sql) == []
    assert state(my_sql, victim) == before


def test_the_owner_role_of_a_dropped_database_is_dropped_by_the_next_restore(my_db, my_sql: Sql,
                                                                            workdir: Path) -> None:
    first, second = my_db("gone", create=False), my_db("next", create=False)
    for dst in (first, second):
        MysqlAdapter(dst).restore(iter([crafted(b"")]), info_for(dst.name), dst, replace=False, workdir=workdir)
        if dst is first:
            roles = my_sql(None, "SELECT User FROM mysql.user WHERE is_role = 'Y' AND User = %s",
                           (owner_role(first.name),))
            assert roles == [(owner_role(first.name),)]
            my_sql(None, f"DROP DATABASE `{first.name}`")  # e.g. a restore test's scratch database
    roles = {r[0] for r in my_sql(None, "SELECT User FROM mysql.user WHERE is_role = 'Y'")}
    assert owner_role(first.name) not in roles and owner_role(second.name) in roles
    assert my_sql(second, "SELECT COUNT(*) FROM t") == [(3,)]
