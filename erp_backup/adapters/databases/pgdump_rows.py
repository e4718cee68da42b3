"""Exact row counts read from a ``pg_dump --format=custom --compress=0`` stream as it passes by.

Pure (no I/O): ``RowCounter.feed(piece)`` takes the dump in pieces cut anywhere, ``finish()`` at
its end; ``counts`` maps ``(namespace, table)`` (bytes, in the dump's encoding) to the rows of that
table's ``TABLE DATA``. On anything it does not know (archive version, compression, layout) it stops
with ``failed`` set to the reason, and the caller counts another way. Besides (a copy of) the
piece being fed, it holds a few KiB at most.

The layout (``pg_backup_archiver.c`` / ``pg_backup_custom.c``, archive version 1.14 = pg_dump
12-15): header (``PGDMP``, version, int size, offset size, format, compression, creation time,
database name, server and pg_dump versions), the table of contents (per entry: dump id, "has
data", catalog ids, tag, desc, section, definition, drop and COPY statements, namespace,
tablespace, table access method, owner, "with oids", dependencies, data offset), then one block per
entry with data: a type byte (1 = table data, 3 = large objects), the dump id, then chunks
``int length`` + bytes ended by a zero length. An int is a sign byte and ``int size`` bytes,
little-endian; a string is an int length (-1 = NULL) and its bytes.

Table data is COPY text: every row ends with a newline and holds no other one (newlines in values
are written ``\\n``) and no NUL byte; pg_dump writes **one chunk per row** (each
``PQgetCopyData`` row goes to ``WriteData``, which ``-Z0`` turns into a chunk as is), then the
chunk ``\\.\\n\\n\\n`` and the zero length. A block is first walked chunk by chunk (``_walk``:
exact for any chunking; a row's newline is found with ``bytes.find``, memchr). That costs ~1 us of
Python per chunk: fine for long rows, too slow for millions of short ones. So once 32 chunks were
one row each and averaged under 512 bytes, the rest of the block is counted with C-speed scans
only (``_fast``: ``bytes.count``, ``bytes.find``, one regular expression), ~1 ns per byte:

* the block ends at the first terminator chunk and zero length, ``00 05000000 '\\.\\n\\n\\n'
  00 00000000``: rows hold no NUL, so these bytes are no row's. pg_dump ends every table data
  block so; were one to lack them, the scan would run into the next block, and that block would
  be missing at the end: ``finish()`` fails unless every entry with data had its block;
* newlines in the block = one per row + those inside chunk lengths (a length byte ``0x0A``);
* a newline inside a length is 2-5 bytes after the previous row's newline (the header is 5 bytes),
  while a row's newline is at least 6 bytes after the previous newline of any kind (a row is >= 1
  byte; a length byte ``0x0A`` means a length >= 10). So the length newlines are exactly the
  newlines that follow another newline within 5 bytes, and rows = newlines - newlines that have
  another one within the next 5 bytes (``_PAIR``; rare in real data, so cheap);
* once per piece, one chunk is checked to be one row (``_check_one_row_chunk``).

Large-object blocks are skipped chunk by chunk.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = {(1, 14)}  # K_VERS_1_14: pg_dump 12, 13, 14, 15
ARCH_CUSTOM = 1
BLK_DATA = 1
BLK_BLOBS = 3
FAST_AFTER = 32  # one-row chunks walked before the rest of a block may be counted fast
FAST_BELOW = 512  # ... if they averaged fewer bytes than this (longer rows: walking is cheaper)
MAX_NAME = 1024  # tags, descs, namespaces kept (identifiers are <= 63 bytes); longer ones are skipped
COPY_END = b"\\.\n\n\n"
# the COPY terminator chunk (sign 0, length 5) and the zero length (sign 0, 0) that ends the block
_BLOCK_END = b"\x00\x05\x00\x00\x00" + COPY_END + bytes(5)
_KEEP = len(_BLOCK_END) - 1  # bytes held back between pieces so _BLOCK_END is seen across a cut
_PAIR = re.compile(rb"\n(?=[^\n]{0,4}\n)")  # a newline with another one within the next 5 bytes


class DumpFormatError(ValueError):
    """The stream is not a custom-format dump this parser knows."""


def _check_one_row_chunk(buf: bytes, limit: int) -> None:
    """Spot check (once per piece) that the chunks are rows: the first newline in ``buf[:limit]``
    known to end a row (the one before it is more than 5 bytes back) must be followed by a chunk
    header whose length reaches the next newline exactly."""
    first = buf.find(b"\n", 0, limit)
    if first < 0:
        return
    second = buf.find(b"\n", first + 1, limit)
    if second < 0 or second - first <= 5:
        return
    start = second + 1
    if start + 5 > limit:
        return
    size = int.from_bytes(buf[start + 1:start + 5], "little")
    stop = start + 5 + size
    if buf[start] != 0 or size == 0 or stop <= limit and (buf[stop - 1] != 0x0A
                                                            or buf.find(b"\n", start + 5, stop - 1) >= 0):
        raise DumpFormatError("a table data block is not laid out one row per chunk")


@dataclass
class _Need:
    n: int
    boundary: bool = False  # the stream may end here


@dataclass
class _Payload:  # bytes to skip
    remaining: int


@dataclass
class _Fast:
    ctx: bytes = b"\n"  # bytes not yet counted; starts with the first row's newline (counted already)
    newlines: int = -1
    pairs: int = 0
    last: int = 0x0A


@dataclass
class _Walk:
    """Chunk by chunk through a table data block, in the driver's loop (no generator round trip)."""
    header: bytes = b""  # a chunk header cut by the end of a piece
    remaining: int = 0  # payload bytes left in the current chunk (cut by the end of a piece)
    size: int = 0  # the current chunk's length
    chunk_newlines: int = 0  # in the current (cut) chunk
    small: bytearray = field(default_factory=bytearray)  # a cut chunk of the terminator's size
    terminator: bool = False  # the last chunk was the COPY terminator
    newlines: int = 0
    one_row: int = 0  # chunks so far that were exactly one row
    one_row_bytes: int = 0
    other: bool = False  # a chunk that was not exactly one row


_Request = _Need | _Payload | _Fast | _Walk


@dataclass
class RowCounter:
    fast_after: int = FAST_AFTER
    fast_below: int = FAST_BELOW
    counts: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    failed: str | None = None
    version: tuple[int, int, int] | None = None
    fast_blocks: int = 0
    exact_blocks: int = 0
    _int_size: int = 4
    _off_size: int = 8
    _pending: bytearray = field(default_factory=bytearray)
    _finished: bool = False
    _unseen: set[int] = field(default_factory=set)  # entries with data whose block has not come yet

    def __post_init__(self) -> None:
        self._gen = self._parse()
        self._req: _Request | None = next(self._gen)

    # ---- driver ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.failed is not None:
            return
        try:
            self._feed(data)
        except DumpFormatError as e:
            self._fail(str(e))
        except Exception as e:  # a bug here must not break the dump: the caller counts another way
            self._fail(f"{type(e).__name__}: {e}")

    def finish(self) -> None:
        """The stream ended: it must end between two data blocks."""
        if self.failed is not None:
            return
        req = self._req
        if not (self._finished or (isinstance(req, _Need) and req.boundary and not self._pending)):
            self._fail("the dump ended early (truncated)")
        elif self._unseen:
            self._fail(f"no data block for dump id(s) {', '.join(map(str, sorted(self._unseen)[:5]))}")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self.counts.clear()
        self._pending.clear()
        self._req = None

    def _send(self, value: object) -> None:
        try:
            self._req = self._gen.send(value)
        except StopIteration:
            self._req = None
            self._finished = True

    def _feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            req = self._req
            if req is None:
                raise DumpFormatError("data after the end of the dump")
            if isinstance(req, _Need):
                want = req.n - len(self._pending)
                if n - pos < want:
                    self._pending += data[pos:]
                    return
                if self._pending:
                    value = bytes(self._pending) + data[pos:pos + want]
                    self._pending.clear()
                else:
                    value = data[pos:pos + want]
                pos += want
                self._send(value)
            elif isinstance(req, _Payload):
                take = min(req.remaining, n - pos)
                req.remaining -= take
                pos += take
                if req.remaining == 0:
                    self._send(None)
            elif isinstance(req, _Walk):
                pos = self._walk(req, data, pos)
            else:
                pos = self._fast(req, data, pos)

    def _walk(self, req: _Walk, data: bytes, pos: int) -> int:
        """Walk a table data block chunk by chunk, counting newlines (exact for any chunking); once
        enough chunks were one row each and short, hand the rest of the block to ``_fast``. Return
        where the block (or the walk) ends in ``data``, or ``len(data)``.

        Newlines are looked for with ``find`` (memchr, several times faster than ``count``): a row
        has only its last one."""
        n = len(data)
        head = 1 + self._int_size
        while pos < n:
            if req.remaining:  # the rest of a chunk cut by the end of the previous piece
                take = min(req.remaining, n - pos)
                end = pos + take
                req.remaining -= take
                if data.find(b"\n", pos, end) >= 0:
                    req.chunk_newlines += data.count(b"\n", pos, end)
                if req.size == len(COPY_END):
                    req.small += data[pos:end]
                pos = end
                if req.remaining:
                    return n
                last_row = req.chunk_newlines == 1 and data[end - 1] == 0x0A
                req.newlines += req.chunk_newlines
                req.terminator = bytes(req.small) == COPY_END
            else:
                if req.header or n - pos < head:
                    take = head - len(req.header)
                    req.header += data[pos:pos + take]
                    pos = min(n, pos + take)
                    if len(req.header) < head:
                        return n
                    raw, req.header = req.header, b""
                else:
                    raw = data[pos:pos + head]
                    pos += head
                size = int.from_bytes(raw[1:], "little")
                if raw[0] and size:
                    raise DumpFormatError("negative chunk length")
                if not size:  # the zero length: the block ends
                    if not req.terminator:
                        raise DumpFormatError("a table data block without the COPY terminator")
                    self.exact_blocks += 1
                    self._send(("rows", req.newlines - COPY_END.count(b"\n")))
                    return pos
                end = pos + size
                req.size = size
                if end > n:  # cut by the end of the piece
                    req.remaining = end - n
                    req.chunk_newlines = data.count(b"\n", pos, n) if data.find(b"\n", pos, n) >= 0 else 0
                    req.small = bytearray(data[pos:n]) if size == len(COPY_END) else bytearray()
                    return n
                if data[end - 1] == 0x0A and data.find(b"\n", pos, end - 1) < 0:
                    req.newlines += 1
                    last_row = True
                else:
                    req.newlines += data.count(b"\n", pos, end)
                    last_row = False
                req.terminator = size == len(COPY_END) and data[pos:end] == COPY_END
                pos = end
            if not last_row:
                req.other = True
                continue
            req.one_row += 1
            req.one_row_bytes += req.size
            if not req.other and req.one_row >= self.fast_after and req.one_row_bytes < self.fast_below * req.one_row:
                self.fast_blocks += 1
                self._send(("fast", req.newlines))
                return pos
        return n

    def _fast(self, req: _Fast, data: bytes, pos: int) -> int:
        """Count the rows of a table data block from ``data[pos:]`` on (module docstring); return
        where the block ends in ``data``, or ``len(data)`` when it goes on."""
        ctx = req.ctx
        buf = ctx + data[pos:] if ctx else data[pos:]
        end = buf.find(_BLOCK_END)
        if end < 0:
            decided = len(buf) - _KEEP
            if decided <= 0:
                req.ctx = buf
                return len(data)
            _check_one_row_chunk(buf, decided)
            req.newlines += buf.count(b"\n", 0, decided)
            # the lookahead of a position before `decided` stays inside buf
            req.pairs += len(_PAIR.findall(buf, 0, decided + 5)) - len(_PAIR.findall(buf, decided, decided + 5))
            req.last = buf[decided - 1]
            req.ctx = buf[decided:]
            return len(data)
        if (buf[end - 1] if end else req.last) != 0x0A:
            raise DumpFormatError("a table data block does not end with a whole row")
        _check_one_row_chunk(buf, end)
        req.newlines += buf.count(b"\n", 0, end)
        # beyond `end` come the terminator chunk's 5 header bytes (no newline): a lookahead cut at
        # `end` decides the same
        req.pairs += len(_PAIR.findall(buf, 0, end))
        self._send(req.newlines - req.pairs)
        return pos + end + len(_BLOCK_END) - len(ctx)

    # ---- the structure ----------------------------------------------------------------------------

    def _int(self) -> Generator[_Request, Any, int]:
        raw = yield _Need(1 + self._int_size)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def _str(self, keep: bool = False) -> Generator[_Request, Any, bytes | None]:
        """A string: its bytes if ``keep`` (None if longer than MAX_NAME), else b"" (skipped);
        None for NULL."""
        size = yield from self._int()
        if size < 0:
            return None
        if size == 0:
            return b""
        if keep and size <= MAX_NAME:
            return bytes((yield _Need(size)))
        yield _Payload(size)
        return None if keep else b""

    def _parse(self) -> Generator[_Request, Any, None]:
        magic = yield _Need(5)
        if magic != b"PGDMP":
            raise DumpFormatError("not a pg_dump custom-format archive (no PGDMP magic)")
        vmaj, vmin, vrev = yield _Need(3)
        self.version = (vmaj, vmin, vrev)
        if (vmaj, vmin) not in SUPPORTED_VERSIONS:
            raise DumpFormatError(f"archive version {vmaj}.{vmin}.{vrev} is not one this parser knows "
                                  f"({', '.join(f'{a}.{b}' for a, b in sorted(SUPPORTED_VERSIONS))})")
        int_size, off_size, fmt = yield _Need(3)
        if not (1 <= int_size <= 8 and 1 <= off_size <= 16):
            raise DumpFormatError(f"unexpected int/offset sizes {int_size}/{off_size}")
        self._int_size, self._off_size = int_size, off_size
        if fmt != ARCH_CUSTOM:
            raise DumpFormatError(f"archive format {fmt} is not custom ({ARCH_CUSTOM})")
        compression = yield from self._int()
        if compression != 0:
            raise DumpFormatError(f"the dump is compressed (level {compression}); rows are counted in -Z0 dumps")
        for _ in range(7):  # creation time
            yield from self._int()
        for _ in range(3):  # database name, server version, pg_dump version
            yield from self._str()
        entries = yield from self._int()
        if entries < 0:
            raise DumpFormatError("negative table of contents size")
        tables: dict[int, tuple[bytes, bytes]] = {}
        with_data: set[int] = set()
        for _ in range(entries):
            dump_id = yield from self._int()
            has_data = yield from self._int()
            yield from self._str()  # catalog table oid
            yield from self._str()  # oid
            tag = yield from self._str(keep=True)
            desc = yield from self._str(keep=True)
            yield from self._int()  # section
            for _ in range(3):  # definition, drop statement, COPY statement
                yield from self._str()
            namespace = yield from self._str(keep=True)
            for _ in range(4):  # tablespace, table access method, owner, "with oids"
                yield from self._str()
            while (yield from self._str()) is not None:  # dependencies, ended by NULL
                pass
            flag = yield _Need(1 + self._off_size)  # data offset: a flag byte and the offset
            if flag[0] not in (1, 2, 3):
                raise DumpFormatError(f"unexpected data offset flag {flag[0]}")
            if has_data:
                with_data.add(dump_id)
                if desc == b"TABLE DATA":
                    if tag is None or namespace is None:
                        raise DumpFormatError(f"TABLE DATA entry {dump_id} without a name")
                    tables[dump_id] = (namespace, tag)
        self._unseen = set(with_data)
        while True:
            kind = yield _Need(1, boundary=True)
            block = kind[0]
            if block not in (BLK_DATA, BLK_BLOBS):
                raise DumpFormatError(f"unknown data block type {block}")
            dump_id = yield from self._int()
            if dump_id not in self._unseen:
                raise DumpFormatError(f"data block for unexpected dump id {dump_id}")
            self._unseen.discard(dump_id)
            if block == BLK_DATA:
                if dump_id in tables:
                    self.counts[tables[dump_id]] = yield from self._table_data()
                else:
                    yield from self._skip_chunks()
            else:
                while (yield from self._int()) != 0:  # large object oid; 0 ends the block
                    yield from self._skip_chunks()

    def _chunk(self) -> Generator[_Request, Any, int]:
        size = yield from self._int()
        if size < 0:
            raise DumpFormatError("negative chunk length")
        return size

    def _skip_chunks(self) -> Generator[_Request, Any, None]:
        while size := (yield from self._chunk()):
            yield _Payload(size)

    def _table_data(self) -> Generator[_Request, Any, int]:
        kind, rows = yield _Walk()
        if kind == "fast":  # the chunks were rows, and short: the rest of the block at C speed
            rows += yield _Fast()
        return rows
