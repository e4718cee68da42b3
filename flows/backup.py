"""Backup flows: full, incremental, differential, monthly archive.

Thin wiring: each stage of ``erp_backup.backup`` is one task. Stages that are
safe to repeat (scan, dump, archive, verify) retry on transient errors; seal
and commit do not. The repository lock is held by the flow for the whole run,
so two backups never write the same repository at once (the second waits up
to ``[backup] lock_wait_s``, then fails saying who holds the lock).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.utilities.annotations import quote

from erp_backup import backup as engine
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.anomaly import size_anomaly
from erp_backup.core.models import BackupKind
from flows.common import artifact_key, retry_transient, settings_for

RETRY = {"retries": 2, "retry_delay_seconds": [10, 60], "retry_condition_fn": retry_transient,
         "cache_policy": NO_CACHE}


@task(name="scan", **RETRY)  # type: ignore[call-overload]
def scan_task(run: engine.BackupRun) -> dict[str, int]:
    plan = engine.stage_scan(run)
    log = get_run_logger()
    log.info("scanned %d entries: %d files to archive (%d bytes), %d carried over, %d deleted",
             plan.scanned, plan.changed_files, plan.changed_bytes, len(plan.carried), len(plan.deleted))
    for path, why in run.skipped:
        log.warning("skipped %s: %s", path, why)
    return {"scanned": plan.scanned, "changed": plan.changed_files, "deleted": len(plan.deleted)}


@task(name="dump-database", **RETRY)  # type: ignore[call-overload]
def dump_task(run: engine.BackupRun) -> dict[str, Any]:
    info = engine.stage_dump(run)
    log = get_run_logger()
    if info is None:
        log.info("no database configured")
        return {}
    assert run.db_artifact is not None
    log.info("%s dump of %s: %d tables, %d rows, %d bytes raw -> %d bytes", info.engine, info.database,
             len(info.tables), sum(info.tables.values()), info.raw_size, run.db_artifact.size)
    for w in run.warnings:
        if w.startswith("database"):
            log.warning(w)
    return {"engine": info.engine, "tables": len(info.tables), "bytes": run.db_artifact.size}


@task(name="archive-files", **RETRY)  # type: ignore[call-overload]
def archive_task(run: engine.BackupRun) -> dict[str, int]:
    art = engine.stage_archive(run)
    log = get_run_logger()
    log.info("archived %d bytes of files into %s (%d bytes)", run.files_bytes_in, art.name, art.size)
    for w in run.warnings:
        if not w.startswith("database"):
            log.warning(w)
    return {"bytes_in": run.files_bytes_in, "bytes_out": art.size}


@task(name="seal-set", cache_policy=NO_CACHE)
def seal_task(run: engine.BackupRun) -> str:
    m = engine.stage_seal(run)
    get_run_logger().info("manifest and SHA256SUMS written for %s (%d index entries)", m.id, len(m.files))
    return m.id.value


@task(name="verify-set", **RETRY)  # type: ignore[call-overload]
def verify_task(run: engine.BackupRun) -> dict[str, Any]:
    rep = engine.stage_verify(run)
    get_run_logger().info("verification (%s) passed: %d bytes checksummed, %d files content-checked",
                          rep.level, rep.bytes_checked, rep.files_checked)
    return {"level": rep.level, "ok": rep.ok}


@task(name="commit-set", cache_policy=NO_CACHE)
def commit_task(run: engine.BackupRun) -> str:
    path = engine.stage_commit(run)
    get_run_logger().info("committed %s", path)
    return str(path)


@task(name="report", cache_policy=NO_CACHE)
def report_task(result: engine.BackupResult, settings_local_dir: str) -> dict[str, Any]:
    log = get_run_logger()
    row = result.summary_row()
    m = result.manifest
    create_table_artifact(
        key=artifact_key(f"erp-backup-{m.kind.value}" + ("-monthly" if "monthly" in m.tags else "")),
        table=[row],
        description=f"Backup set **{m.id}** committed in `{result.path}`; stage timings (s): "
        + ", ".join(f"{k} {v}" for k, v in result.timings.items()),
    )
    resource = {"prefect.resource.id": f"erp-backup.set.{m.id}", "prefect.resource.name": m.id.value,
                "erp-backup.kind": m.kind.value}
    emit_event(event="erp-backup.backup.completed", resource=resource, payload=row)
    repo = LocalRepository(settings_local_dir)
    history = [h.size_bytes for h in repo.headers() if h.kind is m.kind and h.id != m.id][-10:]
    verdict = size_anomaly(m.size_bytes, history)
    if verdict.anomalous:
        log.warning("size anomaly: %s", verdict.reason)
        emit_event(event="erp-backup.backup.size-anomaly", resource=resource,
                   payload={**row, "reason": verdict.reason, "baseline_bytes": verdict.baseline,
                            "ratio": verdict.ratio})
    row["size check"] = verdict.reason
    log.info("backup %s done in %.1f s: %s", m.id, m.stats.duration_s, row)
    return row


def run_backup_flow(kind: BackupKind, tags: tuple[str, ...], config: str | None) -> dict[str, Any]:
    settings = settings_for(config)
    log = get_run_logger()
    with engine.backup_session(settings, kind, tags) as run:
        if run.cleaned_partials:
            log.warning("removed leftovers of interrupted runs: %s", ", ".join(run.cleaned_partials))
        if run.promoted:
            log.warning("no full backup to build on: this %s run was promoted to a full", kind.value)
        log.info("backup %s (%s) of %s -> %s; parent %s", run.id, run.kind.value, settings.project.root,
                 settings.storage.local_dir, run.parent.id if run.parent else "none")
        q = quote(run)
        opts = {"retries": settings.backup.task_retries, "retry_delay_seconds": settings.backup.retry_delay_s}
        scan_task.with_options(**opts)(q)
        dump_task.with_options(**opts)(q)
        archive_task.with_options(**opts)(q)
        seal_task(q)
        verify_task.with_options(**opts)(q)
        commit_task(q)
    result = engine.result_of(run)
    return report_task(quote(result), str(settings.storage.local_dir))


@flow(name="erp-backup-full", log_prints=True)
def full_backup(config: str | None = None) -> dict[str, Any]:
    """Full backup: every included file and a fresh database dump."""
    return run_backup_flow(BackupKind.FULL, (), config)


@flow(name="erp-backup-incremental", log_prints=True)
def incremental_backup(config: str | None = None) -> dict[str, Any]:
    """Files changed since the previous backup of any kind, plus a fresh database dump."""
    return run_backup_flow(BackupKind.INCREMENTAL, (), config)


@flow(name="erp-backup-differential", log_prints=True)
def differential_backup(config: str | None = None) -> dict[str, Any]:
    """Files changed since the last full backup, plus a fresh database dump."""
    return run_backup_flow(BackupKind.DIFFERENTIAL, (), config)


@flow(name="erp-backup-monthly", log_prints=True)
def monthly_archive(config: str | None = None) -> dict[str, Any]:
    """A full backup tagged ``monthly`` (kept one year)."""
    return run_backup_flow(BackupKind.FULL, ("monthly",), config)


FLOWS = {
    "full": full_backup,
    "incremental": incremental_backup,
    "differential": differential_backup,
    "monthly": monthly_archive,
}
