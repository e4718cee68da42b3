"""Where the parallel MySQL restore runs each statement (``SectionPlanner``) and the plain-INSERT
fast path of the checks (pure)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from erp_backup.adapters.databases import mysql_script as ms
from erp_backup.adapters.databases.mysql_script import (
    CharsetGuard,
    DumpRejected,
    Statement,
    check_confined,
    plain_insert_table,
    statements,
)
from erp_backup.adapters.databases.mysql_sections import Kind, SectionPlanner

PREAMBLE = (
    b"/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n"
    b"/*!40101 SET NAMES utf8mb4 */;\n"
    b"/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;\n"
    b"/*!40103 SET TIME_ZONE='+00:00' */;\n"
    b"/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;\n"
    b"/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;\n"
    b"/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;\n"
    b"/*!40111 SET @OLD_SQL_NOTES=@@SQL_NOTES, SQL_NOTES=0 */;\n"
)


def table(name: str, rows: int = 2, trigger: bool = False) -> bytes:
    t = name.encode()
    out = (b"DROP TABLE IF EXISTS `" + t + b"`;\n"
           b"/*!40101 SET @saved_cs_client     = @@character_set_client */;\n"
           b"/*!40101 SET character_set_client = utf8mb4 */;\n"
           b"CREATE TABLE `" + t + b"` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `note` text DEFAULT NULL COMMENT "
           b"'select me',\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=7;\n"
           b"/*!40101 SET character_set_client = @saved_cs_client */;\n"
           b"LOCK TABLES `" + t + b"` WRITE;\n/*!40000 ALTER TABLE `" + t + b"` DISABLE KEYS */;\n")
    for i in range(rows):
        out += (b"INSERT INTO `" + t + b"` VALUES\n(" + str(i).encode()
                + b",'it''s; \\' a',NULL),\n(-1.5e3,0x0aff,_binary 'x');\n")
    out += b"/*!40000 ALTER TABLE `" + t + b"` ENABLE KEYS */;\nUNLOCK TABLES;\n"
    if trigger:
        out += (b"/*!50003 SET @saved_cs_client      = @@character_set_client */ ;\n"
                b"/*!50003 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION' */ ;\n"
                b"DELIMITER ;;\n/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER `" + t
                + b"_ai` AFTER INSERT ON `" + t + b"` FOR EACH ROW INSERT INTO audit VALUES (NEW.id) */;;\n"
                b"DELIMITER ;\n/*!50003 SET sql_mode              = @OLD_SQL_MODE */ ;\n")
    return out


TAIL = (b"/*!50001 DROP VIEW IF EXISTS `v`*/;\n"
        b"/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */"
        b" /*!50001 VIEW `v` AS select `a`.`id` AS `id` from `a` */;\n"
        b"/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;\n/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n"
        b"-- Dump completed on 2026-11-28  2:00:00\n")


def plan(dump: bytes) -> list[tuple[Kind, str | None, bool]]:
    p = SectionPlanner()
    out = []
    for s in statements([dump]):
        step = p.step(s)
        out.append((step.kind, step.table, step.exclusive or step.serial))
    return out


def kinds(dump: bytes) -> list[Kind]:
    return [k for k, _, _ in plan(dump)]


def test_a_mariadb_dump_splits_into_sections() -> None:
    steps = plan(PREAMBLE + table("a") + table("b", trigger=True) + TAIL)
    assert steps[:8] == [(Kind.SESSION, None, False)] * 8
    a = steps[8:19]
    assert a == [(Kind.LOCAL, "a", False), (Kind.SESSION, None, False), (Kind.SESSION, None, False),
                 (Kind.LOCAL, "a", False), (Kind.SESSION, None, False), (Kind.BEGIN, "a", False),
                 (Kind.DATA, "a", False), (Kind.DATA, "a", False), (Kind.DATA, "a", False),
                 (Kind.DATA, "a", False), (Kind.END, "a", False)]
    b = steps[19:34]
    assert b[5] == (Kind.BEGIN, "b", False)
    assert b[10] == (Kind.END, "b", False)
    assert b[11:] == [(Kind.SESSION, None, False), (Kind.SESSION, None, False), (Kind.BARRIER, None, False),
                      (Kind.SESSION, None, False)]
    assert steps[34:] == [(Kind.LOCAL, "v", False), (Kind.BARRIER, None, False), (Kind.SESSION, None, False),
                          (Kind.SESSION, None, False)]


def test_without_foreign_key_checks_off_or_with_triggers_a_section_runs_alone() -> None:
    no_fk = PREAMBLE.replace(b"FOREIGN_KEY_CHECKS=0", b"FOREIGN_KEY_CHECKS=1")
    assert (Kind.BEGIN, "a", True) in plan(no_fk + table("a"))
    assert (Kind.BEGIN, "a", False) in plan(PREAMBLE + table("a"))
    # a second data section of a table that has a trigger now: its INSERTs may write other tables
    steps = plan(PREAMBLE + table("a", trigger=True) + b"LOCK TABLES `a` WRITE;\nINSERT INTO `a` VALUES (9,'x',1);\n"
                 b"UNLOCK TABLES;\n")
    assert [s for s in steps if s[0] is Kind.BEGIN] == [(Kind.BEGIN, "a", False), (Kind.BEGIN, "a", True)]


def test_an_unexpected_statement_in_a_section_makes_the_rest_serial() -> None:
    dump = (PREAMBLE + b"LOCK TABLES `a` WRITE;\nINSERT INTO `a` VALUES (1,'x');\n"
            b"INSERT INTO `other` VALUES (1);\nINSERT INTO `a` VALUES (2,'y');\nUNLOCK TABLES;\n" + table("b"))
    ks = kinds(dump)
    i = ks.index(Kind.ADOPT)
    assert ks[i - 2:i] == [Kind.BEGIN, Kind.DATA]
    assert set(ks[i + 1:]) == {Kind.SERIAL}


def test_statements_it_does_not_know_are_barriers() -> None:
    dump = PREAMBLE + table("a") + b"UPDATE `a` SET note = 'x';\n" + table("b")
    steps = plan(dump)
    assert (Kind.BARRIER, None, True) in steps  # an UPDATE: in order, alone, and serial from then on
    assert steps[-1][0] is Kind.SERIAL
    # DDL that changes no session state: a barrier, then parallel again
    steps = plan(PREAMBLE + table("a") + b"CREATE TABLE `c` LIKE `a`;\n" + table("b"))
    assert (Kind.BARRIER, None, False) in steps and (Kind.BEGIN, "b", False) in steps


def test_session_settings_it_cannot_replay_make_the_rest_serial() -> None:
    for sql in (b"SET @x = (SELECT COUNT(*) FROM a)", b"SET SESSION max_statement_time = 5",
                b"SET @x = @@warning_count", b"SELECT @x := 1", b"CREATE TEMPORARY TABLE `tmp` (id int)",
                b"SET STATEMENT sql_mode='' FOR INSERT INTO `a` VALUES (1)", b"LOCK TABLES `a` WRITE, `b` WRITE"):
        steps = plan(PREAMBLE + sql + b";\n" + table("b"))
        assert (Kind.BARRIER, None, True) in steps, sql
        assert steps[-1][0] is Kind.SERIAL, sql


def test_create_table_that_reads_another_table_is_a_barrier() -> None:
    steps = plan(PREAMBLE + table("a") + b"CREATE TABLE `c` AS SELECT * FROM `a`;\n")
    assert steps[-1] == (Kind.BARRIER, None, False)


def test_data_outside_lock_tables_and_inserts_with_expressions_are_not_parallel() -> None:
    steps = plan(PREAMBLE + b"INSERT INTO `a` VALUES (1,'x');\n" + table("b"))
    assert steps[8] == (Kind.BARRIER, None, True)
    steps = plan(PREAMBLE + b"LOCK TABLES `a` WRITE;\nINSERT INTO `a` VALUES ((SELECT MAX(id) FROM b));\n")
    assert steps[-1][0] is Kind.ADOPT


def test_plain_insert_table() -> None:
    assert plain_insert_table(b"INSERT INTO `a``b` VALUES (1,'x'),\n(2,NULL)") == "a`b"
    assert plain_insert_table(b"INSERT INTO `t` VALUES (1,-2.5e-3,0xFF,x'0a',b'01',_utf8mb4'x','a''b\\'c')") == "t"
    for sql in (b"INSERT INTO `t` VALUES (1,NOW())", b"INSERT INTO `t` VALUES (1,'x') ON DUPLICATE KEY UPDATE x=1",
                b"INSERT INTO `t` SELECT * FROM u", b"INSERT INTO `t` VALUES (1,'x'", b"INSERT INTO `t` VALUES (@x)",
                b"INSERT INTO `t` VALUES (1,'unclosed)", b"INSERT INTO `t` VALUES (1) INTO OUTFILE '/tmp/x'",
                b"INSERT INTO t VALUES (1)", b"insert into `t` values (1)"):
        assert plain_insert_table(sql) is None, sql


# ---- the fast path gives the checks' own answer -------------------------------------------------

_VALUE = st.one_of(
    st.integers(-10**12, 10**12).map(lambda i: str(i).encode()),
    st.just(b"NULL"),
    st.binary(max_size=12).map(lambda b: b"0x" + b.hex().encode()),
    st.binary(max_size=30).map(lambda b: b"'" + b.replace(b"\\", b"\\\\").replace(b"'", b"''") + b"'"),
    st.sampled_from([b"'a\\'b'", b"'@@global.x'", b"'INTO OUTFILE'", b"_binary 'x'", b"'/*!50000 x */'",
                     b"'\\\\'", b"'@x := 1, @y = @@character_set_client'", b"1.5e-3", b"'data directory'"]),
    st.text(max_size=8).map(lambda t: t.encode()),  # anything: the statement is then usually not plain
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_VALUE, min_size=1, max_size=4), min_size=1, max_size=4), st.sampled_from([b" ", b"\n"]))
def test_the_fast_path_agrees_with_the_full_checks(rows: list[list[bytes]], sep: bytes) -> None:
    sql = b"INSERT INTO `t` VALUES" + sep + b",".join(b"(" + b",".join(r) + b")" for r in rows)
    s = Statement(sql, 1)

    def full(fn: object) -> str:  # the check without the fast path
        saved = ms.plain_insert_table
        ms.plain_insert_table = lambda _sql: None  # type: ignore[assignment]
        try:
            fn()  # type: ignore[operator]
            return "ok"
        except DumpRejected as e:
            return e.problem
        finally:
            ms.plain_insert_table = saved

    def fast(fn: object) -> str:
        try:
            fn()  # type: ignore[operator]
            return "ok"
        except DumpRejected as e:
            return e.problem

    assert fast(lambda: check_confined(s)) == full(lambda: check_confined(s))
    g1, g2 = CharsetGuard(), CharsetGuard()
    assert fast(lambda: g1.check(s)) == full(lambda: g2.check(s))
    assert g1._saved == g2._saved
    if plain_insert_table(sql) is not None:  # literals only: the skeleton holds no @ and no keyword
        blank = ms._OPENER.sub(b" ", ms._BLANK.sub(b" ", sql))
        assert b"@" not in blank and not re.search(rb"(?i)\b(?:set|into\s+outfile|directory)\b", blank)


# ---- the planner's invariants over generated dumps ------------------------------------------------

_PIECE = st.one_of(
    st.sampled_from(["a", "b", "Ab", "c`d"]).map(lambda n: ("table", n)),
    st.sampled_from([
        b"UPDATE `a` SET x = 1;\n", b"SET @x = 1;\n", b"SET sql_mode = 'ANSI_QUOTES';\n", b"SELECT 1;\n",
        b"CREATE VIEW `v` AS SELECT 1 AS `x`;\n", b"DROP TABLE IF EXISTS `b`;\n", b"UNLOCK TABLES;\n",
        b"LOCK TABLES `a` WRITE;\n", b"INSERT INTO `a` VALUES (1);\n", b"ALTER TABLE `a` ENABLE KEYS;\n",
        b"SET FOREIGN_KEY_CHECKS=1;\n", b"SET FOREIGN_KEY_CHECKS=0;\n", b"DO SETVAL(`s`, 5, 0);\n",
        b"CREATE TABLE `k` (`id` int, FOREIGN KEY (`id`) REFERENCES `a` (`id`));\n",
    ]).map(lambda b: ("raw", b)),
)


def _render(pieces: list[tuple[str, object]]) -> bytes:
    out = PREAMBLE
    for kind, value in pieces:
        out += table(str(value).replace("`", "``"), rows=1) if kind == "table" else value  # type: ignore[operator]
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECE, max_size=12))
def test_planner_invariants(pieces: list[tuple[str, object]]) -> None:
    p = SectionPlanner()
    open_table: str | None = None
    serial = False
    n = 0
    for s in statements([_render(pieces)]):
        step = p.step(s)
        n += 1
        assert step.st is s
        if serial:
            assert step.kind is Kind.SERIAL  # once serial, always serial: dump order on one session
            continue
        if step.kind is Kind.BEGIN:
            assert open_table is None
            open_table = step.table
        elif step.kind in (Kind.DATA, Kind.END):
            assert open_table is not None and step.table == open_table
            if step.kind is Kind.DATA:
                assert plain_insert_table(s.sql) in (open_table, None)
                assert plain_insert_table(s.sql) == open_table or b"KEYS" in s.sql.upper()
            else:
                open_table = None
        elif step.kind is Kind.ADOPT:
            assert open_table is not None
            serial = True
        else:
            assert open_table is None, step  # nothing runs on the control session inside a section
            if step.kind is Kind.LOCAL:
                assert step.table is not None and step.waits
            if step.kind is Kind.BARRIER and step.serial:
                serial = True
    assert n > 0
