"""The CLI's jobs without Prefect: backup, verify and restore run in this process.

``erp_backup.runner`` picks these when no Prefect API is configured (see its module doc). They do
what the flows do — the same stage order (``pipeline.run_pipeline``), the same retries for the
stages that are safe to repeat (``erp_backup.retry``, ``[backup] task_retries`` /
``retry_delay_s``), the same return values — and log to stderr instead of the Prefect UI. The
flows (``flows/restore.py``) share the verify and restore steps below with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeAlias, TypeVar

from erp_backup import backup as engine
from erp_backup import monitoring, verify_log
from erp_backup import restore as restorer
from erp_backup import verify as verifier
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.alerts import exposed_files
from erp_backup.backup import Preflight
from erp_backup.cli_quiet import DETAIL
from erp_backup.config import Settings
from erp_backup.core.errors import BackupError
from erp_backup.core.models import BackupId, BackupJob
from erp_backup.pipeline import PLAIN_STAGES, Stages, run_pipeline
from erp_backup.retry import retrying

Log: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"
T = TypeVar("T")

log = logging.getLogger("erp_backup.run")

# how the flows retry verify-sets (flows/restore.py): once, after 5 s
VERIFY_RETRIES = 1
VERIFY_DELAYS = (5.0,)


# ----------------------------------------------------------------------------- backup


def _logged(name: str, fn: Callable[..., T], say: Callable[[T], str] | None = None) -> Callable[..., T]:
    """``fn`` with one line on stderr when it is done (``say`` describes the result)."""

    def call(*args: Any) -> T:
        res = fn(*args)
        log.info("%s: %s", name, say(res) if say else "done")
        return res

    call.__name__ = name
    return call


def _say_prepare(p: engine.BackupPlan) -> str:
    if p.cleaned_partials:
        log.warning("removed leftovers of interrupted runs: %s", ", ".join(p.cleaned_partials))
    if p.promoted:
        log.warning("no full backup to build on: this run was promoted to a full")
    return (f"backup {p.id} ({p.kind.value}) of {p.settings.project.root} -> {p.settings.storage.local_dir}; "
            f"parent {p.parent.id if p.parent else 'none'}")


def _skipped(found: tuple[tuple[str, str], ...]) -> None:
    for path, why in found:
        log.warning("skipped %s: %s", path, why)


def _say_scan(r: engine.ScanResult) -> str:
    _skipped(r.skipped)
    c = r.changes
    return (f"{c.scanned} entries, {c.changed_files} files to archive ({c.changed_bytes} bytes), "
            f"{c.carried} carried over, {len(c.deleted)} deleted")


def _say_dump(r: engine.DumpResult | None) -> str:
    if r is None:
        return "no database configured"
    i = r.info
    return (f"{i.engine} {i.database}: {len(i.tables)} tables, {sum(i.tables.values())} rows, "
            f"{i.raw_size} bytes -> {r.artifact.size}")


def _say_archive(r: engine.FilesResult) -> str:
    _skipped(r.skipped)
    return f"{r.bytes_in} bytes of files -> {r.artifact.name} ({r.artifact.size} bytes)"


def _say_report(r: engine.BackupReport) -> str:
    for w in r.warnings:
        log.warning("%s", w)
    if r.size.anomalous:
        log.warning("size anomaly: %s", r.size.reason)
    return ", ".join(f"{k} {v}" for k, v in r.row.items())


def plain_stages(settings: Settings) -> Stages:
    """``PLAIN_STAGES`` with a line per stage, and the flows' retries on the stages safe to repeat."""
    b = settings.backup

    def again(name: str, fn: Callable[..., T]) -> Callable[..., T]:
        return retrying(fn, retries=b.task_retries, delays=b.retry_delay_s, name=name, log=log)

    p = PLAIN_STAGES
    return Stages(
        preflight=_logged("preflight", p.preflight, lambda c: f"passed ({c.kind.value}, parent {c.parent})"),
        prepare=_logged("prepare", p.prepare, _say_prepare),
        scan=_logged("scan", again("scan", p.scan), _say_scan),
        dump=_logged("dump", again("dump", p.dump), _say_dump),
        archive=_logged("archive", again("archive", p.archive), _say_archive),
        seal=_logged("seal", p.seal, lambda s: f"manifest and SHA256SUMS written ({len(s.manifest.files)} entries)"),
        verify=_logged("verify", again("verify", p.verify),
                       lambda r: f"{r.level} passed ({r.bytes_checked} bytes, {r.files_checked} files)"),
        commit=_logged("commit", p.commit, lambda c: str(c.path)),
        upload=_logged("upload", again("upload", p.upload),
                       lambda u: "no remote configured" if u is None else f"{u.remote}: {u.bytes_sent} bytes"),
        prune=_logged("prune", p.prune, lambda r: "not applied" if r is None else f"{r.kept} set(s) kept"),
        report=_logged("report", p.report, _say_report),
    )


def backup_job(job: BackupJob) -> Callable[..., dict[str, Any]]:
    """The plain variant of ``flows.backup.CLI_FLOWS[job]``: same keywords, same return value."""

    def run(settings: Settings, checked: Preflight | None = None) -> dict[str, Any]:
        result = run_pipeline(settings, job, plain_stages(settings), checked=checked)
        return {**result.report.row, "timings": result.timings}

    return run


# ----------------------------------------------------------------------------- verify


def verify_targets(repo: LocalRepository, backup_ids: list[str] | None, logger: Log) -> list[str]:
    """Clean leftovers of killed runs, then the ids to verify: those asked for, or every set
    directory (damaged ones too: they fail, by name)."""
    cleaned = repo.clean_leftovers()
    if cleaned:
        logger.warning("removed leftovers of interrupted runs: %s", ", ".join(cleaned))
    if backup_ids:
        return [BackupId(i).value for i in backup_ids]
    return [i.value for i in repo.scan().ids]


def verify_sets(settings: Settings, ids: list[str], level: str) -> list[verifier.VerifyReport]:
    """Verify the sets; every outcome is appended to the verification log ([verify] log)."""
    repo = LocalRepository(settings.storage.local_dir)
    reports = verifier.verify_sets(repo, ids, level=level, key_files=settings.project.key_files, settings=settings)
    reports = [_with_exposure(repo, r) for r in reports]
    warn = verify_log.record(settings, reports)
    if warn:
        log.warning("%s", warn)
    return reports


def _with_exposure(repo: LocalRepository, rep: verifier.VerifyReport) -> verifier.VerifyReport:
    """A set whose files group or others can read fails too (erp_backup.alerts: class permission)."""
    exposed = exposed_files(repo.set_dir(BackupId(rep.set_id))) if BackupId.is_valid(rep.set_id) else []
    return replace(rep, problems=rep.problems + tuple(exposed)) if exposed else rep


def verify_rows(reports: list[verifier.VerifyReport], logger: Log) -> list[dict[str, Any]]:
    """The summary table (one row per set), each result logged."""
    rows = []
    for r in reports:
        rows.append({"set": r.set_id, "level": r.level, "result": "passed" if r.ok else "FAILED",
                     "problems": "; ".join(r.problems) or "-", "bytes checked": r.bytes_checked,
                     "files checked": r.files_checked})
        if r.ok:
            logger.info("%s: verification passed", r.set_id)
        else:
            for p in r.problems:
                logger.error("%s", p, extra=DETAIL)  # the CLI shows them in its table instead
    return rows


def raise_if_failed(rows: list[dict[str, Any]], reports: list[verifier.VerifyReport]) -> None:
    bad = [r for r in reports if not r.ok]
    if bad:  # carries the table: the CLI prints it before the error line
        raise verifier.VerifyFailed(rows, bad)


def verify_job(settings: Settings, backup_ids: list[str] | None = None, level: str = "full"
               ) -> list[dict[str, Any]]:
    """The plain variant of ``flows.restore.verify_checked_flow``."""
    ids = verify_targets(LocalRepository(settings.storage.local_dir), backup_ids, log)
    check = retrying(verify_sets, retries=VERIFY_RETRIES, delays=VERIFY_DELAYS, name="verify", log=log)
    reports = check(settings, ids, level)
    rows = verify_rows(reports, log)
    try:  # Prometheus verify_ok per kind ([monitoring]); never fails the verification itself
        monitoring.publish_verify(settings, reports)
    except (BackupError, OSError) as e:
        log.warning("metrics not written: %s", e)
    raise_if_failed(rows, reports)
    return rows


# ----------------------------------------------------------------------------- restore


def execute_restore(settings: Settings, plan: restorer.RestorePlan) -> restorer.RestoreReport:
    """Restore a checked plan (never retried: a half-done restore is looked at by a person)."""
    live = settings.live_database()
    return restorer.execute(LocalRepository(settings.storage.local_dir), plan,
                            restorer.target_database_of(plan, live), settings=settings)


def restore_job(settings: Settings, plan: restorer.RestorePlan) -> dict[str, Any]:
    """The plain variant of ``flows.restore.restore_checked_flow``."""
    rep = execute_restore(settings, plan)
    row = rep.row()
    for n in rep.notes:
        log.warning(n)
    log.info("restored %s: %s", rep.set_id, row)
    return row
