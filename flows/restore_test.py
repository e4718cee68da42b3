"""The monthly restore test (``erp_backup.restore_test``) as a Prefect flow.

One task runs the test (the restore into scratch, the checks, the scratch cleanup: one unit, timed
stage by stage inside); the flow publishes the RTO/RPO table as an artifact, emits
``erp-backup.restore-test.failed`` for a missed target, and fails so that the failure alert fires.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from erp_backup import restore_test as tester
from erp_backup.config import Settings
from erp_backup.flows import ops
from erp_backup.flows.common import artifact_key, settings_for


@task(name="restore-test", cache_policy=NO_CACHE)
def restore_test_task(settings: Settings, backup_id: str | None, from_remote: bool | None
                      ) -> tester.RestoreTestResult:
    log = get_run_logger()
    return tester.run_restore_test(settings, backup_id, from_remote=from_remote, log=log.info)


def run_restore_test(settings: Settings, backup_id: str | None, from_remote: bool | None) -> dict[str, Any]:
    log = get_run_logger()
    result = restore_test_task(settings, backup_id, from_remote)
    verdict = "passed" if result.ok else "FAILED"
    create_table_artifact(
        key=artifact_key("erp-backup-restore-test"), table=result.rows(),
        description=f"Restore test of **{result.set or 'no set'}**: {verdict}"
        + "".join(f"\n- {p}" for p in result.problems))
    for p in result.problems:
        log.error("%s", p)
    if not result.ok:
        try:
            from prefect.events import emit_event

            sid = result.set or "none"
            # the shape issue #11's automations use (deployments/automations.yaml)
            emit_event(event="erp-backup.restore-test.failed",
                       resource={"prefect.resource.id": f"erp-backup.restore-test.{sid}",
                                 "prefect.resource.name": sid},
                       payload={"reason": "; ".join(result.problems), "set": sid,
                                "rto_s": round(result.rto_extrapolated_seconds, 1),
                                "rpo_s": None if result.rpo_seconds is None else round(result.rpo_seconds, 1),
                                "rto_target_s": result.rto_target_seconds, "rpo_target_s": result.rpo_target_seconds,
                                "max_gap_s": result.max_gap_seconds, "problems": list(result.problems)})
        except Exception as e:  # an event is a courtesy: the failed run alerts anyway
            log.warning("could not emit the restore-test event: %s", e)
    if result.set is not None:  # metrics and catalog (issue #11): a test that restored something
        ops.publish_restore_test_metrics(settings, result.rto_seconds, result.rpo_seconds)
    ops.publish_catalog(settings)
    tester.raise_if_failed(result)
    return result.to_json()


@flow(name="erp-backup-restore-test", log_prints=True)
def restore_test_flow(config: str | None = None, backup_id: str | None = None,
                      from_remote: bool | None = None) -> dict[str, Any]:
    """Restore the newest valid set (or ``backup_id``) into a scratch directory and database, check
    every file and table, run the smoke check, drop the scratch, and measure RTO and RPO against the
    targets (``[restore_test]``). Fails when a check or a target is missed. ``from_remote`` (default:
    when ``[remote]`` is configured) tests the off-site copy, the one that survives a disaster."""
    return run_restore_test(settings_for(config), backup_id, from_remote)


@flow(name="erp-backup-restore-test", log_prints=True)
def restore_test_checked_flow(settings: Settings, backup_id: str | None = None,
                              from_remote: bool | None = None) -> dict[str, Any]:
    """The CLI's restore test, with the settings it loaded (never deployed)."""
    return run_restore_test(settings, backup_id, from_remote)
