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

from erp_backup import inplace, jobs
from erp_backup import restore as restorer
from erp_backup import verify as verifier
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import Settings
from erp_backup.core.errors import ConfigError
from erp_backup.flows import ops
from erp_backup.flows.common import artifact_key, retry_transient, settings_for


@task(name="restore-preflight", cache_policy=NO_CACHE)
def restore_preflight_task(settings: Settings, request: restorer.RestoreRequest) -> restorer.RestorePlan:
    return restorer.preflight(LocalRepository(settings.storage.local_dir), request, live=settings.live_database(),
                              settings=settings, max_age_s=settings.restore.max_age)


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


@task(name="in-place-plan", cache_policy=NO_CACHE)
def in_place_plan_task(settings: Settings, request: inplace.InPlaceRequest) -> inplace.InPlacePlan:
    return inplace.plan(settings, request)


@task(name="in-place-restore", cache_policy=NO_CACHE)
def in_place_task(settings: Settings, plan: inplace.InPlacePlan) -> inplace.InPlaceReport:
    log = get_run_logger()
    try:
        return inplace.run(settings, plan, log=log.info)
    except inplace.InPlaceFailed as e:
        _steps_artifact(e.steps, f"In-place restore **FAILED**: {e.message}")
        raise


def _steps_artifact(steps: tuple[inplace.Step, ...], description: str) -> None:
    create_table_artifact(key=artifact_key("erp-backup-restore-in-place"), table=[s.row() for s in steps],
                          description=description)


def run_in_place(s: Settings, plan: inplace.InPlacePlan) -> dict[str, Any]:
    log = get_run_logger()
    rep = in_place_task(s, plan)
    for n in rep.notes:
        log.warning(n)
    _steps_artifact(rep.steps, f"In-place restore of **{rep.set_id}** into `{plan.root}`; safety copy "
                    f"`{rep.safety_copy}` (kept until the next successful backup)")
    return {**rep.row(), "steps": rep.rows()}


@flow(name="erp-backup-restore", log_prints=True)
def restore_flow(target_dir: str | None = None, backup_id: str | None = None, at: datetime | None = None,
                 target_database: str | None = None, force: bool = False, yes: bool = False, jobs: int = 1,
                 keep_setid: bool = False, config: str | None = None, in_place: bool = False,
                 files_only: bool = False, database_only: bool = False, verify: str | None = None,
                 allow_old: bool = False) -> dict[str, Any]:
    """Restore a backup set (``backup_id``), the newest set finished at or before ``at``,
    or the newest valid set (``verify``: quick or full, default ``[restore] verify``; refused when older than
    ``[restore] max_age``
    unless ``allow_old``), into ``target_dir`` and/or ``target_database``. Setuid/setgid bits recorded
    in the set are dropped (a warning says how many) unless ``keep_setid``.

    ``in_place`` (with ``yes``): the emergency restore into the project root and the live database
    (``files_only``/``database_only`` narrow it): stop commands, safety copy, restore, start, smoke;
    on a failure the safety copy is put back and the services started again."""
    s = settings_for(config)
    verify = verify or s.restore.verify
    if in_place:
        if target_dir or target_database:
            raise ConfigError("in_place restores into the project root and the live database",
                                       hint="leave target_dir and target_database empty")
        req = inplace.InPlaceRequest(backup_id=backup_id, at=at, files=not database_only, database=not files_only,
                                     yes=yes, verify=verify, allow_old=allow_old)
        return run_in_place(s, in_place_plan_task(s, req))
    request = restorer.RestoreRequest(target_dir=target_dir, backup_id=backup_id, at=at,
                                      target_database=target_database, force=force, yes=yes, jobs=jobs,
                                      keep_setid=keep_setid, verify=verify, allow_old=allow_old)
    return run_restore(s, restore_preflight_task(s, request))


@flow(name="erp-backup-restore", log_prints=True)
def restore_in_place_checked_flow(settings: Settings, plan: inplace.InPlacePlan) -> dict[str, Any]:
    """The CLI's in-place restore, with the plan its preflight made before Prefect started (never deployed)."""
    return run_in_place(settings, plan)


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
    ops.publish_verify_metrics(s, reports)
    ops.publish_catalog(s)
    jobs.raise_if_failed(rows, reports)
    return rows


@task(name="put-back-safety-copy", cache_policy=NO_CACHE)
def put_back_task(settings: Settings, path: str) -> tuple[inplace.Step, ...]:
    log = get_run_logger()
    copy = inplace.check_put_back(settings, path, yes=True)
    try:
        return inplace.put_back(settings, copy, log=log.info)
    except inplace.InPlaceFailed as e:
        _steps_artifact(e.steps, f"Put-back of `{path}` **FAILED**: {e.message}")
        raise


@flow(name="erp-backup-restore", log_prints=True)
def put_back_checked_flow(settings: Settings, path: str) -> list[dict[str, Any]]:
    """The CLI's ``restore --put-back DIR --yes``: an in-place restore's safety copy put back (never deployed)."""
    steps = put_back_task(settings, path)
    _steps_artifact(steps, f"Safety copy `{path}` put back")
    return [s.row() for s in steps]
