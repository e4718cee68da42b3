"""Off-site flows: upload (push what is missing), verify --remote, restore --from-remote.

Thin wiring over ``erp_backup.upload``, ``erp_backup.remote_verify`` and ``erp_backup.remote_restore``;
the store comes from the ``[remote] block`` (``erp_backup.remote_store.open_store``). Uploads and
downloads retry on transient errors; the restore itself never does.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from erp_backup import remote_restore, remote_verify
from erp_backup import restore as restorer
from erp_backup import verify as verifier
from erp_backup.config import Settings
from erp_backup.core.models import BackupId
from erp_backup.flows.common import artifact_key, retry_transient, settings_for
from erp_backup.remote_store import open_store
from erp_backup.upload import UploadResult, push


@task(name="upload-sets", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[30, 120],
      retry_condition_fn=retry_transient)
def upload_sets_task(settings: Settings, backup_ids: list[str] | None) -> UploadResult:
    log = get_run_logger()
    res = push(settings, open_store(settings), wanted=[BackupId(i) for i in backup_ids] if backup_ids else None,
               on_sent=lambda sid, n: log.info("sent %s (%d bytes)", sid, n))
    for w in res.warnings:
        log.warning(w)
    return res


def run_upload(settings: Settings, backup_ids: list[str] | None = None) -> dict[str, Any]:
    res = upload_sets_task(settings, backup_ids)
    row = {"remote": res.remote, "uploaded": ", ".join(res.uploaded) or "-", "bytes sent": res.bytes_sent,
           "warnings": "; ".join(res.warnings) or "-"}
    create_table_artifact(key=artifact_key("erp-backup-upload"), table=[row],
                          description=f"Sets sent to {res.remote}")
    return row


@flow(name="erp-backup-upload", log_prints=True)
def upload_flow(backup_ids: list[str] | None = None, config: str | None = None) -> dict[str, Any]:
    """Send committed local sets missing remotely (default: every one in the catch-up window), oldest first."""
    return run_upload(settings_for(config), backup_ids)


@flow(name="erp-backup-upload", log_prints=True)
def upload_checked_flow(settings: Settings, backup_ids: list[str] | None = None) -> dict[str, Any]:
    """The CLI's upload, with the settings it loaded (never deployed)."""
    return run_upload(settings, backup_ids)


@task(name="verify-remote-sets", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_transient)
def verify_remote_task(settings: Settings, backup_ids: list[str] | None) -> list[verifier.VerifyReport]:
    return remote_verify.verify_remote(settings, open_store(settings), backup_ids)


def run_verify_remote(settings: Settings, backup_ids: list[str] | None = None) -> list[dict[str, Any]]:
    log = get_run_logger()
    reports = verify_remote_task(settings, backup_ids)
    rows = remote_verify.rows(reports)
    for r in reports:
        for p in r.problems:
            log.error("%s", p)
    if rows:
        create_table_artifact(key=artifact_key("erp-backup-verify-remote"), table=rows,
                              description=f"Verification of {len(rows)} remote set(s)")
    bad = [r for r in reports if not r.ok]
    if bad:
        raise verifier.VerifyFailed(rows, bad)
    return rows


@flow(name="erp-backup-verify-remote", log_prints=True)
def verify_remote_flow(backup_ids: list[str] | None = None, config: str | None = None) -> list[dict[str, Any]]:
    """Stream every object of the remote sets (all complete ones by default) and check sizes and SHA-256."""
    return run_verify_remote(settings_for(config), backup_ids)


@flow(name="erp-backup-verify-remote", log_prints=True)
def verify_remote_checked_flow(settings: Settings, backup_ids: list[str] | None = None) -> list[dict[str, Any]]:
    return run_verify_remote(settings, backup_ids)


@task(name="fetch-remote-chain", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=retry_transient)
def fetch_task(settings: Settings, request: restorer.RestoreRequest, scratch: str) -> remote_restore.Fetched:
    for leftover in Path(scratch).iterdir():  # a retry starts from a clean scratch directory
        if leftover.name.endswith(".partial"):
            import shutil

            shutil.rmtree(leftover, ignore_errors=True)
    fetched = remote_restore.fetch(settings, open_store(settings), request, Path(scratch))
    get_run_logger().info("downloaded %s (%d bytes) into the scratch directory", ", ".join(fetched.sets),
                          fetched.bytes)
    return fetched


@task(name="restore-set", cache_policy=NO_CACHE)
def restore_fetched_task(settings: Settings, fetched: remote_restore.Fetched,
                         request: restorer.RestoreRequest) -> restorer.RestoreReport:
    return remote_restore.restore_fetched(settings, fetched, request)


def run_restore_from_remote(settings: Settings, request: restorer.RestoreRequest,
                            scratch_dir: str | None = None) -> dict[str, Any]:
    log = get_run_logger()
    with remote_restore.scratch_dir(scratch_dir) as scratch:
        fetched = fetch_task(settings, request, str(scratch))
        rep = restore_fetched_task(settings, fetched, request)
    row = {**rep.row(), "from": "remote"}
    for n in rep.notes:
        log.warning(n)
    create_table_artifact(key=artifact_key("erp-backup-restore"), table=[row],
                          description=f"Restore of **{rep.set_id}** from the remote copy")
    return row


@flow(name="erp-backup-restore", log_prints=True)
def restore_from_remote_flow(target_dir: str | None = None, backup_id: str | None = None,
                             at: datetime | None = None, target_database: str | None = None, force: bool = False,
                             yes: bool = False, jobs: int = 1, scratch_dir: str | None = None, config: str | None = None
                             ) -> dict[str, Any]:
    """Restore from the remote copy (no local backup directory needed): the set ``backup_id`` or the
    newest finished at or before ``at``, with its chain downloaded into a scratch directory first."""
    request = restorer.RestoreRequest(target_dir=target_dir, backup_id=backup_id, at=at,
                                      target_database=target_database, force=force, yes=yes, jobs=jobs)
    return run_restore_from_remote(settings_for(config), request, scratch_dir)


@flow(name="erp-backup-restore", log_prints=True)
def restore_from_remote_checked_flow(settings: Settings, request: restorer.RestoreRequest,
                                     scratch_dir: str | None = None) -> dict[str, Any]:
    """The CLI's restore --from-remote (never deployed)."""
    return run_restore_from_remote(settings, request, scratch_dir)
