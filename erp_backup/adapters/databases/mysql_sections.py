"""Which statements of a MySQL/MariaDB dump may run in parallel sessions. Pure: no I/O.

The parallel restore (``mysql._ParallelLoader``) feeds every statement, already split and checked
(``mysql_script``: client commands, ``check_confined``, the character set), to a ``SectionPlanner``,
which says where it runs. mariadb-dump writes one section per table::

    DROP TABLE IF EXISTS `t`; SET …; CREATE TABLE `t` (…); SET …;        structure
    LOCK TABLES `t` WRITE; ALTER TABLE `t` DISABLE KEYS;                 data
    INSERT INTO `t` VALUES (…),(…); …
    ALTER TABLE `t` ENABLE KEYS; UNLOCK TABLES;
    SET …; CREATE TRIGGER … ON `t` …; SET …;                             that table's triggers

after a preamble of session settings (``SET NAMES``, ``FOREIGN_KEY_CHECKS=0``, ``UNIQUE_CHECKS=0``,
``SQL_MODE``, ``TIME_ZONE``…), and ends with views, events and routines. Steps:

* ``SESSION``: a session setting of a form the planner can replay (``SET`` of known session
  variables and user variables to literals or variables; ``SET NAMES``): it runs on the control
  session and is recorded; every data session replays the record before a section, so each runs
  with the session state the serial restore would have at that point.
* ``LOCAL``: DDL of one table (``DROP TABLE/VIEW/SEQUENCE IF EXISTS``, ``CREATE TABLE`` or
  ``CREATE SEQUENCE`` without ``SELECT``, a view's stand-in ``CREATE VIEW `v` AS SELECT NULL AS
  `c`…``, ``DO SETVAL(`s`, n, 0)``): runs on the control session once the data sections of that
  table and of the tables it is linked to by a foreign key are done. A table's triggers
  (``CREATE TRIGGER … ON``) run after a barrier (their bodies name other tables).
* ``BEGIN`` / ``DATA`` / ``END``: a data section (``LOCK TABLES `t` WRITE`` … ``UNLOCK TABLES``
  holding only ``ALTER TABLE `t` DISABLE/ENABLE KEYS`` and plain INSERTs of literals into ``t``):
  one data session runs it. ``exclusive``: it must run alone (foreign key checks are on, or the
  table has triggers, which may write other tables).
* ``BARRIER``: anything else: all sessions finish first, then it runs alone on the control
  session. ``serial`` when it may change the session state (not DDL, a ``@`` variable, a
  temporary table…): from then on every statement runs in order on one session (``SERIAL``).
* ``ADOPT``: an unexpected statement inside a data section: the sessions finish, then the
  section's session runs it and every statement after it in order (``SERIAL``): it holds the
  section's locks, as the serial restore's session would.

Anything the planner does not recognize takes the safe order: a crafted or unusual dump restores
as the serial restore would, only slower.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from erp_backup.adapters.databases.mysql_script import Statement, plain_insert_of


class Kind(enum.Enum):
    SESSION = "session"
    LOCAL = "local"
    BEGIN = "begin"
    DATA = "data"
    END = "end"
    BARRIER = "barrier"
    ADOPT = "adopt"
    SERIAL = "serial"


@dataclass(frozen=True)
class Step:
    kind: Kind
    st: Statement
    table: str | None = None  # LOCAL, BEGIN: the table (as the dump names it)
    waits: tuple[str, ...] = ()  # LOCAL: the tables whose data sections must be done first (table_key)
    exclusive: bool = False  # BEGIN: the section runs alone
    serial: bool = False  # BARRIER: every statement after it runs in order on one session


def table_key(name: str) -> str:
    """Names compared without case: a server with lower_case_table_names may take `T` for `t`
    (waiting for a section that does not need it only costs time)."""
    return name.lower()


# session variables a dump tool sets, whose value depends only on the session's own statements
REPLAYABLE = frozenset({
    "character_set_client", "character_set_results", "character_set_connection", "collation_connection",
    "time_zone", "unique_checks", "foreign_key_checks", "sql_mode", "sql_notes", "sql_quote_show_create",
    "names",
})
_NAME = rb"`((?:[^`]|``){1,256})`"
_STRINGS = re.compile(rb"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"")
_COMMENTS = re.compile(rb"/\*(?!!|M!).*?\*/|(?:--[ \t]|#)[^\n]*", re.S)
_OPENER = re.compile(rb"/\*M?!\d*|\*/")
_SET = re.compile(rb"\s*SET\s+", re.I)
_SYSVAR = rb"(?:@@(?:session\.|local\.)?|(?:session|local)\s+)?([A-Za-z_]+)"
_SOURCE = rb"(?:'[^'\\]*'|-?\d+|[A-Za-z0-9_]+|@[A-Za-z_][\w$]*|@@(?:session\.|local\.)?([A-Za-z_]+))"
_ASSIGN = re.compile(rb"\s*(?:(@[A-Za-z_][\w$]*)|" + _SYSVAR + rb")\s*:?=\s*" + _SOURCE + rb"\s*(,|\Z)", re.I)
_SET_NAMES = re.compile(rb"\s*SET\s+NAMES\s+'?[A-Za-z0-9_]+'?(?:\s+COLLATE\s+'?[A-Za-z0-9_]+'?)?\s*", re.I)
_DROP_TABLE = re.compile(rb"\s*DROP\s+(?:TABLE|VIEW|SEQUENCE)\s+(?:IF\s+EXISTS\s+)?" + _NAME + rb"\s*", re.I)
_CREATE_TABLE = re.compile(rb"\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME + rb"\s*\(", re.I)
_BARE = rb"([A-Za-z0-9_$]{1,64})"  # an unquoted name (mariadb-dump writes trigger statements as they were created)
_CREATE_TRIGGER = re.compile(rb"\s*CREATE\s+(?:DEFINER\s*=\s*\S+\s+)?TRIGGER\s+(?:" + _NAME + rb"|" + _BARE
                             + rb")\s+(?:BEFORE|AFTER)\s+(?:INSERT|UPDATE|DELETE)\s+ON\s+(?:" + _NAME + rb"|" + _BARE
                             + rb")\s+FOR\s+EACH\s+ROW\b", re.I)
_SETVAL = re.compile(rb"\s*(?:SELECT|DO)\s+SETVAL\s*\(\s*" + _NAME
                     + rb"\s*,\s*-?\d+\s*,\s*[01]\s*(?:,\s*\d+\s*)?\)\s*", re.I)
_CREATE_SEQUENCE = re.compile(rb"\s*CREATE\s+SEQUENCE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME + rb"\s", re.I)
_STAND_IN = rb"(?:NULL|1)\s+AS\s+`(?:[^`]|``){1,256}`"  # the placeholder of a view until the tables exist
_CREATE_STAND_IN = re.compile(rb"\s*CREATE\s+VIEW\s+" + _NAME + rb"\s+AS\s+SELECT\s+" + _STAND_IN
                              + rb"(?:\s*,\s*" + _STAND_IN + rb")*\s*", re.I)
_LOCK = re.compile(rb"\s*LOCK\s+TABLES\s+" + _NAME + rb"\s+WRITE\s*", re.I)
_UNLOCK = re.compile(rb"\s*UNLOCK\s+TABLES\s*", re.I)
_KEYS = re.compile(rb"\s*ALTER\s+TABLE\s+" + _NAME + rb"\s+(?:DISABLE|ENABLE)\s+KEYS\s*", re.I)
_DDL = re.compile(rb"\s*(?:CREATE|DROP|ALTER)\b", re.I)
_READS = re.compile(rb"\b(?:SELECT|LIKE|TEMPORARY|UNION)\b", re.I)  # a CREATE TABLE that reads other tables
_REFERENCES = re.compile(rb"\bREFERENCES\s+(?:`(?:[^`]|``){1,256}`\s*\.\s*)?`((?:[^`]|``){1,256})`", re.I)
_STATEFUL = re.compile(rb"@|\bTEMPORARY\b", re.I)
_DEFINER = re.compile(rb"\bDEFINER\s*=\s*\S+", re.I)
_IDENT = re.compile(rb"`(?:[^`]|``)*`")


def code_of(sql: bytes) -> bytes:
    """The statement as the server runs it, for recognizing its form: plain comments dropped,
    executable comments opened (``/*!40101 SET … */`` is ``SET …``), strings blanked."""
    return _OPENER.sub(b" ", _COMMENTS.sub(b" ", _STRINGS.sub(b"''", sql)))


def _unquote(raw: bytes) -> str:
    return raw.replace(b"``", b"`").decode("utf-8", "replace")


def _set_assignments(code: bytes, sql: bytes) -> list[tuple[str, bytes]] | None:
    """``[(target, source), …]`` of a replayable SET, None if it is not one (read from ``sql``
    with comments dropped and executable comments opened, strings kept: their values matter)."""
    text = _OPENER.sub(b" ", _COMMENTS.sub(b" ", sql)).strip()
    if _SET_NAMES.fullmatch(text):
        return [("names", text)]
    m = _SET.match(text)
    if m is None:
        return None
    pos, out = m.end(), []
    while True:
        a = _ASSIGN.match(text, pos)
        if a is None:
            return None
        user, sysvar, source_sys = a.group(1), a.group(2), a.group(3)
        if sysvar is not None and sysvar.decode().lower() not in REPLAYABLE:
            return None
        if source_sys is not None and source_sys.decode().lower() not in REPLAYABLE:
            return None
        out.append(((user or sysvar or b"").decode().lower(), a.group(0)))
        pos = a.end()
        if a.group(4) != b",":
            return out if pos == len(text) else None


class SectionPlanner:
    """Feed the dump's statements in order to ``step``; it says where each runs (see the module)."""

    def __init__(self) -> None:
        self.section: str | None = None  # the table whose data section is open
        self.serial = False  # from now on, every statement in order on one session
        self.fk_checks_off = False  # the session has FOREIGN_KEY_CHECKS=0 (the server's default is 1)
        self.triggered: set[str] = set()  # tables with triggers (their INSERTs may write other tables)
        self.children: dict[str, set[str]] = {}  # table -> the tables created with a foreign key to it

    def step(self, st: Statement) -> Step:
        if self.serial:
            return Step(Kind.SERIAL, st)
        if self.section is not None:
            return self._in_section(st)
        if plain_insert_of(st) is not None:  # data outside LOCK TABLES (mysqldump --skip-lock-tables)
            return self._barrier(st)
        code = code_of(st.sql)
        sets = _set_assignments(code, st.sql)
        if sets is not None:
            for target, assignment in sets:
                if target == "foreign_key_checks":
                    value = assignment.split(b"=", 1)[1].strip().rstrip(b",").strip()
                    self.fk_checks_off = value in (b"0", b"OFF", b"off", b"'OFF'", b"'off'", b"FALSE", b"false")
            return Step(Kind.SESSION, st)
        if m := _LOCK.fullmatch(code):
            table = _unquote(m.group(1))
            self.section = table
            return Step(Kind.BEGIN, st, table,
                        exclusive=not self.fk_checks_off or table_key(table) in self.triggered)
        if m := _DROP_TABLE.fullmatch(code):
            return self._local(st, _unquote(m.group(1)))
        if ((m := _CREATE_TABLE.match(code) or _CREATE_SEQUENCE.match(code))
                and not _READS.search(_IDENT.sub(b"``", code))):
            # a table's foreign keys change what the server opens with its parents and children: a
            # session holding LOCK TABLES on one of them would fail (ERROR 1100), so they finish first
            parents = {table_key(_unquote(r)) for r in _REFERENCES.findall(code)}
            return self._local(st, _unquote(m.group(1)), parents)
        if m := _CREATE_STAND_IN.fullmatch(code):
            return self._local(st, _unquote(m.group(1)))
        if m := _SETVAL.fullmatch(code):  # a sequence's next value (mariadb-dump writes it after CREATE SEQUENCE)
            return self._local(st, _unquote(m.group(1)))
        if _CREATE_TRIGGER.match(code):  # its body names other tables: every section finishes first
            m = _CREATE_TRIGGER.match(code)
            assert m is not None
            self.triggered.add(table_key(_unquote(m.group(3) or m.group(4))))
            return Step(Kind.BARRIER, st)
        return self._barrier(st, code)

    def _local(self, st: Statement, table: str, parents: set[str] | frozenset[str] = frozenset()) -> Step:
        key = table_key(table)
        for p in parents:
            self.children.setdefault(p, set()).add(key)
        waits = {key} | set(parents) | self.children.get(key, set())
        return Step(Kind.LOCAL, st, table, waits=tuple(sorted(waits)))

    def _barrier(self, st: Statement, code: bytes | None = None) -> Step:
        code = code_of(st.sql) if code is None else code
        neutral = bool(_DDL.match(code)) and not _STATEFUL.search(_DEFINER.sub(b" ", _IDENT.sub(b"``", code)))
        if not neutral:
            self.serial = True
        return Step(Kind.BARRIER, st, serial=not neutral)

    def _in_section(self, st: Statement) -> Step:
        table = self.section
        assert table is not None
        name = plain_insert_of(st)
        if name is not None:
            if name == table:
                return Step(Kind.DATA, st, table)
        elif len(st.sql) < 4096:
            code = code_of(st.sql)
            if _UNLOCK.fullmatch(code):
                self.section = None
                return Step(Kind.END, st, table)
            if (m := _KEYS.fullmatch(code)) and _unquote(m.group(1)) == table:
                return Step(Kind.DATA, st, table)
        self.serial = True
        self.section = None
        return Step(Kind.ADOPT, st, table)
