"""prefect.yaml: every deployment points at a real flow and every schedule is a valid cron."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from pathlib import Path

import yaml
from cronsim import CronSim
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

ROOT = Path(__file__).resolve().parents[2]


def load() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_each_deployment_entrypoint_is_a_flow() -> None:
    deps = load()["deployments"]
    names = {d["name"] for d in deps}
    assert {"full", "incremental", "differential", "monthly", "verify", "restore"} <= names
    for d in deps:
        module, func = d["entrypoint"].split(":")
        mod = importlib.import_module(module.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(mod, func), Flow), d["entrypoint"]


def test_schedules_match_the_strategy() -> None:
    sched = {d["name"]: d.get("schedules", []) for d in load()["deployments"]}
    expect = {"full": "0 2 * * *", "incremental": "0 * * * *", "differential": "0 1 * * 0", "monthly": "0 1 L * *"}
    for name, cron in expect.items():
        assert [s["cron"] for s in sched[name]] == [cron]
        assert sched[name][0]["timezone"]
        CronSchedule(cron=cron, timezone=sched[name][0]["timezone"])  # what the server validates
    # the monthly archive runs on the last day of every month, February included
    it = CronSim("0 1 L * *", datetime(2027, 1, 15, tzinfo=UTC))
    runs = [next(it) for _ in range(3)]
    assert [(r.month, r.day) for r in runs] == [(1, 31), (2, 28), (3, 31)]


def test_backup_deployments_run_one_at_a_time() -> None:
    for d in load()["deployments"]:
        if "backup" in d.get("tags", []):
            assert d["concurrency_limit"]["limit"] == 1


def test_restore_test_is_deployed_monthly() -> None:
    (d,) = [d for d in load()["deployments"] if d["name"] == "restore-test"]
    assert d["entrypoint"] == "flows/restore_test.py:restore_test_flow"
    (s,) = d["schedules"]
    it = CronSim(s["cron"], datetime(2027, 1, 15, tzinfo=UTC))
    assert [(r.month, r.day) for r in (next(it), next(it))] == [(2, 1), (3, 1)]
    CronSchedule(cron=s["cron"], timezone=s["timezone"])
