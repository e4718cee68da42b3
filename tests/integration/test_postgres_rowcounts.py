"""Row counts read from pg_dump's stream (``pgdump_rows``, ``ERP_BACKUP_PG_ROW_COUNTS=stream``)
against ``SELECT count(*)`` on the real PostgreSQL 15 server: the same numbers, no second scan,
and the count(*) safety net in the dump's snapshot when the stream cannot be read."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from erp_backup.adapters.databases import pgdump_rows, postgres
from erp_backup.adapters.databases.postgres import PostgresAdapter
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import ConfigError
from tests.integration.conftest import assert_actionable

pytestmark = pytest.mark.integration

SCHEMA = (Path(__file__).parent.parent / "unit" / "golden" / "pgdump" / "pg15-rows.sql").read_text()
EXPECTED = {
    "public.bin": 40, "public.blank": 50, "public.child": 7, "public.empty_one": 0, "public.gen": 12,
    "public.grandchild": 3, "public.huge": 3, "public.many": 30000, "public.mid": 256, "public.mixed": 3000,
    "public.parent": 12, "public.parted_a": 50, "public.parted_b": 50, "public.parted_empty": 0,
    "public.scratch": 9, "public.ten": 300, "public.texts": 10, 'we ird.sch"ema ü.ta.ble "q" 顧客': 7,
}
FALLBACK = "counting them with SELECT count(*)"


@pytest.fixture(autouse=True)
def _stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(postgres.ROW_COUNTS_ENV, "stream")


@pytest.fixture
def src(pg_db, pg_sql) -> DatabaseUrl:
    url = pg_db("rows")
    pg_sql(url, SCHEMA)
    return url


@pytest.fixture
def count_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, str]]]:
    """The tables each ``_count`` call (SELECT count(*)) was asked for."""
    calls: list[list[tuple[str, str]]] = []
    real = postgres._count

    def spy(conn, tables, url):  # type: ignore[no-untyped-def]
        calls.append(list(tables))
        return real(conn, tables, url)

    monkeypatch.setattr(postgres, "_count", spy)
    return calls


def count_star(url: DatabaseUrl, pg_sql: Callable[..., list[tuple[object, ...]]]) -> dict[str, int]:
    rows = pg_sql(url, "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                       "AND n.nspname NOT LIKE 'pg_toast%'")
    out = {}
    for schema, table in rows:
        ident = '"{}"."{}"'.format(str(schema).replace('"', '""'), str(table).replace('"', '""'))
        out[f"{schema}.{table}"] = int(pg_sql(url, f"SELECT count(*) FROM {ident}")[0][0])  # type: ignore[call-overload]
    return out


def test_counts_from_the_stream_equal_count_star(src, pg_sql, count_calls, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="erp_backup.databases")
    chunks: list[int] = []
    info = PostgresAdapter(src).dump(lambda b: chunks.append(len(b)), tmp_path)
    assert count_calls == [], "the dump ran SELECT count(*): the stream was not used"
    assert FALLBACK not in caplog.text
    assert info.tables == EXPECTED
    assert info.tables == count_star(src, pg_sql)  # parent: its own rows and its descendants', like count(*)
    assert info.raw_size == sum(chunks) > 8_000_000  # large objects included (and skipped by the counter)
    assert PostgresAdapter(src).row_counts(src) == info.tables  # what a restore compares with


def test_an_unreadable_stream_falls_back_to_count_star_with_the_reason(src, pg_sql, count_calls, monkeypatch,
                                                                       tmp_path: Path, caplog) -> None:
    monkeypatch.setattr(pgdump_rows, "SUPPORTED_VERSIONS", {(1, 99)})
    info = PostgresAdapter(src).dump(lambda b: None, tmp_path)
    assert info.tables == EXPECTED
    assert len(count_calls) == 1 and len(count_calls[0]) == len(EXPECTED)
    assert "archive version 1.14.0 is not one this parser knows" in caplog.text
    assert FALLBACK in caplog.text


def test_what_the_stream_lacks_is_counted_in_the_dump_snapshot(src, pg_sql, pg_connect_fn, count_calls,
                                                               monkeypatch, tmp_path: Path) -> None:
    """Rows committed after pg_dump's snapshot are not counted, whether the whole stream failed at
    its end or one table's data is missing from it: the count(*) runs in the still open snapshot."""
    real_finish = pgdump_rows.RowCounter.finish
    mode = {"drop": True, "next": 100_000}

    def finish(self: pgdump_rows.RowCounter) -> None:
        with closing(pg_connect_fn(src.name)) as conn, conn.cursor() as cur:  # a commit after the snapshot
            cur.execute("INSERT INTO many SELECT g, 'late', 0 FROM generate_series(%s, %s) g",
                        (mode["next"], mode["next"] + 499))
        mode["next"] += 500
        real_finish(self)
        if mode["drop"]:
            del self.counts[(b"public", b"many")]
        else:
            self.failed = "made to fail by the test"

    monkeypatch.setattr(pgdump_rows.RowCounter, "finish", finish)
    info = PostgresAdapter(src).dump(lambda b: None, tmp_path)
    assert count_calls == [[("public", "many")]]
    assert info.tables == EXPECTED
    mode["drop"] = False
    info = PostgresAdapter(src).dump(lambda b: None, tmp_path)
    assert len(count_calls) == 2 and len(count_calls[1]) == len(EXPECTED)
    assert info.tables == {**EXPECTED, "public.many": 30500}  # the first late batch, not the second
    assert count_star(src, pg_sql)["public.many"] == 31000


def test_an_inheritance_parent_with_a_foreign_child_is_counted_with_count_star(pg_db, pg_sql, count_calls,
                                                                                tmp_path: Path) -> None:
    src = pg_db("fdw")
    pg_sql(src, f"""
        CREATE EXTENSION postgres_fdw;
        CREATE SERVER same FOREIGN DATA WRAPPER postgres_fdw
            OPTIONS (host '127.0.0.1', port '5432', dbname '{src.name}');
        CREATE USER MAPPING FOR CURRENT_USER SERVER same OPTIONS (user 'postgres');
        CREATE TABLE remote_rows (id int);
        INSERT INTO remote_rows SELECT g FROM generate_series(1, 6) g;
        CREATE TABLE fparent (id int);
        INSERT INTO fparent VALUES (1), (2);
        CREATE FOREIGN TABLE fchild () INHERITS (fparent) SERVER same OPTIONS (table_name 'remote_rows');
        CREATE TABLE lonely (id int);
        INSERT INTO lonely VALUES (1);""")
    info = PostgresAdapter(src).dump(lambda b: None, tmp_path)
    # pg_dump writes no data for a foreign table: only the parent is counted with count(*)
    assert count_calls == [[("public", "fparent")]]
    assert info.tables == {"public.fparent": 8, "public.lonely": 1, "public.remote_rows": 6}


@pytest.mark.parametrize("setting", [None, "", "count", " Count "])
def test_count_star_is_the_default_and_a_wrong_choice_is_refused(src, count_calls, monkeypatch, tmp_path: Path,
                                                                 caplog, setting: str | None) -> None:
    if setting is None:
        monkeypatch.delenv(postgres.ROW_COUNTS_ENV)
    else:
        monkeypatch.setenv(postgres.ROW_COUNTS_ENV, setting)
    info = PostgresAdapter(src).dump(lambda b: None, tmp_path)
    assert info.tables == EXPECTED
    assert len(count_calls) == 1 and len(count_calls[0]) == len(EXPECTED)
    assert FALLBACK not in caplog.text  # chosen, not a fallback: no warning
    monkeypatch.setenv(postgres.ROW_COUNTS_ENV, "guess")
    with pytest.raises(ConfigError) as e:
        PostgresAdapter(src).dump(lambda b: None, tmp_path)
    assert_actionable(e.value, "ERP_BACKUP_PG_ROW_COUNTS='guess'", "'count' (the default) or 'stream'")
