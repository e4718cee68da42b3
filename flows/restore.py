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

from erp_backup import restore as restorer
from erp_backup import verify as verifier
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.cli_quiet import DETAIL
from erp_backup.config import Settings
from erp_backup.core.models import BackupId
from erp_backup.flows.common import artifact_key, retry_transient, settings_for


@task(name="restore-preflight", cache_policy=NO_CACHE)
def restore_preflight_task(settings: Settings, request: restorer.RestoreRequest) -> restorer.RestorePlan:
    return restorer.preflight(LocalRepository(settings.storage.local_dir), request, live=settings.live_database())


@task(name="restore-set", cache_policy=NO_CACHE)
def restore_task(settings: Settings, plan: restorer.RestorePlan) -> restorer.RestoreReport:
    live = settings.live_database()
    return restorer.execute(LocalRepository(settings.storage.local_dir), plan,
                            restorer.target_database_of(plan, live))


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


@task(name="verify-sets", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def verify_sets_task(settings: Settings, ids: list[str], level: str) -> list[verifier.VerifyReport]:
    repo = LocalRepository(settings.storage.local_dir)
    return verifier.verify_sets(repo, ids, level=level, key_files=settings.project.key_files)


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
    cleaned = repo.clean_leftovers()  # scratch directories of killed runs
    if cleaned:
        log.warning("removed leftovers of interrupted runs: %s", ", ".join(cleaned))
    if backup_ids:
        ids = [BackupId(i).value for i in backup_ids]
    else:  # every set directory, damaged ones too: they fail, by name
        ids = [i.value for i in repo.scan().ids]
    reports = verify_sets_task(s, ids, level)
    rows = []
    for r in reports:
        rows.append({"set": r.set_id, "level": r.level, "result": "passed" if r.ok else "FAILED",
                     "problems": "; ".join(r.problems) or "-", "bytes checked": r.bytes_checked,
                     "files checked": r.files_checked})
        if r.ok:
            log.info("%s: verification passed", r.set_id)
        else:
            for p in r.problems:
                log.error("%s", p, extra=DETAIL)  # the CLI shows them in its table instead
    if rows:
        create_table_artifact(key=artifact_key("erp-backup-verify"), table=rows,
                              description=f"Verification of {len(rows)} set(s) in `{repo.root}`")
    bad = [r for r in reports if not r.ok]
    if bad:  # carries the table: the CLI prints it before the error line
        raise verifier.VerifyFailed(rows, bad)
    return rows
