"""Restore and verify flows.

Restore is never retried automatically: a half-done restore must be looked at
by a person, not repeated blindly. Its checks (``erp_backup.restore.preflight``)
run once: in the CLI before Prefect starts, which then hands the checked plan
to the flow, or here when the flow is started from the UI or a deployment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from erp_backup import jobs
from erp_backup import restore as restorer
from erp_backup import verify as verifier
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import Settings
from erp_backup.flows.common import artifact_key, retry_transient, settings_for


@task(name="restore-preflight", cache_policy=NO_CACHE)
def restore_preflight_task(settings: Settings, request: restorer.RestoreRequest) -> restorer.RestorePlan:
    return restorer.preflight(LocalRepository(settings.storage.local_dir), request, live=settings.live_database())


@task(name="restore-set", cache_policy=NO_CACHE)
def restore_task(settings: Settings, plan: restorer.RestorePlan) -> restorer.RestoreReport:
    return jobs.execute_restore(settings, plan)


def run_restore(s: Settings, plan: restorer.RestorePlan) -> dict[str, Any]:
    log = get_run_logger()
    rep = restore_task(s, plan)
    row = rep.row()
    for n in rep.notes:
        log.warning(n)
    live = s.live_database()
    create_table_artifact(key=artifact_key("erp-backup-restore"), table=[row],
                          description=f"Restore of **{rep.set_id}** (live database: "
                          f"{live.redacted() if live else 'none configured'})")
    log.info("restored %s: %s", rep.set_id, row)
    return row


@flow(name="erp-backup-restore", log_prints=True)
def restore_flow(target_dir: str | None = None, backup_id: str | None = None, at: datetime | None = None,
                 target_database: str | None = None, force: bool = False, yes: bool = False, jobs: int = 1,
                 keep_setid: bool = False, config: str | None = None) -> dict[str, Any]:
    """Restore a backup set (``backup_id``), the newest set finished at or before ``at``,
    or the newest set, into ``target_dir`` and/or ``target_database``. Setuid/setgid bits recorded
    in the set are dropped (a warning says how many) unless ``keep_setid``."""
    s = settings_for(config)
    request = restorer.RestoreRequest(target_dir=target_dir, backup_id=backup_id, at=at,
                                      target_database=target_database, force=force, yes=yes, jobs=jobs,
                                      keep_setid=keep_setid)
    return run_restore(s, restore_preflight_task(s, request))


@flow(name="erp-backup-restore", log_prints=True)
def restore_checked_flow(settings: Settings, plan: restorer.RestorePlan) -> dict[str, Any]:
    """The CLI's restore: the plan of the preflight it ran before Prefect started (never deployed,
    so no one can hand it a plan that skipped the checks)."""
    return run_restore(settings, plan)


@task(name="verify-sets", cache_policy=NO_CACHE, retries=jobs.VERIFY_RETRIES,
      retry_delay_seconds=list(jobs.VERIFY_DELAYS),
      retry_condition_fn=retry_transient)
def verify_sets_task(settings: Settings, ids: list[str], level: str) -> list[verifier.VerifyReport]:
    return jobs.verify_sets(settings, ids, level)


@flow(name="erp-backup-verify", log_prints=True)
def verify_flow(backup_ids: list[str] | None = None, level: str = "full", config: str | None = None
                ) -> list[dict[str, Any]]:
    """Verify committed sets (all of them by default): checksums, archives, key files, dumps."""
    return run_verify(settings_for(config), backup_ids, level)


@flow(name="erp-backup-verify", log_prints=True)
def verify_checked_flow(settings: Settings, backup_ids: list[str] | None = None, level: str = "full"
                        ) -> list[dict[str, Any]]:
    """The CLI's verify, with the settings it loaded (never deployed)."""
    return run_verify(settings, backup_ids, level)


def run_verify(s: Settings, backup_ids: list[str] | None, level: str) -> list[dict[str, Any]]:
    log = get_run_logger()
    repo = LocalRepository(s.storage.local_dir)
    reports = verify_sets_task(s, jobs.verify_targets(repo, backup_ids, log), level)
    rows = jobs.verify_rows(reports, log)
    if rows:
        create_table_artifact(key=artifact_key("erp-backup-verify"), table=rows,
                              description=f"Verification of {len(rows)} set(s) in `{repo.root}`")
    jobs.raise_if_failed(rows, reports)
    return rows
