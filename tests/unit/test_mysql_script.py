"""The MySQL dump splitter: statements as the clients read them, client commands refused (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erp_backup.adapters.databases.mysql_script import (
    SANDBOX_LINE,
    DumpRejected,
    SessionModeTracker,
    Statement,
    StatementSplitter,
    splitter_statements,
    statements,
)

HONEST = (
    SANDBOX_LINE + b" \n"
    b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n--\n-- Host: 127.0.0.1    Database: erp\n"
    b"/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;\n"
    b"/*M!100616 SET @OLD_NOTE_VERBOSITY=@@NOTE_VERBOSITY, NOTE_VERBOSITY=0 */;\n"
    b"\n--\n-- Table structure for table `t`\n--\n\n"
    b"DROP TABLE IF EXISTS `t`;\n"
    b"CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `note` text DEFAULT NULL,\n  PRIMARY KEY (`id`)\n)"
    b" ENGINE=InnoDB;\n"
    b"INSERT INTO `t` VALUES\n(1,'a;b -- c # d /* e */ \\\\! \\' \"x\" `y`'),\n"
    b"(2,'it''s \\n\\t\\r\\0 \\\\'),\n(3,'\xe9\xa1\xa7\xe5\xae\xa2 \xf0\x9f\x98\x80'),\n(-4,NULL);\n"
    b"# a hash comment ; with a semicolon\n"
    b"/* a plain comment ; \\! system */\n"
    b"DELIMITER ;;\n"
    b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`%`*/ /*!50003 TRIGGER `t_ai` AFTER INSERT ON `t` FOR EACH ROW"
    b" BEGIN\n  SET @x = 'a;b';\n  INSERT INTO audit VALUES (NEW.id); END */;;\n"
    b"DELIMITER ;\n"
    b"/*!50003 SET sql_mode              = 'NO_BACKSLASH_ESCAPES' */ ;\n"
    b"SELECT 'C:\\';\n"
    b"/*!50003 SET sql_mode              = @OLD_SQL_MODE */ ;\n"
    b"SELECT 'it\\'s';\n"
    b"-- Dump completed on 2026-11-28  2:00:00\n"
)
EXPECTED = [
    b"/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */",
    b"/*M!100616 SET @OLD_NOTE_VERBOSITY=@@NOTE_VERBOSITY, NOTE_VERBOSITY=0 */",
    b"DROP TABLE IF EXISTS `t`",
    b"CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `note` text DEFAULT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB",
    b"INSERT INTO `t` VALUES\n(1,'a;b -- c # d /* e */ \\\\! \\' \"x\" `y`'),\n(2,'it''s \\n\\t\\r\\0 \\\\'),\n"
    b"(3,'\xe9\xa1\xa7\xe5\xae\xa2 \xf0\x9f\x98\x80'),\n(-4,NULL)",
    b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`%`*/ /*!50003 TRIGGER `t_ai` AFTER INSERT ON `t` FOR EACH ROW"
    b" BEGIN\n  SET @x = 'a;b';\n  INSERT INTO audit VALUES (NEW.id); END */",
    b"/*!50003 SET sql_mode              = 'NO_BACKSLASH_ESCAPES' */ ",
    b"SELECT 'C:\\'",
    b"/*!50003 SET sql_mode              = @OLD_SQL_MODE */ ",
    b"SELECT 'it\\'s'",
]


def split(data: bytes, size: int = 1 << 20) -> list[Statement]:
    return list(statements([data[i:i + size] for i in range(0, len(data), size)] or [b""],
                           SessionModeTracker()))


def test_an_honest_dump_splits_into_its_statements() -> None:
    got = split(HONEST)
    assert [s.sql for s in got] == EXPECTED
    assert [s.line for s in got][:4] == [5, 6, 12, 13]
    assert got[-1].line == HONEST.count(b"\n") - 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40))
def test_chunk_boundaries_change_nothing(sizes: list[int]) -> None:
    chunks, pos, i = [], 0, 0
    while pos < len(HONEST):
        n = sizes[i % len(sizes)]
        chunks.append(HONEST[pos:pos + n])
        pos, i = pos + n, i + 1
    assert [s.sql for s in statements(chunks, SessionModeTracker())] == EXPECTED


def test_crlf_line_endings_split_the_same() -> None:
    got = split(HONEST.replace(b"\n", b"\r\n"), size=7)
    assert [s.sql.replace(b"\r\n", b"\n") for s in got] == EXPECTED


def test_a_large_statement_splits_the_same_in_small_chunks() -> None:
    row = b"(1,'" + b"x\\'y" * 50 + b"'),\n"
    big = b"INSERT INTO `t` VALUES\n" + row * 20000 + b"(2,'" + b"z" * 300000 + b"');\nSELECT 1;\n"
    got = split(big, size=4096)
    assert [len(s.sql) for s in got] == [len(big) - len(b";\nSELECT 1;\n"), 8]


# ---- client commands and other things a dump tool never writes -------------------------------------

REFUSED = {
    "shell escape": (b"SELECT 1;\n\\! touch /tmp/M\n", "client command '\\!' (system)", 2),
    "system": (b"SELECT 1;\nsystem touch /tmp/M\n", "client command 'system touch /tmp/M'", 2),
    "SYSTEM, indented, tab": (b"SELECT 1;\n  \tSYSTEM\ttouch /tmp/M\n", "client command 'SYSTEM", 2),
    "system after a statement": (b"SELECT 1; system touch /tmp/M;\n", "client command 'system", 1),
    "short form after a statement": (b"INSERT INTO t VALUES (1); \\! touch /tmp/M\n", "'\\!' (system)", 1),
    "short form inside a statement": (b"INSERT INTO t VALUES (1) \\! touch /tmp/M\n;", "'\\!' (system)", 1),
    "source short": (b"SELECT 1;\n\\. /etc/passwd\n", "'\\.' (source)", 2),
    "source": (b"source /etc/passwd\n", "client command 'source", 1),
    "tee": (b"tee /tmp/out\nSELECT 1;\n", "client command 'tee", 1),
    "tee short": (b"\\T /tmp/out\n", "'\\T' (tee)", 1),
    "pager": (b"pager touch /tmp/M\n", "client command 'pager", 1),
    "pager short": (b"SELECT 1 \\P touch /tmp/M\n;", "'\\P' (pager)", 1),
    "connect": (b"connect other_db evil.example\n", "client command 'connect", 1),
    "use": (b"USE `other_db`;\n", "client command 'USE", 1),
    "use short": (b"\\u other_db\n", "'\\u' (use)", 1),
    "help": (b"? contents\n", "client command '?", 1),
    "exit ends the restore early": (b"SELECT 1;\nexit\nDROP TABLE t;\n", "client command 'exit'", 2),
    "charset": (b"\\C gbk\n", "'\\C' (charset)", 1),
    "unknown short form": (b"SELECT 1 \\z;\n", "backslash outside a string", 1),
    "after a comment on its line": (b"/* c */ system touch /tmp/M;\n", "client command 'system", 1),
    "comment boundary": (b"/* x\n*/ \\! touch /tmp/M\n", "'\\!' (system)", 2),
    "inside an executable comment": (b"/*!40101 \\! touch /tmp/M */;\n", "'\\!' (system)", 1),
    "inside a MariaDB comment": (b"/*M!100000 \\! touch /tmp/M */;\n", "'\\!' (system)", 1),
    "sandbox line not first": (b"SELECT 1;\n" + SANDBOX_LINE + b"\n", "'\\-' (sandbox)", 2),
    "after a string": (b"SELECT 'a\\\\' \\! touch /tmp/M\n;", "'\\!' (system)", 1),
    "NUL byte": (b"SELECT 1;\nSELECT '\x00';\n", "NUL byte", 2),
    "BOM then command": (b"\xef\xbb\xbfsystem touch /tmp/M\n", "client command 'system", 1),
    "nbsp then command": (b"\xa0system touch /tmp/M\n", "client command 'system", 1),
    "crlf": (b"SELECT 1;\r\nsystem touch /tmp/M\r\n", "client command 'system", 2),
    "crlf short": (b"SELECT 1;\r\n\\! touch /tmp/M\r\n", "'\\!' (system)", 2),
    "no sandbox line, first line": (b"\\! touch /tmp/M\n" + b"SELECT 1;\n", "'\\!' (system)", 1),
    "sandbox line then command": (SANDBOX_LINE + b"\nsystem touch /tmp/M\n", "client command 'system", 2),
    "ambiguous -- comment": (b"--x \\! touch /tmp/M\nSELECT 1;\n", "ambiguous comment '--x", 1),
    "MySQL hint hiding a quote": (b"SELECT 1 /*+ ' */ \\! x';\n", "read differently", 1),
    "MariaDB comment hiding a delimiter": (b"SELECT 1 /*M!1 ; */;\n", "read differently", 1),
    "identifier ending in a backslash": (b"SELECT `a\\` \\! x`;\n", "quoted name ending in a backslash", 1),
    "DELIMITER after a statement": (b"SELECT 1; DELIMITER ;;\n", "DELIMITER command that does not start", 1),
    "DELIMITER with a backslash": (b"DELIMITER \\\\\n", "unusual DELIMITER", 1),
    "DELIMITER with extra text": (b"DELIMITER ;; \\! touch /tmp/M\n", "unusual DELIMITER command", 1),
    "DELIMITER quoted": (b"DELIMITER ';;'\n", "unusual DELIMITER", 1),
    "command after a changed delimiter": (b"DELIMITER //\nSELECT 1//\nsystem touch /tmp/M//\n",
                                          "client command 'system", 3),
    "ends inside a string": (b"SELECT 'abc;\n", "ends inside a string", 1),
    "ends inside a comment": (b"SELECT 1;\n/* abc\n", "ends inside a comment", 2),
    "ends inside a statement": (b"SELECT 1;\nSELECT 2\n", "ends inside a statement", 2),
}


@pytest.mark.parametrize("size", [1, 3, 1 << 20])
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_client_commands_and_ambiguities_are_refused(name: str, size: int) -> None:
    dump, problem, line = REFUSED[name]
    with pytest.raises(DumpRejected) as e:
        split(dump, size)
    assert problem in e.value.problem, e.value.problem
    assert e.value.line == line
    assert "\n" not in str(e.value)


def test_nothing_after_a_refused_command_is_yielded() -> None:
    seen: list[bytes] = []
    with pytest.raises(DumpRejected):
        for s in split_lazily(b"SELECT 1;\nSELECT 2;\n\\! touch /tmp/M\nSELECT 3;\n"):
            seen.append(s.sql)
    assert seen == [b"SELECT 1", b"SELECT 2"]


def split_lazily(data: bytes):  # type: ignore[no-untyped-def]
    return statements([data[i:i + 5] for i in range(0, len(data), 5)], SessionModeTracker())


# ---- the SQL mode: strings as the server reads them ------------------------------------------------

def test_the_session_mode_decides_where_strings_end() -> None:
    """With NO_BACKSLASH_ESCAPES a client reads 'C:\\' as a whole string: what follows it is code.
    A restore takes the mode from the server; a verification follows the dump's SET statements."""
    dump = b"SELECT 'C:\\'; \\! touch /tmp/M\n;"
    sp = StatementSplitter()
    sp.set_mode(no_backslash_escapes=True, ansi_quotes=False)
    with pytest.raises(DumpRejected, match="system"):
        list(splitter_statements(sp, [dump]))
    plain = StatementSplitter()  # backslash escapes: one string up to the last quote, then the end
    with pytest.raises(DumpRejected, match="ends inside a string"):
        list(splitter_statements(plain, [dump]))
    with pytest.raises(DumpRejected, match="system"):
        split(b"SET sql_mode='NO_BACKSLASH_ESCAPES';\n" + dump)
    with pytest.raises(DumpRejected, match="system"):
        split(b"/*!40101 SET @m=@@sql_mode, sql_mode = 'ANSI,NO_BACKSLASH_ESCAPES' */;\n" + dump)


def test_ansi_quotes_make_double_quotes_names() -> None:
    with pytest.raises(DumpRejected, match="quoted name ending in a backslash"):
        split(b"SET sql_mode='ANSI_QUOTES';\nSELECT \"a\\\" \\! touch /tmp/M\";\n")
    assert [s.sql for s in split(b"SET sql_mode='ANSI';\nSELECT \"a\\b\";\n")][1] == b'SELECT "a\\b"'


@pytest.mark.parametrize("statement", [
    b"SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
    b"SET sql_mode = @never_saved",
    b"SET @@session.sql_mode = @@global.sql_mode",
    b"SET sql_mode = DEFAULT",
    b"SET STATEMENT sql_mode='NO_BACKSLASH_ESCAPES' FOR SELECT 1",
    b"/**/ SET /**/ sql_mode = 'NO_BACKSLASH_ESCAPES'",
    b"EXECUTE stmt",
    b"execute immediate 'SET sql_mode=1'",
])
def test_mode_changes_a_verification_cannot_follow_are_refused(statement: bytes) -> None:
    with pytest.raises(DumpRejected) as e:
        split(b"SELECT 1;\n" + statement + b";\nSELECT 2;\n")
    assert e.value.line == 2
    assert "sql_mode" in e.value.problem or "EXECUTE" in e.value.problem


def test_mode_changes_of_dump_tools_are_followed() -> None:
    t = SessionModeTracker()
    for sql, mode in [
        (b"/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */", (False, False)),
        (b"/*!50003 SET @saved_sql_mode       = @@sql_mode */ ", (False, False)),
        (b"/*!50003 SET sql_mode              = 'NO_BACKSLASH_ESCAPES,ANSI_QUOTES' */ ", (True, True)),
        (b"SET @@SESSION.sql_mode := 'ORACLE'", (False, True)),
        (b"/*!50003 SET sql_mode              = @saved_sql_mode */ ", (False, False)),
        (b"SET SESSION sql_mode='NO_BACKSLASH_ESCAPES'", (True, False)),
        (b"SET GLOBAL sql_mode='ANSI'", (True, False)),
        (b"/*!40101 SET SQL_MODE=@OLD_SQL_MODE */", (False, False)),
        (b"INSERT INTO t VALUES ('SET sql_mode=1')", (False, False)),
    ]:
        assert t.after(Statement(sql, 1)) == mode, sql


# ---- DEFINER clauses are rewritten to the owner role (restore runs confined) -----------------------

from erp_backup.adapters.databases.mysql_script import confine_definers  # noqa: E402


@pytest.mark.parametrize("sql", [
    b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr AFTER INSERT ON t "
    b"FOR EACH ROW SET @a=1 */",
    b"CREATE DEFINER=`ro``ot`@`%` PROCEDURE `p`() SELECT 1",
    b"CREATE DEFINER = 'root'@'localhost' FUNCTION f() RETURNS int RETURN 1",
    b"/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=`erp`@`10.0.0.%` SQL SECURITY DEFINER */",
    b"CREATE definer=root@localhost EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 1",
    b"CREATE DEFINER=`some_role` VIEW v AS SELECT 1",
    b"CREATE DEFINER=CURRENT_USER() VIEW v AS SELECT 1",
])
def test_every_definer_clause_becomes_current_role(sql: bytes) -> None:
    out = confine_definers(sql)
    assert out.count(b"DEFINER=CURRENT_ROLE") == 1
    assert b"root" not in out and b"erp" not in out and b"some_role" not in out


@given(st.text(alphabet="DEFINR=`'@ rot\\x", max_size=30))
@settings(max_examples=300)
def test_strings_and_comments_are_data(inner: str) -> None:
    text = inner.replace("'", "''").replace("\\", "\\\\").encode()
    for sql in (b"INSERT INTO t VALUES ('" + text + b"')", b"SELECT 1 /* " + inner.replace("*/", "").encode() + b" */"):
        assert confine_definers(sql) == sql


# ---- NO_BACKSLASH_ESCAPES / ANSI_QUOTES: the checks read strings as the server does (a review hid
# ---- INTO OUTFILE after 'a\' with the mode on, and a DEFINER rewrite changed a routine's string)
from erp_backup.adapters.databases.mysql_script import (  # noqa: E402
    check_confined,
)


def test_a_statement_hidden_after_a_backslash_under_no_backslash_escapes_is_refused() -> None:
    dump = (b"SET sql_mode='NO_BACKSLASH_ESCAPES';\nCREATE TABLE `t` (a TEXT);\n"
            b"SELECT 'a\\' INTO OUTFILE '/tmp/x.txt' -- '\n;\n")
    with pytest.raises(DumpRejected, match="beyond the restored database"):
        for s in statements([dump], SessionModeTracker()):
            check_confined(s)
    hidden_global = Statement(b"SET @a='x\\', @@GLOBAL.max_connections=5 -- '", 1, nbe=True)
    with pytest.raises(DumpRejected):
        check_confined(hidden_global)
    # the same text without the mode is one string: nothing to refuse
    check_confined(Statement(b"SET @a='x\\', @@GLOBAL.max_connections=5 -- '", 1))


def test_a_plain_insert_under_no_backslash_escapes_is_checked_in_full() -> None:
    sneaky = Statement(b"INSERT INTO `t` VALUES ('a\\'),('b') INTO OUTFILE '/tmp/y' -- '),('c')", 1, nbe=True)
    with pytest.raises(DumpRejected):
        check_confined(sneaky)


def test_definer_rewrite_leaves_strings_alone_in_every_mode() -> None:
    body = b"CREATE DEFINER=`bob`@`%` PROCEDURE p() SELECT 'C:\\' AS a, 'note: definer = bob' AS b"
    out = confine_definers(body, nbe=True)
    assert out == b"CREATE DEFINER=CURRENT_ROLE PROCEDURE p() SELECT 'C:\\' AS a, 'note: definer = bob' AS b"
    ansi = b'CREATE DEFINER=`bob`@`%` TRIGGER tr BEFORE INSERT ON "t" FOR EACH ROW SET @x = "definer = y"'
    assert confine_definers(ansi, ansi=True).count(b"CURRENT_ROLE") == 1
