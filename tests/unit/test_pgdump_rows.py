"""Row counts read from a pg_dump custom-format stream (``pgdump_rows.RowCounter``).

The golden dump is a real ``pg_dump -Fc -Z0`` (PostgreSQL 15) of ``golden/pgdump/pg15-rows.sql``
(regenerate: load that file into an empty database, ``pg_dump -Fc -Z0 DB | zstd -19``); the
synthetic dumps are built here the way pg_dump writes them, with rows hypothesis picks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erp_backup.adapters.databases import pgdump_rows
from erp_backup.adapters.databases.pgdump_rows import COPY_END, MAX_NAME, RowCounter

GOLDEN = Path(__file__).parent / "golden" / "pgdump" / "pg15-rows.pgdump.zst"
GOLDEN_COUNTS = {
    ("public", "bin"): 40, ("public", "blank"): 50, ("public", "child"): 4, ("public", "empty_one"): 0,
    ("public", "gen"): 12, ("public", "grandchild"): 3, ("public", "huge"): 3, ("public", "many"): 30000,
    ("public", "mid"): 256, ("public", "mixed"): 3000, ("public", "parent"): 5, ("public", "parted_a"): 50,
    ("public", "parted_b"): 50, ("public", "parted_empty"): 0, ("public", "scratch"): 9, ("public", "ten"): 300,
    ("public", "texts"): 10, ('we ird.sch"ema ü', 'ta.ble "q" 顧客'): 7,
}


def golden() -> bytes:
    return zstandard.ZstdDecompressor().decompress(GOLDEN.read_bytes(), max_output_size=64 << 20)


GOLDEN_BYTES = golden()


def decoded(counter: RowCounter) -> dict[tuple[str, str], int]:
    return {(ns.decode(), tag.decode()): rows for (ns, tag), rows in counter.counts.items()}


FAST = {"fast_after": 1, "fast_below": 1 << 40}  # after the first row, the rest at C speed
WALK = {"fast_after": 1 << 40}  # chunk by chunk to the end
MODES = [{}, FAST, WALK]


def count(data: bytes, cuts: list[int], **mode: int) -> RowCounter:
    counter = RowCounter(**mode)
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        counter.feed(data[start:cut])
        start = cut
    counter.finish()
    return counter


# ---- the real dump ---------------------------------------------------------------------------------


def test_golden_dump_counts_every_table() -> None:
    counter = count(GOLDEN_BYTES, list(range(0, len(GOLDEN_BYTES), 1 << 16)))
    assert counter.failed is None
    assert counter.version == (1, 14, 0)
    assert decoded(counter) == GOLDEN_COUNTS
    # short rows are counted fast after the first 32 (many, ten, blank, bin, parted_a, parted_b, ...)
    assert counter.fast_blocks == 7 and counter.exact_blocks == 11
    assert decoded(count(GOLDEN_BYTES, [], **FAST)) == GOLDEN_COUNTS
    assert decoded(count(GOLDEN_BYTES, [], **WALK)) == GOLDEN_COUNTS


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(GOLDEN_BYTES)), max_size=60),
       st.lists(st.integers(0, 20_000), max_size=30), st.sampled_from(MODES))
def test_golden_dump_cut_anywhere_gives_the_same_counts(cuts: list[int], head_cuts: list[int],
                                                        mode: dict[str, int]) -> None:
    # head_cuts: many cuts in the header and table of contents (mid-int, mid-string)
    counter = count(GOLDEN_BYTES, cuts + head_cuts, **mode)
    assert counter.failed is None, counter.failed
    assert decoded(counter) == GOLDEN_COUNTS


def test_golden_dump_one_byte_at_a_time_through_the_table_of_contents() -> None:
    counter = RowCounter()
    for i in range(30_000):
        counter.feed(GOLDEN_BYTES[i:i + 1])
    counter.feed(GOLDEN_BYTES[30_000:])
    counter.finish()
    assert decoded(counter) == GOLDEN_COUNTS


def test_truncated_golden_dump_fails() -> None:
    for end in (3, 100, 5000, len(GOLDEN_BYTES) // 2, len(GOLDEN_BYTES) - 1):
        counter = count(GOLDEN_BYTES[:end], [])
        assert counter.failed == "the dump ended early (truncated)", end
        assert counter.counts == {}


def test_trailing_bytes_after_the_last_block_fail() -> None:
    counter = count(GOLDEN_BYTES + b"\x07", [])
    assert counter.failed is not None and "unknown data block type 7" in counter.failed


# ---- synthetic dumps ---------------------------------------------------------------------------------


def i32(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def s(value: bytes | None) -> bytes:
    return i32(-1) if value is None else i32(len(value)) + value


def header(version: tuple[int, int, int] = (1, 14, 0), compression: int = 0, fmt: int = 1) -> bytes:
    return (b"PGDMP" + bytes(version) + bytes([4, 8, fmt]) + i32(compression) + b"".join(i32(7) for _ in range(7))
            + s(b"db") + s(b"15.20") + s(b"15.20"))


def entry(dump_id: int, desc: bytes, namespace: bytes | None, tag: bytes, has_data: bool,
          defn: bytes = b"") -> bytes:
    return (i32(dump_id) + i32(1 if has_data else 0) + s(b"1259") + s(b"16384") + s(tag) + s(desc) + i32(3)
            + s(defn) + s(b"") + s(b"COPY x FROM stdin;\n") + s(namespace) + s(b"") + s(b"heap") + s(b"postgres")
            + s(b"false") + s(b"3") + s(b"4") + s(None) + bytes([1]) + bytes(8))


def table_block(dump_id: int, chunks: list[bytes]) -> bytes:
    return bytes([1]) + i32(dump_id) + b"".join(i32(len(c)) + c for c in chunks) + i32(0)


def dump(tables: list[list[bytes]], *, regroup: list[int] | None = None, blobs: list[bytes] | None = None,
         toc_extra: bytes = b"", version: tuple[int, int, int] = (1, 14, 0)) -> bytes:
    """A dump of one table per item of ``tables`` (its rows, each ending in a newline): one chunk per
    row as pg_dump writes them, or, with ``regroup``, the rows' bytes re-cut at those offsets (the
    first chunk then holds more than the first row; the terminator stays a chunk of its own)."""
    toc = [entry(i + 1, b"TABLE DATA", b"public", f"t{i}".encode(), True) for i in range(len(tables))]
    toc.append(entry(100, b"SEQUENCE SET", b"public", b"seq", False))
    if blobs is not None:
        toc.append(entry(200, b"BLOBS", None, b"BLOBS", True))
    out = [header(version), i32(len(toc) + (1 if toc_extra else 0)), *toc]
    if toc_extra:
        out.append(toc_extra)
    for i, rows in enumerate(tables):
        if regroup is None:
            chunks = [*rows, COPY_END]
        else:
            text = b"".join(rows)
            first = len(rows[0]) if rows else 0
            cuts = sorted({c % (len(text) + 1) for c in regroup if first < c % (len(text) + 1) < len(text)})
            chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if b > a]
            chunks.append(COPY_END)
        out.append(table_block(i + 1, chunks))
    if blobs is not None:
        # pg_dump never writes an empty chunk: an empty large object is its oid and the zero length
        body = b"".join(i32(5000 + n) + (i32(len(b)) + b if b else b"") + i32(0) for n, b in enumerate(blobs))
        out.append(bytes([3]) + i32(200) + body + i32(0))
    return b"".join(out)


def row_of(length: int, fill: int = ord("x")) -> bytes:
    return bytes([fill]) * (length - 1) + b"\n"


# lengths whose chunk header holds a 0x0A byte (10, 0x0Axx, 0x0Axxxx), a lone newline, 64 KiB edges
SPECIAL = [1, 2, 5, 6, 9, 10, 11, 266, 2560, 2561, 2570, 2815, 2816, 65535, 65536, 65546, 655360, 655370]
plain_rows = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"n").replace(b"\x00", b"z") + b"\n")
special_rows = st.sampled_from(SPECIAL).map(row_of)
rows_strategy = st.lists(st.one_of(plain_rows, plain_rows, special_rows), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows_strategy, min_size=1, max_size=4), st.lists(st.integers(0, 3_000_000), max_size=25),
       st.none() | st.lists(st.integers(0, 10_000), max_size=8),
       st.none() | st.lists(st.binary(max_size=300), max_size=3), st.sampled_from(MODES))
def test_synthetic_dump_counts_every_row(tables: list[list[bytes]], cuts: list[int], regroup: list[int] | None,
                                         blobs: list[bytes] | None, mode: dict[str, int]) -> None:
    data = dump(tables, regroup=regroup, blobs=blobs)
    counter = count(data, [c % (len(data) + 1) for c in cuts], **mode)
    assert counter.failed is None, counter.failed
    assert counter.counts == {(b"public", f"t{i}".encode()): len(rows) for i, rows in enumerate(tables)}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(plain_rows, st.sampled_from([n for n in SPECIAL if n < 3000]).map(row_of)), max_size=40),
       st.sampled_from(MODES))
def test_synthetic_dump_fed_byte_by_byte(rows: list[bytes], mode: dict[str, int]) -> None:
    data = dump([rows[:12]], blobs=[b"\n\x00\n" * 3])
    counter = RowCounter(**mode)
    for i in range(len(data)):
        counter.feed(data[i:i + 1])
    counter.finish()
    assert counter.failed is None, counter.failed
    assert counter.counts == {(b"public", b"t0"): len(rows[:12])}


def test_rows_of_ten_bytes_every_one_with_a_newline_in_its_chunk_length() -> None:
    rows = [row_of(10)] * 5000 + [row_of(2600)] * 300 + [row_of(10)] * 7
    counter = count(dump([rows]), [])
    assert counter.counts == {(b"public", b"t0"): 5307}
    assert counter.fast_blocks == 1
    for mode in (FAST, WALK):
        assert count(dump([rows]), list(range(0, 70_000, 999)), **mode).counts == {(b"public", b"t0"): 5307}


def test_rows_grouped_after_a_one_row_first_chunk_are_refused() -> None:
    rows = [row_of(20)] * 1000
    text = b"".join(rows[1:])
    data = (header() + i32(1) + entry(1, b"TABLE DATA", b"public", b"t0", True)
            + table_block(1, [rows[0], *(text[i:i + 60] for i in range(0, len(text), 60)), COPY_END]))
    counter = count(data, [], **FAST)
    assert counter.failed == "a table data block is not laid out one row per chunk"
    assert count(data, [], **WALK).counts == {(b"public", b"t0"): 1000}


def test_a_chunk_of_several_rows_is_counted_chunk_by_chunk() -> None:
    rows = [row_of(20)] * 1000
    counter = count(dump([rows], regroup=list(range(0, 20000, 333))), [])
    assert counter.counts == {(b"public", b"t0"): 1000}
    assert counter.fast_blocks == 0 and counter.exact_blocks == 1


# ---- what it refuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data, reason", [
    (b"XXXXX" + bytes(100), "no PGDMP magic"),
    (dump([[b"a\n"]], version=(1, 15, 0)), "archive version 1.15.0 is not one this parser knows"),
    (header(compression=-1) + bytes(50), "the dump is compressed"),
    (header(fmt=3) + bytes(50), "archive format 3 is not custom"),
])
def test_unknown_formats_are_refused_with_the_reason(data: bytes, reason: str) -> None:
    counter = count(data, [7, 40])
    assert counter.failed is not None and reason in counter.failed
    assert counter.counts == {}


def test_a_table_data_block_without_the_copy_terminator_fails() -> None:
    data = header() + i32(1) + entry(1, b"TABLE DATA", b"public", b"t", True) + table_block(1, [b"a\nb\n"])
    counter = count(data, [])
    assert counter.failed is not None and "COPY terminator" in counter.failed
    # one row per chunk: walked, the block fails at its zero length; counted fast, the scan runs into
    # the next block, which is then missing at the end
    data = (header() + i32(2) + entry(1, b"TABLE DATA", b"public", b"t", True)
            + entry(2, b"TABLE DATA", b"public", b"u", True)
            + table_block(1, [b"a\n"] * 50) + table_block(2, [b"b\n"] * 50 + [COPY_END]))
    for cuts in ([], list(range(0, len(data), 7))):
        assert count(data, cuts, **WALK).failed == "a table data block without the COPY terminator"
        assert count(data, cuts).failed == "no data block for dump id(s) 2"
        assert count(data, cuts, **FAST).failed == "no data block for dump id(s) 2"


def test_a_block_for_an_unknown_dump_id_fails() -> None:
    data = dump([[b"a\n"]]) + table_block(77, [COPY_END])
    counter = count(data, [])
    assert counter.failed is not None and "unexpected dump id 77" in counter.failed


def test_memory_stays_bounded_with_a_huge_definition_and_a_huge_row() -> None:
    big = b"x" * (8 << 20)
    extra = entry(300, b"FUNCTION", b"public", b"f()", False, defn=big)
    data = dump([[b"a\n", big + b"\n", b"b\n"]], toc_extra=extra)
    counter = RowCounter()
    peak = 0
    for i in range(0, len(data), 1 << 16):
        counter.feed(data[i:i + (1 << 16)])
        req = counter._req
        held = len(counter._pending) + len(getattr(req, "ctx", b"")) + len(getattr(req, "tail", b""))
        peak = max(peak, held)
    counter.finish()
    assert counter.counts == {(b"public", b"t0"): 3}
    assert peak <= MAX_NAME + 64


def test_a_bug_in_the_parser_is_a_failure_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: RowCounter, data: bytes) -> None:
        raise IndexError("boom")

    monkeypatch.setattr(pgdump_rows.RowCounter, "_feed", broken)
    counter = RowCounter()
    counter.feed(b"PGDMP")
    assert counter.failed == "IndexError: boom"
    counter.feed(b"more")  # ignored once failed
    counter.finish()
    assert counter.failed == "IndexError: boom"
