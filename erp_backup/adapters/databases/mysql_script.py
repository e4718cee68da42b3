"""Split a MySQL/MariaDB dump into SQL statements the way the ``mariadb``/``mysql`` clients read it,
refusing every client command. Pure: no I/O.

Why: the clients execute *client commands* found in their input, even with ``--batch``:
``\\!``/``system`` (a shell), ``\\.``/``source`` (another file), ``\\T``/``tee`` (write a file),
``\\P``/``pager``, ``\\r``/``connect``, ``\\u``/``use``… — short forms anywhere outside strings and
comments, long forms as the first word of a statement. A crafted dump fed to a client runs commands
as the restoring user (root). MariaDB's sandbox line at the top of its dumps only protects a dump
that is honest. So our restore never feeds a dump to a client: it executes the statements this
module yields through its own server connection (PyMySQL, ``LOAD DATA LOCAL`` disabled), and the
verification reads the dump with the same splitter. Neither mariadb-dump nor mysqldump writes a
client command other than ``DELIMITER`` (triggers, routines, events) and MariaDB's sandbox line,
so a dump holding one is refused as damaged or tampered with, before that statement runs.

What is refused (``DumpRejected``), read as a union of what MariaDB and MySQL clients, old and
new, would do, so that no client finds a command we missed:

* a backslash outside strings and plain comments (``\\x`` is a command or nothing valid);
* a statement whose first word is a client command name (``system``, ``source``, ``use``…);
  ``DELIMITER`` is honoured only at the start of a line, with a plain argument;
* constructs the clients read differently: ``--x`` (no space) where a statement starts,
  ``/*M!…*/`` and ``/*+…*/`` (a comment for one client, code for another) holding quotes,
  backslashes, comments or the delimiter, an identifier or ANSI string whose closing quote
  follows a backslash;
* a NUL byte (the clients refuse it), a dump that ends inside a string or comment.

Strings follow the session's ``NO_BACKSLASH_ESCAPES`` and ``ANSI_QUOTES`` (``set_mode``): the
restore takes them from the server after every statement, exactly as the clients do; the
verification follows them through the ``SET sql_mode`` forms dump tools write
(``SessionModeTracker``) and refuses anything else that changes them.

Memory: the current statement plus one chunk; a dump is never held whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# MariaDB 10.11 and MySQL 5.7/8.x client commands (long name -> short form character)
CLIENT_COMMANDS: dict[bytes, str] = {
    b"?": "?", b"help": "h", b"charset": "C", b"clear": "c", b"connect": "r", b"delimiter": "d",
    b"edit": "e", b"ego": "G", b"exit": "q", b"go": "g", b"nopager": "n", b"notee": "t",
    b"nowarning": "w", b"pager": "P", b"print": "p", b"prompt": "R", b"quit": "q", b"rehash": "#",
    b"sandbox": "-", b"source": ".", b"status": "s", b"system": "!", b"tee": "T", b"use": "u",
    b"warnings": "W", b"resetconnection": "x", b"query_attributes": "", b"ssl_session_data_print": "",
}
_SHORT = {c: name.decode() for name, c in CLIENT_COMMANDS.items() if c}
SANDBOX_LINE = b"/*M!999999\\- enable the sandbox mode */"
_BOM = b"\xef\xbb\xbf"
_SPACE = frozenset(b" \t\r\v\f\xa0")  # \xa0: a space for latin1 clients
_EOL_OR_SPACE = frozenset(b" \t\r\n\v\f")
_WORD = re.compile(rb"[A-Za-z_]+|\?")
_HEAD_END = re.compile(rb"[ \r]{0,2}(?:\n|\Z)")
_MARGIN = 8  # bytes kept back at the end of the buffer so that no token is cut (--, /*M!, ;;)


class DumpRejected(Exception):
    """The dump holds something a dump tool never writes (a client command...)."""

    def __init__(self, problem: str, line: int) -> None:
        self.problem = problem
        self.line = line
        super().__init__(f"{problem} at line {line}")


@dataclass(frozen=True)
class Statement:
    sql: bytes  # without the delimiter
    line: int  # line of the dump where it starts (1-based)
    # the session's SQL mode it was read under: how its strings end (the checks read them the same way)
    nbe: bool = False  # NO_BACKSLASH_ESCAPES
    ansi: bool = False  # ANSI_QUOTES: "…" is a name


def _quoted(nbe: bool, ansi: bool) -> bytes:
    """Strings and quoted names as the server reads them in that mode."""
    sq = rb"'(?:[^']|'')*'" if nbe else rb"'(?:[^'\\]|\\.|'')*'"
    dq = rb'"(?:[^"]|"")*"' if nbe or ansi else rb'"(?:[^"\\]|\\.|"")*"'
    return sq + rb"|" + dq + rb"|`(?:[^`]|``)*`"


def _run_pattern(delim0: int, nbe: bool, ansi: bool) -> re.Pattern[bytes]:
    """Everything inside a statement that cannot end it or need a closer look, in one C-level match:
    plain text, strings, identifiers. Stops before a quote it cannot close, a backslash, a comment
    start, ``#`` and the first byte of the delimiter."""
    stop = re.escape(bytes([delim0]))
    if nbe:
        sq, dq = rb"'[^']*+'", rb'"[^"]*+"'
    else:
        sq = rb"'[^'\\]*+(?:\\.[^'\\]*+)*+'"
        dq = rb'"[^"\\]*+"' if ansi else rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
    plain = rb"[^'\"`\\/#\-" + stop + rb"]*+"
    other = rb"`[^`\\]*+`"
    if delim0 != 0x2D:
        other += rb"|-(?!-)"
    if delim0 != 0x2F:
        other += rb"|/(?!\*)"
    return re.compile(plain + rb"(?:(?:" + sq + rb"|" + dq + rb"|" + other + rb")" + plain + rb")*+", re.S)


_RUNS: dict[tuple[int, bool, bool], re.Pattern[bytes]] = {}
_ESCAPED = {q: re.compile(rb"[^" + q + rb"\\]*+(?:\\.[^" + q + rb"\\]*+)*+" + q, re.S) for q in (b"'", b'"')}


class StatementSplitter:
    """Feed chunks, take statements. ``set_mode`` between statements (the session's SQL mode)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # scan position in _buf
        self._start = 0  # first byte of the current statement (content phase)
        self._line = 1  # line number at _pos (start phase) / at _start (content phase)
        self._in_stmt = False  # content phase: the statement has begun
        self._line_start = True  # start phase: only blanks since the last newline
        self._delim = b";"
        self._nbe = False
        self._ansi = False
        self._eof = False
        self._head = True  # nothing consumed yet: BOM and MariaDB's sandbox line
        self._hold = (-1, 0)  # (token start, where to resume looking for its end) across chunks

    # ---- input ------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        nul = chunk.find(b"\x00")
        if nul >= 0:
            self._buf += chunk[:nul]
            raise DumpRejected("a NUL byte, which the clients refuse", self._line_at(len(self._buf)))
        self._buf += chunk

    def close(self) -> None:
        self._eof = True

    def set_mode(self, *, no_backslash_escapes: bool, ansi_quotes: bool) -> None:
        self._nbe = no_backslash_escapes
        self._ansi = ansi_quotes

    # ---- output -----------------------------------------------------------------------------------

    def next(self) -> Statement | None:
        """The next complete statement, or None when more input is needed (or at the end)."""
        if self._head and not self._read_head():
            return None
        while True:
            if not self._in_stmt and not self._start_phase():
                return None
            st = self._content_phase()
            if st is None:
                return None
            if st.sql.strip():
                return st

    # ---- internals --------------------------------------------------------------------------------

    def _line_at(self, index: int) -> int:
        base = self._start if self._in_stmt else self._pos
        return self._line + self._buf.count(b"\n", base, index)

    def _reject(self, problem: str, index: int) -> DumpRejected:
        return DumpRejected(problem, self._line_at(index))

    def _need(self, n: int) -> bool:
        """True if ``n`` more bytes from _pos are available (or no more will come)."""
        return self._pos + n <= len(self._buf) or self._eof

    def _read_head(self) -> bool:
        buf = self._buf
        if len(buf) < len(_BOM) + len(SANDBOX_LINE) + 2 and not self._eof:
            return False
        if buf.startswith(_BOM):
            self._pos = len(_BOM)
        if buf.startswith(SANDBOX_LINE, self._pos):
            end = self._pos + len(SANDBOX_LINE)
            if _HEAD_END.match(buf, end):
                self._pos = end
        self._head = False
        return True

    def _compact(self) -> None:
        if self._pos > (1 << 20) or self._pos == len(self._buf):
            shift = self._pos
            del self._buf[:shift]
            self._pos = 0
            if self._hold[0] >= 0:
                self._hold = (self._hold[0] - shift, self._hold[1] - shift)

    def _start_phase(self) -> bool:
        """Skip blanks and comments before a statement; handle DELIMITER; refuse command words.
        True when the statement's first byte is at _pos."""
        buf = self._buf
        while True:
            self._compact()
            pos = self._pos
            if pos >= len(buf):
                return False
            c = buf[pos]
            if c == 0x0A:
                self._pos += 1
                self._line += 1
                self._line_start = True
            elif c in _SPACE:
                self._pos += 1
            elif c == 0x23:  # '#'
                end = self._find(pos, b"\n", pos + 1, "a comment", eol=True)
                if end < 0:
                    return False
                self._pos = end
            elif c == 0x2D and buf.startswith(b"--", pos) or c == 0x2D and pos + 1 == len(buf) and not self._eof:
                if not self._need(3):
                    return False
                third = buf[pos + 2:pos + 3]
                if third and third[0] not in _EOL_OR_SPACE:
                    raise self._reject(f"an ambiguous comment '{_show(buf[pos:pos + 12])}' (a comment for "
                                       "MariaDB clients, code for MySQL clients)", pos)
                end = self._find(pos, b"\n", pos + 2, "a comment", eol=True)
                if end < 0:
                    return False
                self._pos = end
            elif c == 0x2F and buf.startswith(b"/*", pos) or c == 0x2F and pos + 1 == len(buf) and not self._eof:
                if not self._need(4):
                    return False
                if buf.startswith(b"/*!", pos) or buf.startswith(b"/*M!", pos) or buf.startswith(b"/*+", pos):
                    return self._begin(pos)
                end = self._find(pos, b"*/", pos + 2, "a comment")
                if end < 0:
                    return False
                self._line += buf.count(b"\n", pos, end)
                self._pos = end
                self._line_start = False
            else:
                m = _WORD.match(buf, pos)
                if m and m.end() == len(buf) and not self._eof:
                    return False  # the word may go on in the next chunk
                word = m.group().lower() if m else b""
                if word == b"delimiter":
                    if not self._line_start:
                        raise self._reject("a DELIMITER command that does not start a line", pos)
                    if not self._delimiter(pos, m.end()):  # type: ignore[union-attr]
                        return False
                    continue
                if word in CLIENT_COMMANDS:
                    raise self._reject(f"a client command '{_show(buf[pos:pos + 40])}'", pos)
                return self._begin(pos)

    def _begin(self, pos: int) -> bool:
        self._in_stmt = True
        self._start = pos
        self._line_start = False
        return True

    def _delimiter(self, pos: int, after_word: int) -> bool:
        buf = self._buf
        nl = buf.find(b"\n", after_word)
        if nl < 0:
            if not self._eof:
                return False
            nl = len(buf)
        arg = bytes(buf[after_word:nl])
        parts = arg.split()
        if not arg[:1].isspace() or len(parts) != 1:
            raise self._reject(f"an unusual DELIMITER command '{_show(buf[pos:nl])}'", pos)
        new = parts[0]
        if any(q in new for q in (b"'", b'"', b"`", b"\\")) or new.startswith((b"#", b"--", b"/*")):
            raise self._reject(f"an unusual DELIMITER '{_show(new)}'", pos)
        self._delim = new
        self._pos = nl
        return True

    def _run(self) -> re.Pattern[bytes]:
        key = (self._delim[0], self._nbe, self._ansi)
        pat = _RUNS.get(key)
        if pat is None:
            pat = _RUNS[key] = _run_pattern(*key)
        return pat

    def _content_phase(self) -> Statement | None:
        buf = self._buf
        run = self._run()
        delim = self._delim
        while True:
            limit = len(buf) if self._eof else max(self._pos, len(buf) - _MARGIN)
            p = run.match(buf, self._pos, limit).end()  # type: ignore[union-attr]
            if p == limit and not self._eof and p > self._pos and buf[p - 1] in b"-/":
                p -= 1  # its lookahead ran into the limit
            self._pos = p
            if p >= len(buf) or (p >= limit and not self._eof):
                if self._eof:
                    raise self._reject("the dump ends inside a statement (truncated?)", self._start)
                return None
            c = buf[p]
            if c == delim[0]:
                if not self._need(len(delim)):
                    return None
                if buf.startswith(delim, p):
                    sql = bytes(buf[self._start:p])
                    st = Statement(sql, self._line, self._nbe, self._ansi)
                    self._line += sql.count(b"\n")
                    self._pos = p + len(delim)
                    self._in_stmt = False
                    self._line_start = False
                    return st
            if c == 0x27 or c == 0x22 or c == 0x60:  # quotes
                end = self._close_quote(p, c)
            elif c == 0x5C:  # backslash
                if not self._need(2):
                    return None
                raise self._reject(_backslash(buf[p:p + 2]), p)
            elif c == 0x23:  # '#'
                end = self._find(p, b"\n", p + 1, "a comment", eol=True)
            elif c == 0x2D and buf.startswith(b"--", p):
                if not self._need(3):
                    return None
                third = buf[p + 2:p + 3]
                if third and third[0] not in _EOL_OR_SPACE:
                    end = p + 2  # '--x' inside a statement is text for every client
                else:
                    end = self._find(p, b"\n", p + 2, "a comment", eol=True)
            elif c == 0x2F and buf.startswith(b"/*", p):
                if not self._need(4):
                    return None
                if buf.startswith(b"/*!", p):
                    end = p + 3  # MySQL/MariaDB executable comment: code for the clients too
                else:
                    end = self._find(p, b"*/", p + 2, "a comment")
                    if end >= 0 and (buf.startswith(b"/*M!", p) or buf.startswith(b"/*+", p)):
                        self._check_ambiguous(p, end)
            else:
                end = p + 1  # a byte the pattern stops at that is not special here (e.g. ';' of ';;')
            if end < 0:
                return None
            self._pos = end

    def _find(self, p: int, needle: bytes, frm: int, what: str, *, eol: bool = False) -> int:
        """Index after ``needle`` (before it if ``eol``), searched from ``frm`` or from where the last
        search for the token at ``p`` stopped; -1: need more input."""
        buf = self._buf
        if self._hold[0] == p:
            frm = max(frm, self._hold[1])
        i = buf.find(needle, frm)
        if i < 0:
            if self._eof:
                if eol:
                    return len(buf)
                raise self._reject(f"the dump ends inside {what} (truncated?)", p)
            self._hold = (p, max(frm, len(buf) - len(needle) + 1))
            return -1
        self._hold = (-1, 0)
        return i if eol else i + len(needle)

    def _check_ambiguous(self, p: int, end: int) -> None:
        body = bytes(self._buf[p + 2:end - 2])
        slash = body.find(b"\\")
        if slash >= 0:
            raise self._reject(_backslash(body[slash:slash + 2]), p)
        if any(x in body for x in (b"'", b'"', b"`", b"\\", b"#", b"--", b"/*", self._delim)):
            raise self._reject(f"a comment '{_show(self._buf[p:end])}' that MariaDB and MySQL clients read "
                               "differently", p)

    def _close_quote(self, p: int, q: int) -> int:
        """Index after the quote closing the string/identifier opened at ``p``; -1: need more input."""
        buf = self._buf
        quote = bytes([q])
        frm = self._hold[1] if self._hold[0] == p else p + 1
        if q != 0x60 and not self._nbe and not (q == 0x22 and self._ansi):  # backslash escapes
            m = _ESCAPED[quote].match(buf, frm)
            if m is not None:
                self._hold = (-1, 0)
                return m.end()
            tail = len(buf)
            run = 0
            while tail - run - 1 >= frm and buf[tail - run - 1] == 0x5C:
                run += 1
            resume = tail - (run % 2)  # never between a backslash and the byte it escapes
        else:
            i = buf.find(quote, frm)
            if i >= 0:
                self._hold = (-1, 0)
                if buf[i - 1] == 0x5C and i - 1 > p and not self._nbe:  # names; ANSI strings
                    raise self._reject(f"a quoted name ending in a backslash ({_show(buf[p:i + 1])}), which old "
                                       "and new clients read differently", p)
                return i + 1
            resume = len(buf)
        if self._eof:
            raise self._reject("the dump ends inside a string (truncated?)", p)
        self._hold = (p, resume)
        return -1


def _backslash(two: bytes | bytearray) -> str:
    nxt = bytes(two[1:2]).decode("latin-1")
    name = _SHORT.get(nxt)
    return (f"a client command '\\{nxt}' ({name})" if name
            else f"a backslash outside a string ('{_show(two)}')")


def _show(raw: bytes | bytearray) -> str:
    """A short, printable, single-line excerpt for a message."""
    text = bytes(raw).split(b"\n", 1)[0].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text).strip()
    return text if len(text) <= 40 else text[:39] + "…"


# ---- the session's SQL mode, as far as a dump tool's SET statements tell ---------------------------

_ANSI_MODES = frozenset({"ANSI_QUOTES", "ANSI", "DB2", "MAXDB", "MSSQL", "ORACLE", "POSTGRESQL"})
_LEAD = re.compile(rb"(?:\s+|/\*M?!\d*|/\*(?![!+]|M!).*?\*/|#[^\n]*|--[ \t][^\n]*)*", re.S)
_KEYWORD = re.compile(rb"(SET|EXECUTE)\b", re.I)
# any assignment to a user variable: `@v := …`, `SET @v = …` (a list), `… INTO @v`
_USER_ASSIGN = re.compile(rb"@([A-Za-z_][\w$.]*)\s*:?=(?!=)|\binto\s+@([A-Za-z_][\w$.]*)", re.I)
_VERSIONED = re.compile(rb"/\*M?!(\d+)")
_MAX_MODE_VERSION = 50799  # mysqldump/mariadb-dump condition sql_mode changes on 40101 and 50003
_MENTION = re.compile(rb"sql_mode", re.I)
_TARGET = rb"(?:@@(?:session\.|local\.|global\.)?|(?:session|local|global)\s+)?@?[A-Za-z_][\w$.]*"
_VALUE = rb"'[^'\\]*'|\"[^\"\\]*\"|@@?[\w$.]+|[\w.+-]+"
_ASSIGN = re.compile(rb"\s*(" + _TARGET + rb")\s*:?=\s*(" + _VALUE + rb")\s*(,|\*/\s*\Z|\Z)", re.S | re.I)


class SessionModeTracker:
    """Follows ``NO_BACKSLASH_ESCAPES``/``ANSI_QUOTES`` of the restoring session through the
    ``SET sql_mode`` statements dump tools write (literal modes, saved and restored user variables),
    as a client would learn them from the server. A change it cannot follow is refused."""

    def __init__(self) -> None:
        self.mode = (False, False)  # (no_backslash_escapes, ansi_quotes)
        self._saved: dict[bytes, tuple[bool, bool]] = {}

    def after(self, st: Statement) -> tuple[bool, bool]:
        sql = st.sql
        lead = _LEAD.match(sql)
        start = lead.end() if lead else 0
        kw = _KEYWORD.match(sql, start)
        if kw is None or not _MENTION.search(sql):
            # a saved mode held in a user variable is no longer known once anything else assigns it
            # (a review fooled the tracker with `SELECT @m := 'NO_BACKSLASH_ESCAPES'`)
            for a in _USER_ASSIGN.finditer(sql):
                self._saved.pop(b"@" + (a.group(1) or a.group(2)).lower(), None)
        if kw is None:
            return self.mode
        if kw.group(1).upper() == b"EXECUTE":
            raise DumpRejected("dynamic SQL (EXECUTE), which can change how the clients read the rest", st.line)
        if not _MENTION.search(sql):
            return self.mode
        version = _VERSIONED.search(sql[:start])
        if version and int(version.group(1)) > _MAX_MODE_VERSION:
            # the server skips a versioned comment above its own version, so whether this change
            # happens depends on the server: a real dump tool never conditions sql_mode like that
            raise DumpRejected(f"a change of sql_mode under a version condition the verification cannot "
                               f"follow ('{_show(sql[:60])}')", st.line)
        pos = kw.end()
        changes: list[tuple[bytes, bytes]] = []
        while True:
            m = _ASSIGN.match(sql, pos)
            if m is None:
                raise DumpRejected(f"a change of sql_mode the verification cannot follow "
                                   f"('{_show(sql[start:start + 60])}')", st.line)
            changes.append((m.group(1), m.group(2)))
            pos = m.end()
            if m.group(3) != b",":
                break
        for target, value in changes:
            self._assign(target, value, st)
        return self.mode

    def _assign(self, target: bytes, value: bytes, st: Statement) -> None:
        t = re.sub(rb"\s+", b" ", target.lower())
        v = value.lower()
        saved_mode = v in (b"@@sql_mode", b"@@session.sql_mode", b"@@local.sql_mode")
        if t.startswith(b"@") and not t.startswith(b"@@"):
            if saved_mode:
                self._saved[t] = self.mode
            elif value[:1] in (b"'", b'"'):
                self._saved[t] = _flags(value[1:-1])
            else:
                self._saved.pop(t, None)
            return
        name = t.split(b".")[-1].split(b" ")[-1]
        if name != b"sql_mode" or t.startswith((b"@@global.", b"global ")):
            return
        if value[:1] in (b"'", b'"'):
            self.mode = _flags(value[1:-1])
        elif v in self._saved:
            self.mode = self._saved[v]
        elif not saved_mode:
            raise DumpRejected(f"a change of sql_mode the verification cannot follow "
                               f"(sql_mode = {_show(value)})", st.line)


def _flags(modes: bytes) -> tuple[bool, bool]:
    names = {m.strip().upper() for m in modes.decode("latin-1").split(",")}
    return "NO_BACKSLASH_ESCAPES" in names, bool(names & _ANSI_MODES)


def statements(chunks: Iterable[bytes], tracker: SessionModeTracker | None = None) -> Iterator[Statement]:
    """Every statement of a dump (mode followed by ``tracker``, or set by the consumer through
    the splitter it gets from ``splitter_statements``)."""
    sp = StatementSplitter()
    for st in splitter_statements(sp, chunks):
        yield st
        if tracker is not None:
            nbe, ansi = tracker.after(st)
            sp.set_mode(no_backslash_escapes=nbe, ansi_quotes=ansi)


def splitter_statements(sp: StatementSplitter, chunks: Iterable[bytes]) -> Iterator[Statement]:
    for chunk in chunks:
        sp.feed(chunk)
        while (st := sp.next()) is not None:
            yield st
    sp.close()
    while (st := sp.next()) is not None:
        yield st


# ---- statements a dump of one database never holds: they reach past the target database (server
# ---- files, accounts, global settings, other databases). Checked with string literals, quoted
# ---- identifiers and plain comments blanked out; executable comments (/*!50001 ... */) are read,
# ---- since the server runs them.
_BLANKS = {(nbe, ansi): re.compile(_quoted(nbe, ansi) + rb"|/\*(?!!|M!)(?:.|\n)*?\*/|(?:--[ \t]|#)[^\n]*", re.S)
           for nbe in (False, True) for ansi in (False, True)}
_BLANK = _BLANKS[False, False]


def _blank(st: Statement) -> bytes:
    """``st`` with its strings, quoted names and plain comments blanked out, read in its mode."""
    return _BLANKS[st.nbe, st.ansi].sub(b" ", st.sql)
_OPENER = re.compile(rb"/\*M?!\d*|\*/")
_LEADING = re.compile(
    rb"\s*(?:use\b|grant\b|revoke\b|load\s+(?:data|xml|index)\b|(?:create|drop|alter|rename)\s+(?:or\s+replace\s+)?"
    rb"(?:user|role|database|schema|server|tablespace|logfile)\b|(?:install|uninstall)\s+(?:plugin|soname|component)\b"
    rb"|shutdown\b|kill\b|flush\b|reset\b|purge\b|change\s+(?:master|replication)\b|(?:start|stop)\s+(?:slave|replica)\b"
    rb"|set\s+(?:global|persist|persist_only|password|role|default\s+role)\b|handler\b|binlog\b)", re.I)
_ANYWHERE = re.compile(
    rb"\binto\s+(?:outfile|dumpfile)\b|\bload_file\s*\(|@@global\s*\.|\bset\s+(?:global|persist)\b"
    rb"|\bload\s+(?:data|xml)\b|\bsys_exec\b|\bsys_eval\b"
    # a table (or partition) whose files the server writes in any directory it can write: no FILE
    # privilege needed (a review had a crafted dump create t.ibd, x.MYD and x.MYI under /tmp)
    rb"|\b(?:data|index)\s+directory\b", re.I)


# ---- the plain INSERT of a dump's data: ``INSERT INTO `t` VALUES (…),(…)`` holding literals only
# ---- (numbers, NULL, hex, quoted strings with an optional character set introducer). Outside its
# ---- strings such a statement holds no word but INSERT, INTO, VALUES, NULL and introducers, so the
# ---- checks below have nothing to find in it: they skip their (costly, per-string) blanking for it.
# ---- The strings are tokenized exactly as ``_BLANK`` reads them (backslash escapes, doubled quotes,
# ---- greedy), so the skeleton ``_BLANK`` would leave is the one this grammar accepted.
_STRING = rb"'[^'\\]*+(?:(?:\\.|'')[^'\\]*+)*+'"
_LITERAL = (rb"(?:" + _STRING + rb"|0x[0-9A-Fa-f]++|-?\d++(?:\.\d++)?+(?:[eE][+-]?\d++)?+|NULL|_[A-Za-z0-9]++\s*+"
            + _STRING + rb"|[xXbB]'[0-9A-Fa-f]*+')")  # possessive: 0x before the numbers (no way back)
_ROW = rb"\(" + _LITERAL + rb"(?:," + _LITERAL + rb")*+\)"
_PLAIN_INSERT = re.compile(rb"INSERT INTO `((?:[^`]|``){1,256})` VALUES\s*+" + _ROW + rb"(?:,\s*+" + _ROW + rb")*+",
                           re.S)


_last_insert: tuple[bytes, str | None] = (b"", None)  # the checks and the loader ask about one statement in turn


def plain_insert_of(st: Statement) -> str | None:
    """``plain_insert_table`` of a statement read in the default mode; None under
    NO_BACKSLASH_ESCAPES or ANSI_QUOTES (the grammar reads strings with backslash escapes)."""
    return None if st.nbe or st.ansi else plain_insert_table(st.sql)


def plain_insert_table(sql: bytes) -> str | None:
    """The table of a plain data INSERT (see above), or None for any other statement."""
    global _last_insert
    if not sql.startswith(b"INSERT INTO `"):
        return None
    last = _last_insert
    if last[0] is sql:
        return last[1]
    m = _PLAIN_INSERT.fullmatch(sql)
    table = m.group(1).replace(b"``", b"`").decode("utf-8", "replace") if m else None
    _last_insert = (sql, table)
    return table


def check_confined(st: Statement) -> None:
    """Raise DumpRejected if ``st`` would act beyond the database it is restored into: server files
    (INTO OUTFILE, LOAD DATA, LOAD_FILE, a table's DATA/INDEX DIRECTORY), accounts and privileges,
    global settings, plugins, other databases (USE, CREATE/DROP DATABASE). mariadb-dump and
    mysqldump of one database (as this tool runs them, without --databases) write none of these,
    except DATA DIRECTORY for a table created with one (refused too: its files would land outside
    the server's data directory, wherever the dump says)."""
    if plain_insert_of(st) is not None:
        return  # literals only: nothing outside its strings to find (see _PLAIN_INSERT)
    text = _blank(st)
    text = _OPENER.sub(b" ", text)
    m = _LEADING.match(text) or _ANYWHERE.search(text)
    if m:
        raise DumpRejected(f"a statement that reaches beyond the restored database ('{_show(m.group().strip())}')",
                           st.line)


# ---- the client character set: the splitter reads bytes as ASCII-compatible text in which a quote,
# ---- a backslash or a delimiter byte is always that character. In big5, cp932, gbk, sjis and gb18030
# ---- the second byte of a character can be 0x5C (backslash) or 0x60 (backtick): after `SET NAMES gbk`
# ---- the server ends a string where the splitter does not, so whatever the server then runs was read
# ---- as string contents by every check (a review hid a DATA DIRECTORY clause this way). No dump tool
# ---- writes those (mariadb-dump: utf8mb4, or --default-character-set): such a change is refused.
UNSAFE_CHARSETS = frozenset({"big5", "cp932", "gbk", "sjis", "gb18030"})
_CHARSET_TARGET = (rb"(?<![\w@.])(?:names|character\s+set|charset)\s+(?P<a>[^\s,;]+)"
                   rb"|(?<![\w])(?:@@(?:session\.|local\.)?|(?:session|local)\s+)?character_set_client\s*:?=(?!=)"
                   rb"\s*(?P<b>[^\s,;]*)")
_SETS_CHARSET = re.compile(_CHARSET_TARGET, re.I)
_MENTIONS_CHARSET = re.compile(rb"(?<![\w@.])(?:names|character\s+set|charset)\b"
                               rb"|(?<![\w])(?:@@(?:session\.|local\.)?|(?:session|local)\s+)?character_set_client"
                               rb"\s*:?=(?!=)", re.I)
_PLAIN_CHARSET = re.compile(rb"(['\"`]?)([A-Za-z0-9_]+)\1")
_SAVE_CLIENT_CHARSET = re.compile(rb"@(\w+)\s*:?=\s*@@(?:session\.|local\.)?character_set_client\b", re.I)
_USER_VAR_SET = re.compile(rb"@(\w+)\s*:=|(?<![@\w])@(\w+)\s*=(?!=)|\binto\s+@(\w+)", re.I)


class CharsetGuard:
    """Follows the client character set through a dump's statements (stateful: saved values in user
    variables, as dumps save and restore it). ``check`` raises DumpRejected on a change to a character
    set the splitter cannot read safely, or to a value it cannot follow."""

    def __init__(self) -> None:
        self._saved: set[bytes] = set()  # user variables holding the (safe) client character set

    def check(self, st: Statement) -> None:
        if b"character_set_client" not in st.sql.lower() and plain_insert_of(st) is not None:
            return  # no variable assigned, no SET, and no saving of the character set (see _PLAIN_INSERT)
        raw = _OPENER.sub(b" ", st.sql)
        blank = _OPENER.sub(b" ", _blank(st))
        saves = {m.group(1).lower() for m in _SAVE_CLIENT_CHARSET.finditer(raw)}
        for m in _USER_VAR_SET.finditer(blank):
            name = (m.group(1) or m.group(2) or m.group(3)).lower()
            if name not in saves:
                self._saved.discard(name)
        self._saved |= saves
        if not (re.match(rb"\s*set\b", blank, re.I) and _MENTIONS_CHARSET.search(blank)):
            return
        values = [(m.group("a") or m.group("b")) for m in _SETS_CHARSET.finditer(raw)]
        if not values or not all(values):
            raise DumpRejected(f"a change of the client character set the restore cannot follow "
                               f"('{_show(raw.strip()[:60])}')", st.line)
        for v in values:
            plain = _PLAIN_CHARSET.fullmatch(v)
            text = v.lower()
            if text.startswith(b"@@"):
                ok = text.split(b".")[-1] == b"character_set_client"
            elif text.startswith(b"@"):
                ok = text[1:] in self._saved
            else:  # a plain name only: an expression (CONCAT, X'…', _latin1'…') is not followed
                ok = plain is not None and plain.group(2).decode("latin-1").lower() not in UNSAFE_CHARSETS
            if not ok:
                raise DumpRejected(f"a change of the client character set to {_show(v)} (statements cannot "
                                   "be split safely in it)", st.line)


# ---- DEFINER clauses: a stored object (trigger, view, routine, event) runs with its definer's rights
# ---- later, whoever fires it. The restore rewrites every DEFINER clause to CURRENT_ROLE, the role
# ---- that owns the target database and nothing else (mysql_confine); a clause this misses names
# ---- another account, which the restoring account may not set (no SUPER/SET USER): refused by the
# ---- server, never run with that account's rights.
def _definer_scan(nbe: bool, ansi: bool) -> re.Pattern[bytes]:
    quoted = _quoted(nbe, ansi)
    account_part = rb"(?:" + quoted + rb"|[\w$.%:-]+)"
    return re.compile(
        rb"(?P<skip>" + quoted + rb"|/\*(?!!|M!)(?:.|\n)*?\*/|(?:--[ \t]|#)[^\n]*)"
        rb"|(?<![\w$])(?P<definer>DEFINER\s*=\s*(?:CURRENT_(?:USER|ROLE)(?:\s*\(\s*\))?"
        rb"|" + account_part + rb"(?:\s*@\s*" + account_part + rb")?))", re.S | re.I)


_DEFINER_SCANS = {(nbe, ansi): _definer_scan(nbe, ansi) for nbe in (False, True) for ansi in (False, True)}


def confine_definers(sql: bytes, definer: bytes = b"CURRENT_ROLE", *, nbe: bool = False, ansi: bool = False) -> bytes:
    """``sql`` with every ``DEFINER = …`` clause (outside strings and plain comments, inside
    executable comments too) replaced by ``DEFINER=<definer>``; strings read as the server reads
    them under the session's NO_BACKSLASH_ESCAPES / ANSI_QUOTES (``nbe``, ``ansi``)."""
    if b"definer" not in sql.lower():
        return sql

    def swap(m: re.Match[bytes]) -> bytes:
        return b"DEFINER=" + definer if m.group("definer") else m.group(0)

    return _DEFINER_SCANS[nbe, ansi].sub(swap, sql)
