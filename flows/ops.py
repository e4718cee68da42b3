"""Operations wiring shared by the flows: the backup concurrency slot, the progress artifact, the
catalog artifact and the Prometheus metrics.

Monitoring never fails a run: a metrics file that cannot be written or an artifact the API refuses
is a warning in the run's log (and in the metrics' absence, the staleness alert fires).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.concurrency.sync import concurrency

from erp_backup import monitoring
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.backup import BackupPlan, ScanResult
from erp_backup.config import Settings
from erp_backup.core.errors import LockError
from erp_backup.core.models import Manifest
from erp_backup.pipeline import Stages
from erp_backup.prefect_setup import BACKUP_LIMIT  # created by `erp-backup setup`
from erp_backup.tables import human
from erp_backup.verify import VerifyReport

PROGRESS_KEY = "erp-backup-progress"

T = TypeVar("T")


def _warn(what: str, e: BaseException) -> None:
    get_run_logger().warning("%s failed (the run goes on): %s: %s", what, type(e).__name__, e)


def quietly(what: str, call: Callable[[], T]) -> T | None:
    try:
        return call()
    except Exception as e:  # monitoring must not fail a backup
        _warn(what, e)
        return None


@contextmanager
def backup_slot(settings: Settings, job: str) -> Iterator[None]:
    """Hold the one slot of the ``erp-backup-backups`` global concurrency limit for the whole backup:
    a second backup (another deployment, the UI, the CLI against the server) waits here, Running,
    up to ``[backup] lock_wait_s``, then fails. Without the limit (not set up, ephemeral API) the
    repository lock alone serialises backups."""
    get_run_logger().info("%s backup: taking the %s concurrency slot (waits up to %.0f s while another backup "
                          "runs)", job, BACKUP_LIMIT, settings.backup.lock_wait_s)
    try:
        ctx = concurrency(BACKUP_LIMIT, occupy=1, timeout_seconds=settings.backup.lock_wait_s, strict=False,
                          lease_duration=60)  # a backup killed with -9 frees its slot within about a minute
        ctx.__enter__()
    except TimeoutError as e:
        raise LockError(f"another backup held the {BACKUP_LIMIT} slot for more than "
                        f"{settings.backup.lock_wait_s:.0f} s",
                        hint="see the running backup in the Prefect UI; raise [backup] lock_wait_s if backups "
                        "legitimately take longer") from e
    try:
        yield
    except BaseException as e:
        ctx.__exit__(type(e), e, e.__traceback__)
        raise
    else:
        ctx.__exit__(None, None, None)


def with_progress(stages: Stages, job: str, tick_s: float = 5.0) -> Stages:
    """The stages, each moving a progress artifact of this run forward when it finishes; during the
    dump and the archive (the long stages) a ticker moves it by the bytes written so far."""
    order = Stages.order()
    art: UUID | None = quietly("progress artifact", lambda: _new_progress(job))
    if art is None:
        return stages
    artifact_id: UUID = art
    seen: dict[str, Any] = {}  # the plan (prepare) and the scan, for the estimates

    def show(pct: float, text: str) -> None:
        quietly("progress update", lambda: update_progress_artifact(artifact_id, pct,
                                                                    description=f"{job} backup: {text}"))

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with _ticker(name, seen, order, show, tick_s):
                out = fn(*args, **kwargs)
            if name in ("prepare", "scan"):
                seen[name] = out
            pct = monitoring.progress_after(name, order)
            show(pct, f"{name} done ({pct:.0f} %)")
            return out

        call.__name__ = getattr(fn, "__name__", name)
        return call

    return dataclasses.replace(stages, **{n: wrap(n, getattr(stages, n)) for n in order})


@contextmanager
def _ticker(stage: str, seen: dict[str, Any], order: tuple[str, ...], show: Callable[[float, str], None],
            tick_s: float) -> Iterator[None]:
    plan: BackupPlan | None = seen.get("prepare")
    scanned: ScanResult | None = seen.get("scan")
    est = None
    if plan is not None and scanned is not None:
        est = monitoring.estimates(plan.parent, scanned.changes.changed_bytes).get(stage)
    if plan is None or est is None:
        yield
        return
    stop = threading.Event()
    partial: Path = plan.partial
    estimate: monitoring.StageEstimate = est

    def run() -> None:
        last = -1.0
        while not stop.wait(tick_s):
            pct = monitoring.progress_within(stage, order, estimate.fraction(partial))
            if pct > last:
                show(pct, f"{stage}: {human(monitoring.written_bytes(partial, estimate.prefix))} "
                     f"written ({pct:.0f} %)")
                last = pct

    t = threading.Thread(target=run, name=f"progress-{stage}", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=10)


def _new_progress(job: str) -> UUID:
    made = create_progress_artifact(0.0, key=PROGRESS_KEY, description=f"{job} backup: starting")
    return made if isinstance(made, UUID) else UUID(str(made))


def publish_catalog(settings: Settings) -> None:
    """The markdown catalog of sets under the fixed key ``erp-backup-catalog``."""
    def run() -> None:
        repo = LocalRepository(settings.storage.local_dir)
        remote: tuple[str, list[dict[str, object]]] | None
        try:
            remote = monitoring.remote_catalog(settings)
        except Exception as e:  # the local catalog is worth publishing without the remote half
            remote = ("(not listed)", [{"problem": f"{type(e).__name__}: {e}"}])
        text = monitoring.catalog_markdown(str(repo.root), repo.scan(), datetime.now(UTC), remote)
        create_markdown_artifact(markdown=text, key=monitoring.CATALOG_KEY,
                                 description="Backup sets: local and remote (updated by every backup, verify, "
                                 "prune and restore test)")

    quietly("catalog artifact", run)


def publish_backup_metrics(settings: Settings, m: Manifest, verified: bool) -> None:
    def run() -> None:
        if monitoring.publish_backup(settings, m, verified=verified):
            mon = settings.monitoring
            get_run_logger().info("metrics written (%s)", mon.textfile or mon.pushgateway)

    quietly("Prometheus metrics", run)


def publish_verify_metrics(settings: Settings, reports: list[VerifyReport]) -> None:
    if reports:
        quietly("Prometheus metrics", lambda: monitoring.publish_verify(settings, reports))


def publish_restore_test_metrics(settings: Settings, rto_s: float, rpo_s: float | None) -> None:
    """For the restore-test flow: RTO (and RPO) of the test just run."""
    problem = monitoring.publish_restore_test_quietly(settings, rto_s, rpo_s)
    if problem:
        get_run_logger().warning("%s", problem)

