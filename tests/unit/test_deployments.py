"""prefect.yaml: every deployment points at a real flow and every schedule is a valid cron."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from pathlib import Path

import yaml
from cronsim import CronSim
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

from erp_backup.prefect_setup import AUTOMATIONS_FILE, DEFAULT_TZ, TZ_TEMPLATE, render_automations, schedule_zone

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
        # the timezone is the Prefect variable `erp-backup setup --timezone` stores (read at deploy time)
        assert sched[name][0]["timezone"] == TZ_TEMPLATE
        CronSchedule(cron=cron, timezone=DEFAULT_TZ)  # what the server validates
        assert str(schedule_zone(sched[name][0]["timezone"])) == DEFAULT_TZ
    # the monthly archive runs on the last day of every month, February included
    it = CronSim("0 1 L * *", datetime(2027, 1, 15, tzinfo=UTC))
    runs = [next(it) for _ in range(3)]
    assert [(r.month, r.day) for r in runs] == [(1, 31), (2, 28), (3, 31)]


def test_backup_deployments_run_one_at_a_time() -> None:
    for d in load()["deployments"]:
        if "backup" in d.get("tags", []):
            assert d["concurrency_limit"]["limit"] == 1


def test_every_job_is_a_deployment_with_a_description_and_typed_parameters() -> None:
    for d in load()["deployments"]:
        assert d["description"], d["name"]
        module, func = d["entrypoint"].split(":")
        f = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        schema = f.parameters.model_dump()["properties"]
        assert "config" in schema, d["name"]
        for name, prop in schema.items():  # the UI's run form needs a type for every parameter
            assert "type" in prop or "anyOf" in prop or "allOf" in prop or "$ref" in prop, (d["name"], name)


def test_automations_file_renders_into_valid_automations() -> None:
    from prefect.events.schemas.automations import AutomationCore

    autos = render_automations(AUTOMATIONS_FILE.read_text(), {
        "NOTIFY_BLOCK_ID": "00000000-0000-0000-0000-000000000001", "LATE_INCREMENTAL_S": 4500, "LATE_FULL_S": 93600})
    cores = {a["name"]: AutomationCore.model_validate(a) for a in autos}
    assert set(cores) == {"erp-backup: run failed or crashed", "erp-backup: scheduled run not started",
                          "erp-backup: incremental late", "erp-backup: full late",
                          "erp-backup: size anomaly", "erp-backup: restore test missed RTO/RPO"}
    late = cores["erp-backup: incremental late"].trigger.model_dump()
    assert late["within"].total_seconds() == 4500 and late["posture"] == "Proactive"
    assert late["after"] == {"prefect.flow-run.Completed"}  # once per gap (field notes)
    assert late["for_each"]
    body = next(a for a in autos if a["name"] == "erp-backup: incremental late")["actions"][0]["body"]
    assert "4500 s" in body
    expects = {e for c in cores.values() for e in c.trigger.model_dump()["expect"]}
    assert {"erp-backup.backup.size-anomaly", "erp-backup.restore-test.failed", "prefect.flow-run.Crashed"} <= expects


def test_sample_alert_rules_use_our_metrics() -> None:
    import re

    from erp_backup.adapters.metrics import HELP

    rules = yaml.safe_load((ROOT / "deployments" / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    assert len({r["alert"] for r in rules}) == len(rules) >= 6
    used = {m for r in rules for m in re.findall(r"erp_backup_[a-z_]+", r["expr"])}
    assert used <= set(HELP), used - set(HELP)  # no rule on a metric we do not write
    assert {"erp_backup_last_success_timestamp_seconds", "erp_backup_verify_ok",
            "erp_backup_restore_test_rto_seconds"} <= used


def test_restore_test_is_deployed_monthly() -> None:
    (d,) = [d for d in load()["deployments"] if d["name"] == "restore-test"]
    assert d["entrypoint"] == "flows/restore_test.py:restore_test_flow"
    (s,) = d["schedules"]
    it = CronSim(s["cron"], datetime(2027, 1, 15, tzinfo=UTC))
    assert [(r.month, r.day) for r in (next(it), next(it))] == [(2, 1), (3, 1)]
    assert s["timezone"] == TZ_TEMPLATE  # set by `erp-backup setup`
    CronSchedule(cron=s["cron"], timezone=DEFAULT_TZ)
