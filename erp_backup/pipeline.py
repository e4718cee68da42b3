"""The backup stage order, written once.

``run_pipeline`` takes the stage callables: the Prefect flow passes its tasks
(``erp_backup.flows.backup``), tests and ``bench/`` pass ``PLAIN_STAGES``, the
plain functions of ``erp_backup.backup``. Both run exactly this order, under the
repository lock up to ``commit``; on any failure before the commit the partial
set is removed and the error propagates. After the commit, ``upload`` (off-site
copy, ``erp_backup.upload``) and ``prune`` (retention, ``erp_backup.prune``) run
outside the lock: the set is safe on disk by then. Encryption is not a stage of
its own: the artifact writers encrypt as they write (no second pass over the
bytes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from erp_backup import backup as stages
from erp_backup import monitoring
from erp_backup import prune as pruning
from erp_backup import upload as uploading
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.backup import (
    BackupPlan,
    BackupReport,
    BackupResult,
    CommittedSet,
    DumpResult,
    FilesResult,
    Preflight,
    ScanResult,
    SealedSet,
)
from erp_backup.config import Settings
from erp_backup.core.errors import ConfigError
from erp_backup.core.models import MONTHLY_TAG, BackupJob, BackupKind
from erp_backup.prune import PruneResult
from erp_backup.upload import UploadResult
from erp_backup.verify import VerifyReport

T = TypeVar("T")


@dataclass(frozen=True)
class Stages:
    """One callable per stage, in the order ``run_pipeline`` calls them."""

    preflight: Callable[[Settings, BackupKind, tuple[str, ...]], Preflight]
    prepare: Callable[[Settings, Preflight, datetime | None], BackupPlan]
    scan: Callable[[BackupPlan], ScanResult]
    dump: Callable[[BackupPlan], DumpResult | None]
    archive: Callable[[BackupPlan, ScanResult], FilesResult]
    seal: Callable[[BackupPlan, ScanResult, FilesResult, DumpResult | None, datetime | None], SealedSet]
    verify: Callable[[BackupPlan, SealedSet], VerifyReport]
    commit: Callable[[BackupPlan, SealedSet, VerifyReport], CommittedSet]
    upload: Callable[[Settings, CommittedSet], UploadResult | None]
    prune: Callable[[Settings, CommittedSet, UploadResult | None], PruneResult | None]
    report: Callable[[BackupPlan, CommittedSet, tuple[str, ...], dict[str, float]], BackupReport]

    @staticmethod
    def order() -> tuple[str, ...]:
        """The stage names in the order ``run_pipeline`` calls them (what a test compares against)."""
        return ("preflight", "prepare", "scan", "dump", "archive", "seal", "verify", "commit", "upload", "prune",
                "report")


def _prepare(settings: Settings, checked: Preflight, now: datetime | None) -> BackupPlan:
    return stages.prepare(settings, checked, now=now)


PLAIN_STAGES = Stages(
    preflight=stages.preflight,
    prepare=_prepare,
    scan=stages.scan_changes,
    dump=stages.dump_database,
    archive=stages.archive_files,
    seal=stages.seal,
    verify=stages.verify_sealed,
    commit=stages.commit,
    upload=uploading.upload_stage,
    prune=pruning.prune_stage,
    report=monitoring.plain_report,  # the engine's report + Prometheus metrics ([monitoring])
)


def run_pipeline(settings: Settings, job: BackupJob, run: Stages = PLAIN_STAGES, *, now: datetime | None = None,
                 checked: Preflight | None = None) -> BackupResult:
    """Every stage, in order, holding the repository lock. ``now`` fixes the set's times (tests);
    ``checked`` is a preflight the caller already ran (the CLI, before Prefect starts)."""
    timings: dict[str, float] = {}

    def timed(name: str, call: Callable[[], T]) -> T:
        t = time.monotonic()
        try:
            return call()
        finally:
            timings[name] = round(time.monotonic() - t, 3)

    if checked is not None and (checked.kind, checked.tags) != (job.kind, job.tags):
        made_for = BackupJob.MONTHLY if MONTHLY_TAG in checked.tags else BackupJob(checked.kind.value)
        raise ConfigError(f"the preflight handed to this {job.value} backup was made for a "
                          f"{made_for.value} backup", hint="leave the `checked` parameter out")
    if checked is None:
        checked = timed("preflight", lambda: run.preflight(settings, job.kind, job.tags))
    repo = LocalRepository(settings.storage.local_dir)
    with repo.lock(settings.backup.lock_wait_s, purpose=f"{job.value} backup"):
        plan = timed("prepare", lambda: run.prepare(settings, checked, now))
        try:
            scanned = timed("scan", lambda: run.scan(plan))
            dumped = timed("dump", lambda: run.dump(plan))
            files = timed("archive", lambda: run.archive(plan, scanned))
            finished = None if now is None else now + timedelta(seconds=time.monotonic() - plan.t0)
            sealed = timed("seal", lambda: run.seal(plan, scanned, files, dumped, finished))
            verified = timed("verify", lambda: run.verify(plan, sealed))
            committed = timed("commit", lambda: run.commit(plan, sealed, verified))
        except BaseException:
            repo.discard(plan.id)
            raise
    uploaded = timed("upload", lambda: run.upload(settings, committed))
    pruned = timed("prune", lambda: run.prune(settings, committed, uploaded))
    warnings = (plan.passed_over + (dumped.warnings if dumped else ()) + files.warnings
                + (uploaded.warnings if uploaded else ()) + (pruned.warnings if pruned else ()))
    reported = timed("report", lambda: run.report(plan, committed, warnings, dict(timings)))
    return BackupResult(committed.manifest, committed.path, committed.verify, reported, timings, plan)


def run_backup(settings: Settings, kind: BackupKind | BackupJob, tags: tuple[str, ...] = (), *,
               now: datetime | None = None) -> BackupResult:
    """The plain pipeline (no Prefect), for tests and benchmarks."""
    job = kind if isinstance(kind, BackupJob) else BackupJob.MONTHLY if MONTHLY_TAG in tags else BackupJob(kind.value)
    return run_pipeline(settings, job, PLAIN_STAGES, now=now)
