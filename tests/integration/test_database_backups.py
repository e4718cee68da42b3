"""Issue #3 through the engine: every backup kind carries a fresh dump of the real PostgreSQL /
MariaDB database; restore brings it back; faults leave no set behind."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import settings_from_dict
from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.errors import BackupError, DatabaseError, RestoreError
from erp_backup.core.models import BackupKind
from erp_backup.demo import make_project, mutate_files
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from erp_backup.verify import verify_committed

pytestmark = pytest.mark.integration
T = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)

PG_SCHEMA = [
    "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, note text, created timestamptz DEFAULT now())",
    "CREATE TABLE invoices (id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id), "
    "amount numeric(12,2), pdf bytea)",
    "INSERT INTO customers(name, note) SELECT 'Kunde ' || g || ' 上海', CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' END "
    "FROM generate_series(1, 2000) g",
    "INSERT INTO invoices(customer_id, amount, pdf) SELECT 1 + g % 2000, g * 1.25, decode(md5(g::text), 'hex') "
    "FROM generate_series(1, 5000) g",
    "CREATE VIEW big_invoices AS SELECT * FROM invoices WHERE amount > 1000",
]
MY_SCHEMA = [
    "CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, note TEXT NULL) "
    "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE invoices (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT, amount DECIMAL(12,2), pdf BLOB, "
    "FOREIGN KEY (customer_id) REFERENCES customers(id)) ENGINE=InnoDB",
    "INSERT INTO customers(name, note) SELECT CONCAT('Kunde ', seq, ' 上海'), IF(seq % 3 = 0, NULL, 'n') "
    "FROM seq_1_to_2000",
    "INSERT INTO invoices(customer_id, amount, pdf) SELECT 1 + seq % 2000, seq * 1.25, UNHEX(MD5(seq)) "
    "FROM seq_1_to_5000",
]


def _settings(root: Path, url: DatabaseUrl, bk: Path) -> object:
    return settings_from_dict({
        "project": {"root": str(root)},
        "database": {"url": f"{url.engine}://{url.user}@{url.host}:{url.port}/{url.name}"},
        "storage": {"local_dir": str(bk)},
    })


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_every_kind_carries_a_dump_and_restores(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    make_db: Callable[..., DatabaseUrl] = request.getfixturevalue("pg_db" if engine == "postgresql" else "my_db")
    sql: Callable[..., list] = request.getfixturevalue("pg_sql" if engine == "postgresql" else "my_sql")
    src = make_db("src")
    for stmt in PG_SCHEMA if engine == "postgresql" else MY_SCHEMA:
        sql(src, stmt)
    root = tmp_path / "erp"
    make_project(root)
    s = _settings(root, src, tmp_path / "bk")
    repo = LocalRepository(tmp_path / "bk")
    ids = []
    for n, kind in enumerate([BackupKind.FULL, BackupKind.INCREMENTAL, BackupKind.DIFFERENTIAL, BackupKind.FULL]):
        if n:
            mutate_files(root, n)
            sql(src, "INSERT INTO customers(name) VALUES ('added %s')" % n)  # noqa: UP031
        res = run_backup(s, kind, ("monthly",) if n == 3 else (), now=T + timedelta(hours=n))
        m = res.manifest
        ids.append(m.id.value)
        assert m.database is not None and m.database.engine == engine
        assert m.artifact("database") is not None
        assert m.database.server_version and m.database.dump_tool and m.database.dump_format
        key = "public.customers" if engine == "postgresql" else "customers"
        assert m.database.tables[key] == 2000 + n
        assert verify_committed(repo, m.id.value).ok
    assert ids[3].endswith("-monthly")

    # restore the incremental (files from two sets, database from its own dump)
    target_db = make_db("restored", create=False)
    rep = restore(repo, target_dir=tmp_path / "r", backup_id=ids[1], target_db=target_db)
    key = "public.customers" if engine == "postgresql" else "customers"
    assert rep.db_tables[key] == 2001
    rows = sql(target_db, "SELECT COUNT(*), COUNT(note) FROM customers")
    assert tuple(rows[0]) == (2001, 1334)
    inv = sql(target_db, "SELECT SUM(amount) FROM invoices")[0][0]
    assert float(inv) == pytest.approx(1.25 * 5000 * 5001 / 2)
    assert (tmp_path / "r" / "apps/sales/reports_1.py").exists()

    # the live database is refused without yes
    with pytest.raises(RestoreError, match="live database.*--yes"):
        restore(repo, target_dir=None, backup_id=ids[0], target_db=src, live_db=src)


def test_dead_server_fails_before_anything_is_written(tmp_path: Path) -> None:
    root = tmp_path / "erp"
    make_project(root)
    s = _settings(root, parse_database_url("postgresql://postgres@127.0.0.1:1/erp"), tmp_path / "bk")
    with pytest.raises(DatabaseError) as ei:
        run_backup(s, BackupKind.FULL, now=T)
    assert "\n" not in str(ei.value) and " — " in str(ei.value)
    repo = LocalRepository(tmp_path / "bk")
    assert repo.list_ids() == [] and repo.partials() == []


def test_permission_fault_during_dump_leaves_no_set(tmp_path: Path, pg_db, pg_role, pg_sql) -> None:
    src = pg_db("perm")
    for stmt in PG_SCHEMA:
        pg_sql(src, stmt)
    role = pg_role(src.name)
    pg_sql(src, f'GRANT SELECT ON customers TO "{role}"')  # not on invoices
    root = tmp_path / "erp"
    make_project(root)
    url = parse_database_url(f"postgresql://{role}@127.0.0.1:5432/{src.name}")
    s = _settings(root, url, tmp_path / "bk")
    with pytest.raises(BackupError) as ei:
        run_backup(s, BackupKind.FULL, now=T)
    assert "permission denied" in str(ei.value).lower() and "invoices" in str(ei.value)
    repo = LocalRepository(tmp_path / "bk")
    assert repo.list_ids() == [] and repo.partials() == []
