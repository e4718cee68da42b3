"""Backup flows: full, incremental, differential, monthly archive.

Thin wiring: each stage of ``erp_backup.backup`` is one task, and the order is
``erp_backup.pipeline.run_pipeline``'s (the same function tests and benchmarks
run with the plain stages). Stages that are safe to repeat (preflight, scan, dump, archive,
verify) retry on transient errors; prepare, seal and commit do not. The
repository lock is held for the whole run, so two backups never write the same
repository at once (the second waits up to ``[backup] lock_wait_s``, then fails
saying who holds the lock).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import Flow, flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from erp_backup import alerts
from erp_backup import backup as engine
from erp_backup.backup import (
    BackupPlan,
    BackupReport,
    CommittedSet,
    DumpResult,
    FilesResult,
    Preflight,
    ScanResult,
    SealedSet,
)
from erp_backup.config import Settings
from erp_backup.core.models import BackupJob, BackupKind
from erp_backup.flows import ops
from erp_backup.flows.common import artifact_key, as_stage, retry_transient, settings_for
from erp_backup.pipeline import Stages, run_pipeline
from erp_backup.prune import PruneResult, prune_stage, rows_of
from erp_backup.upload import UploadResult, upload_stage
from erp_backup.verify import VerifyReport


@task(name="preflight", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def preflight_task(settings: Settings, kind: BackupKind, tags: tuple[str, ...]) -> Preflight:
    checked = engine.preflight(settings, kind, tags)
    get_run_logger().info("preflight passed: %s", checked)
    return checked


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(settings: Settings, checked: Preflight, now: datetime | None) -> BackupPlan:
    plan = engine.prepare(settings, checked, now=now)
    log = get_run_logger()
    if plan.cleaned_partials:
        log.warning("removed leftovers of interrupted runs: %s", ", ".join(plan.cleaned_partials))
    if plan.promoted:
        log.warning("no full backup to build on: this %s run was promoted to a full", checked.kind.value)
    for w in plan.passed_over:
        log.warning(w)
    log.info("backup %s (%s) of %s -> %s; parent %s", plan.id, plan.kind.value, settings.project.root,
             settings.storage.local_dir, plan.parent.id if plan.parent else "none")
    return plan


@task(name="scan", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def scan_task(plan: BackupPlan) -> ScanResult:
    res = engine.scan_changes(plan)
    c = res.changes
    log = get_run_logger()
    log.info("scanned %d entries: %d files to archive (%d bytes), %d carried over, %d deleted",
             c.scanned, c.changed_files, c.changed_bytes, c.carried, len(c.deleted))
    for path, why in res.skipped:
        log.warning("skipped %s: %s", path, why)
    return res


@task(name="dump-database", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def dump_task(plan: BackupPlan) -> DumpResult | None:
    res = engine.dump_database(plan)
    log = get_run_logger()
    if res is None:
        log.info("no database configured")
        return None
    info = res.info
    log.info("%s dump of %s: %d tables, %d rows, %d bytes raw -> %d bytes", info.engine, info.database,
             len(info.tables), sum(info.tables.values()), info.raw_size, res.artifact.size)
    for w in res.warnings:
        log.warning(w)
    return res


@task(name="archive-files", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def archive_task(plan: BackupPlan, scanned: ScanResult) -> FilesResult:
    res = engine.archive_files(plan, scanned)
    log = get_run_logger()
    log.info("archived %d bytes of files into %s (%d bytes)", res.bytes_in, res.artifact.name, res.artifact.size)
    for path, why in res.skipped:
        log.warning("skipped %s: %s", path, why)
    for w in res.warnings:
        log.warning(w)
    return res


@task(name="seal-set", cache_policy=NO_CACHE)
def seal_task(plan: BackupPlan, scanned: ScanResult, files: FilesResult, dumped: DumpResult | None,
              finished: datetime | None) -> SealedSet:
    sealed = engine.seal(plan, scanned, files, dumped, finished)
    get_run_logger().info("manifest and SHA256SUMS written for %s (%d index entries)", sealed.manifest.id,
                          len(sealed.manifest.files))
    return sealed


@task(name="verify-set", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def verify_task(plan: BackupPlan, sealed: SealedSet) -> VerifyReport:
    try:
        rep = engine.verify_sealed(plan, sealed)
    except Exception as e:  # the new set failed its own check: the security team hears of it too
        alerts.emit_for_error(plan.id.value, e, "backup")
        raise
    get_run_logger().info("verification (%s) passed: %d bytes checksummed, %d files content-checked",
                          rep.level, rep.bytes_checked, rep.files_checked)
    return rep


@task(name="commit-set", cache_policy=NO_CACHE)
def commit_task(plan: BackupPlan, sealed: SealedSet, verified: VerifyReport) -> CommittedSet:
    committed = engine.commit(plan, sealed, verified)
    get_run_logger().info("committed %s", committed.path)
    return committed


@task(name="upload-set", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def upload_task(settings: Settings, committed: CommittedSet) -> UploadResult | None:
    res = upload_stage(settings, committed)
    log = get_run_logger()
    if res is None:
        log.info("no remote configured: the set stays local only")
        return None
    log.info("uploaded to %s: %s (%d bytes)", res.remote, ", ".join(res.uploaded) or "nothing missing",
             res.bytes_sent)
    for w in res.warnings:
        log.warning(w)
    return res


@task(name="prune", cache_policy=NO_CACHE)
def prune_task(settings: Settings, committed: CommittedSet, uploaded: UploadResult | None) -> PruneResult | None:
    res = prune_stage(settings, committed, uploaded)
    log = get_run_logger()
    if res is None:
        log.info("retention not applied")
        return None
    log.info("pruned %d local and %d remote set(s); %d kept", len(res.removed_local), len(res.removed_remote),
             res.kept)
    for w in res.warnings:
        log.warning(w)
    if res.reports:
        create_table_artifact(key=artifact_key("erp-backup-prune"), table=rows_of(res.reports),
                              description=f"Retention after backup {committed.manifest.id}")
    return res


@task(name="report", cache_policy=NO_CACHE)
def report_task(plan: BackupPlan, committed: CommittedSet, warnings: tuple[str, ...],
                timings: dict[str, float]) -> BackupReport:
    rep = engine.report(plan, committed, warnings, timings)
    log = get_run_logger()
    m = committed.manifest
    row = rep.row
    create_table_artifact(
        key=artifact_key(f"erp-backup-{m.kind.value}" + ("-monthly" if m.is_monthly else "")),
        table=[row],
        description=f"Backup set **{m.id}** committed in `{committed.path}`; stage timings (s): "
        + ", ".join(f"{k} {v}" for k, v in timings.items())
        + (f"; {len(warnings)} warning(s): " + "; ".join(warnings[:5]) if warnings else ""),
    )
    resource = {"prefect.resource.id": f"erp-backup.set.{m.id}", "prefect.resource.name": m.id.value,
                "erp-backup.kind": m.kind.value}
    emit_event(event="erp-backup.backup.completed", resource=resource, payload=row)
    if rep.size.anomalous:
        log.warning("size anomaly: %s", rep.size.reason)
        emit_event(event="erp-backup.backup.size-anomaly", resource=resource,
                   payload={**row, "reason": rep.size.reason, "baseline_bytes": rep.size.baseline,
                            "ratio": rep.size.ratio})
    log.info("backup %s done in %.1f s: %s", m.id, m.stats.duration_s, row)
    ops.publish_backup_metrics(plan.settings, m, verified=committed.verify.level != "none")
    ops.publish_catalog(plan.settings)
    return rep


def task_stages(settings: Settings) -> Stages:
    """The Prefect tasks as pipeline stages; retries for the stages that are safe to repeat."""
    retry: dict[str, Any] = {"retries": settings.backup.task_retries,
                             "retry_delay_seconds": list(settings.backup.retry_delay_s)}
    return Stages(
        preflight=as_stage(preflight_task.with_options(**retry)),  # writes nothing: a restarting database
        prepare=as_stage(prepare_task),
        scan=as_stage(scan_task.with_options(**retry)),
        dump=as_stage(dump_task.with_options(**retry)),
        archive=as_stage(archive_task.with_options(**retry)),
        seal=as_stage(seal_task),
        verify=as_stage(verify_task.with_options(**retry)),
        commit=as_stage(commit_task),
        upload=as_stage(upload_task.with_options(**retry)),
        prune=as_stage(prune_task),
        report=as_stage(report_task),
    )


def run_backup_flow(job: BackupJob, settings: Settings, checked: Preflight | None) -> dict[str, Any]:
    with ops.backup_slot(settings, job.value):  # one backup at a time across deployments (setup's limit)
        stages = ops.with_progress(task_stages(settings), job.value, settings.monitoring.progress_interval_s)
        result = run_pipeline(settings, job, stages, checked=checked)
    return {**result.report.row, "timings": result.timings}


# ---- the deployments' flows: what the UI and the schedules run. They take a config path only, so
# ---- every run is checked by its own preflight task and its settings pass the config file's rules.


@flow(name="erp-backup-full", log_prints=True)
def full_backup(config: str | None = None) -> dict[str, Any]:
    """Full backup: every included file and a fresh database dump."""
    return run_backup_flow(BackupJob.FULL, settings_for(config), None)


@flow(name="erp-backup-incremental", log_prints=True)
def incremental_backup(config: str | None = None) -> dict[str, Any]:
    """Files changed since the previous backup of any kind, plus a fresh database dump."""
    return run_backup_flow(BackupJob.INCREMENTAL, settings_for(config), None)


@flow(name="erp-backup-differential", log_prints=True)
def differential_backup(config: str | None = None) -> dict[str, Any]:
    """Files changed since the last full backup, plus a fresh database dump."""
    return run_backup_flow(BackupJob.DIFFERENTIAL, settings_for(config), None)


@flow(name="erp-backup-monthly", log_prints=True)
def monthly_archive(config: str | None = None) -> dict[str, Any]:
    """A full backup tagged ``monthly`` (kept one year)."""
    return run_backup_flow(BackupJob.MONTHLY, settings_for(config), None)


FLOWS = {
    BackupJob.FULL: full_backup,
    BackupJob.INCREMENTAL: incremental_backup,
    BackupJob.DIFFERENTIAL: differential_backup,
    BackupJob.MONTHLY: monthly_archive,
}


# ---- the CLI's flows: same names (so runs, automations and the UI see one flow per job), never
# ---- deployed. The CLI hands them the settings it loaded and the preflight it ran before Prefect
# ---- started; nothing else can start them with made-up parameters.


def _cli_flow(job: BackupJob) -> Flow[[Settings, Preflight | None], dict[str, Any]]:
    def run(settings: Settings, checked: Preflight | None = None) -> dict[str, Any]:
        return run_backup_flow(job, settings, checked)

    run.__doc__ = FLOWS[job].description
    return flow(name=FLOWS[job].name, log_prints=True)(run)


CLI_FLOWS = {job: _cli_flow(job) for job in BackupJob}
