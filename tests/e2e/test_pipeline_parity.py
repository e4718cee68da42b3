"""One stage order: the Prefect flow (tasks) and the plain pipeline (functions) run the same stages in
the same order, and produce the same manifest on the same tree. The flow's order is read back from the
server's task runs, not from our code; the settings handed to the flow never leak a password into the
run's recorded parameters."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest

from erp_backup.config import load_settings
from erp_backup.core.models import BackupJob, Manifest
from erp_backup.demo import make_project
from erp_backup.pipeline import PLAIN_STAGES, Stages, run_pipeline

from .conftest import PrefectServer

pytestmark = pytest.mark.e2e

# the Prefect task name of each stage (flows/backup.py); a stage missing here fails the test
TASK_OF_STAGE = {"preflight": "preflight", "prepare": "prepare", "scan": "scan", "dump": "dump-database",
                 "archive": "archive-files", "seal": "seal-set", "verify": "verify-set", "commit": "commit-set",
                 "upload": "upload-set", "prune": "prune", "report": "report"}


def task_runs_in_order(server: PrefectServer, flow_run_id: str) -> list[str]:
    with httpx.Client(base_url=server.api, timeout=30) as c:
        r = c.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}},
                                              "sort": "EXPECTED_START_TIME_ASC", "limit": 200})
        r.raise_for_status()
        runs = [t for t in r.json() if t["state_type"] == "COMPLETED"]
    runs.sort(key=lambda t: t["start_time"])
    return [t["name"].rsplit("-", 1)[0] for t in runs]


def comparable(m: Manifest) -> dict[str, Any]:
    """Everything that must not depend on how the stages were called: the index (holder = this set),
    the database facts, the chain shape, the counts."""
    return {
        "kind": m.kind, "tags": m.tags, "parent": m.parent, "source_root": m.source_root,
        "files": [dataclasses.replace(e, holder="self" if e.holder == m.id.value else e.holder) for e in m.files],
        "deleted": m.deleted, "skipped": m.skipped,
        "database": dataclasses.replace(m.database, raw_size=0) if m.database else None,
        "artifacts": sorted((a.name, a.role) for a in m.artifacts),
        "stats": dataclasses.replace(m.stats, duration_s=0, bytes_out=0),
    }


def test_flow_and_plain_pipeline_run_one_order_and_build_the_same_set(prefect_server: PrefectServer,
                                                                      tmp_path: Path) -> None:
    assert set(TASK_OF_STAGE) == set(Stages.order())
    root = tmp_path / "erp"
    db = make_project(root)
    configs = {}
    for name in ("plain", "flow"):
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "sqlite:///{db}"\n'
                                 f'[storage]\nlocal_dir = "{tmp_path / name}"\n')

    # the plain functions, each wrapped to record that it ran
    called: list[str] = []

    def recording(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            called.append(name)
            return fn(*args)
        return call

    stages = dataclasses.replace(PLAIN_STAGES, **{n: recording(n, getattr(PLAIN_STAGES, n)) for n in Stages.order()})
    plain = run_pipeline(load_settings(configs["plain"]), BackupJob.FULL, stages)
    assert called == list(Stages.order())

    # the flow, started the way a deployment starts it (config path only), against the real server
    code = ("import sys; from erp_backup.flows.backup import full_backup; "
            "s = full_backup(config=sys.argv[1], return_state=True); "
            "print('RUN', s.state_details.flow_run_id); print('ID', s.result()['id'])")
    res = subprocess.run([sys.executable, "-c", code, str(configs["flow"])], env=prefect_server.env,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in res.stdout.splitlines() if line[:3] in ("RUN", "ID "))
    assert task_runs_in_order(prefect_server, out["RUN"].strip()) == [TASK_OF_STAGE[s] for s in Stages.order()]

    flow_set = load_settings(configs["flow"]).storage.local_dir / out["ID"].strip()
    from erp_backup.adapters.storage.local import LocalRepository
    from erp_backup.core.models import BackupId

    flow_m = LocalRepository(flow_set.parent).read_manifest(BackupId(flow_set.name))
    plain_m = LocalRepository(plain.path.parent).read_manifest(plain.manifest.id)
    assert len(plain_m.files) > 20
    assert comparable(flow_m) == comparable(plain_m)


def test_settings_handed_to_a_flow_keep_the_password_out_of_its_parameters(prefect_server: PrefectServer,
                                                                            tmp_path: Path) -> None:
    """The CLI passes the loaded Settings to the flow; a password in [database] url (here PostgreSQL,
    trust auth, so any password logs in) must not appear in the run's parameters or logs."""
    name = f"erpb_e2e_{uuid.uuid4().hex[:8]}"
    secret = f"pw-{uuid.uuid4().hex}"
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    try:
        root = tmp_path / "erp"
        make_project(root)
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[project]\nroot = "{root}"\n[database]\n'
                       f'url = "postgresql://postgres:{secret}@127.0.0.1:5432/{name}"\n'
                       f'[storage]\nlocal_dir = "{tmp_path / "bk"}"\n')
        res = subprocess.run([str(Path(sys.executable).parent / "erp-backup"), "--config", str(cfg), "backup",
                              "full"], env=prefect_server.env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stderr[-3000:]
        assert secret not in res.stdout + res.stderr
        runs = [r for r in prefect_server.flow_runs("erp-backup-full") if str(root) in json.dumps(r["parameters"])]
        assert runs, "the run is not on the server"
        params = json.dumps(runs[0]["parameters"])
        assert "settings" in runs[0]["parameters"] and secret not in params
        with httpx.Client(base_url=prefect_server.api, timeout=30) as c:
            logs = c.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}, "limit": 200})
            assert secret not in logs.text
    finally:
        conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()
