"""Database backups through the CLI and a real Prefect server: credentials from a Prefect block
(never in argv, parameters or logs), restore into --target-database, the live database guarded by
--yes, and a fault inside the dump task that fails the run after its retries."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg2
import pymysql
import pytest

from erp_backup.demo import make_project

from .conftest import PrefectServer

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "erp-backup")
PASSWORD = "S3cr€t-\"pw#;"


def cli(server: PrefectServer, config: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--config", str(config), *args], env={**server.env, **(env or {})},
                          capture_output=True, text=True, timeout=240)


def my(sql: str, args: tuple | None = None, db: str | None = None) -> list:
    with pymysql.connect(host="127.0.0.1", user="root", password="", database=db, autocommit=True) as c, \
            c.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def pg(sql: str, db: str = "postgres") -> list:
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=db)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def flow_logs(server: PrefectServer, flow_run_id: str) -> str:
    with httpx.Client(base_url=server.api, timeout=30) as c:
        r = c.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        r.raise_for_status()
        return "\n".join(x["message"] for x in r.json())


def test_mariadb_backup_with_password_from_a_block(prefect_server: PrefectServer, tmp_path: Path) -> None:
    name = f"erpb_e2e_{uuid.uuid4().hex[:8]}"
    user = f"u{uuid.uuid4().hex[:8]}"
    my(f"CREATE DATABASE `{name}`")
    my(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (PASSWORD,))
    my(f"GRANT ALL ON `{name}`.* TO '{user}'@'%'")
    my(f"GRANT ALL ON `{name}_restored`.* TO '{user}'@'%'")
    my(f"GRANT RELOAD, PROCESS ON *.* TO '{user}'@'%'")
    try:
        my("CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, amount DECIMAL(10,2)) ENGINE=InnoDB", db=name)
        my("INSERT INTO ledger(amount) SELECT seq / 4 FROM seq_1_to_3000", db=name)
        block_name = f"erp-db-{uuid.uuid4().hex[:6]}"
        save = subprocess.run(
            [sys.executable, "-c",
             "import sys; from erp_backup.blocks.database import DatabaseConnection; from pydantic import SecretStr;"
             "DatabaseConnection(url=sys.argv[1], password=SecretStr(sys.stdin.read())).save(sys.argv[2])",
             f"mysql://{user}@127.0.0.1:3306/{name}", block_name],
            input=PASSWORD, env=prefect_server.env, capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).resolve().parents[2])
        assert save.returncode == 0, save.stderr[-2000:]

        root = tmp_path / "erp"
        make_project(root)
        (root / ".env").write_text("SECRET_KEY=x\n")  # no DATABASE_URL: the block is the source
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nblock = "{block_name}"\n'
                       f'[storage]\nlocal_dir = "{tmp_path / "bk"}"\n')
        r = cli(prefect_server, cfg, "backup", "full")
        assert r.returncode == 0, r.stderr[-3000:]
        set_id = r.stdout.strip().splitlines()[-1]
        run = prefect_server.flow_runs("erp-backup-full")[0]
        assert run["state_type"] == "COMPLETED"
        logs = flow_logs(prefect_server, run["id"])
        assert "mysql dump of" in logs
        for text in (logs, str(run["parameters"]), r.stdout, r.stderr,
                     (tmp_path / "bk" / set_id / "manifest.json").read_text()):
            assert PASSWORD not in text

        # restore into another database on the same server: the block's credentials are reused
        r = cli(prefect_server, cfg, "restore", "--backup", set_id, "--target-dir", str(tmp_path / "r"),
                "--target-database", f"mysql://{user}@127.0.0.1:3306/{name}_restored")
        assert r.returncode == 0, r.stderr[-3000:]
        assert my("SELECT COUNT(*), SUM(amount) FROM ledger", db=f"{name}_restored")[0][0] == 3000

        # the live database needs --yes; refused in one line before any flow starts
        start = time.monotonic()
        r = cli(prefect_server, cfg, "restore", "--backup", set_id, "--target-database",
                f"mysql://{user}@127.0.0.1:3306/{name}")
        assert r.returncode != 0 and time.monotonic() - start < 10
        assert r.stderr.strip().splitlines()[-1].endswith("pass --yes to overwrite the live database, "
                                                          "or restore into another one")
        # a password on the command line is refused
        r = cli(prefect_server, cfg, "restore", "--target-database", f"mysql://{user}:pw@127.0.0.1/{name}_x")
        assert r.returncode != 0 and "contains a password" in r.stderr
    finally:
        my(f"DROP DATABASE IF EXISTS `{name}`")
        my(f"DROP DATABASE IF EXISTS `{name}_restored`")
        my(f"DROP USER IF EXISTS '{user}'@'%'")


def test_dump_fault_fails_the_run_after_retries(prefect_server: PrefectServer, tmp_path: Path) -> None:
    """A full disk during the dump (a real 1 MiB tmpfs): pre-flight passes (server up, login and tables
    readable), the dump task fails, is retried, and the run ends Failed with the cause; no set survives,
    and a good set made before is untouched."""
    name = f"erpb_e2e_{uuid.uuid4().hex[:8]}"
    pg(f'CREATE DATABASE "{name}"')
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(small)], check=True)
    try:
        pg("CREATE TABLE t (b bytea)", db=name)
        root = tmp_path / "erp"
        make_project(root)
        cfg = tmp_path / "c.toml"
        bk = small / "bk"
        cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "postgresql://postgres@127.0.0.1:5432/{name}"\n'
                       f'[storage]\nlocal_dir = "{bk}"\n[backup]\ntask_retries = 1\nretry_delay_s = [0]\n')
        good = cli(prefect_server, cfg, "backup", "full")
        assert good.returncode == 0, good.stderr[-3000:]
        good_id = good.stdout.strip().splitlines()[-1]
        # the database now outgrows the disk: random bytes do not compress
        pg("INSERT INTO t SELECT decode(string_agg(lpad(to_hex((random()*255)::int), 2, '0'), ''), 'hex') "
           "FROM generate_series(1, 3000000)", db=name)
        r = cli(prefect_server, cfg, "backup", "incremental")
        assert r.returncode != 0
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("erp-backup: error: ") and "No space left on device" in last and "free space" in last
        run = prefect_server.flow_runs("erp-backup-incremental")[0]
        assert run["state_type"] == "FAILED"
        with httpx.Client(base_url=prefect_server.api, timeout=30) as c:
            tasks = c.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        dump = [t for t in tasks if t["name"].startswith("dump-database")]
        assert dump and dump[0]["state_type"] == "FAILED" and dump[0]["run_count"] == 2  # one retry
        assert sorted(p.name for p in bk.iterdir() if not p.name.startswith(".")) == [good_id]
        v = cli(prefect_server, cfg, "verify", good_id)
        assert v.returncode == 0, v.stderr[-2000:]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
        pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
