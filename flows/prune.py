"""The prune flow: retention of local and remote sets as its own job (the backup flows prune too,
in their ``prune`` stage).

Thin wiring around ``erp_backup.prune.run_prune``: one task (no retries: it deletes; a prune
that failed half-way is simply run again), a table artifact with every set, its action and
reason, and an ``erp-backup.prune.refused`` event when the safety rails stop a policy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from erp_backup import prune as pruning
from erp_backup.config import Settings
from erp_backup.core.errors import RetentionRefused
from erp_backup.flows.common import artifact_key, settings_for


@task(name="prune-sets", cache_policy=NO_CACHE)
def prune_sets_task(settings: Settings, where: str, dry_run: bool, now: datetime | None
                    ) -> list[pruning.PruneReport]:
    log = get_run_logger()

    def progress(event: str, name: str) -> None:
        log.info("%s: %s", event.replace("-", " "), name)

    return pruning.run_prune(settings, where, now=now, dry_run=dry_run, progress=progress)


def run_prune_flow(settings: Settings, where: str, dry_run: bool, now: datetime | None) -> list[dict[str, str]]:
    log = get_run_logger()
    try:
        reports = prune_sets_task(settings, where, dry_run, now)
    except RetentionRefused as e:
        emit_event(event="erp-backup.prune.refused", resource={"prefect.resource.id": "erp-backup.prune"},
                   payload={"reason": str(e)})
        raise
    rows = pruning.rows_of(reports)
    for rep in reports:
        verb = "would remove" if rep.dry_run else "removed"
        names = [r.id for r in rep.rows() if r.action == "remove"] if rep.dry_run else list(rep.removed)
        log.info("%s (%s): %s %d set(s)%s; %d kept", rep.where, rep.store, verb, len(names),
                 f" ({', '.join(names)})" if names else "", rep.plan.kept)
        for w in rep.warnings:
            log.warning(w)
    create_table_artifact(
        key=artifact_key("erp-backup-prune"), table=rows,
        description=("**Dry run**: nothing was removed. " if dry_run else "")
        + "Retention decisions: " + "; ".join(f"{r.where} {r.store}" for r in reports)
        + (f" at {now:%Y-%m-%d %H:%M} UTC" if now else ""))
    return rows


@flow(name="erp-backup-prune", log_prints=True)
def prune_flow(where: Literal["local", "remote", "all"] = "local", dry_run: bool = False,
               now: datetime | None = None, config: str | None = None) -> list[dict[str, str]]:
    """Apply the retention policy (``[retention]``) to the local sets, the remote ones or both;
    ``dry_run`` only reports; ``now`` (dry runs only) judges ages at another time."""
    return run_prune_flow(settings_for(config), where, dry_run, now)


@flow(name="erp-backup-prune", log_prints=True)
def prune_checked_flow(settings: Settings, where: str = "local", dry_run: bool = False,
                       now: datetime | None = None) -> list[dict[str, str]]:
    """The CLI's prune, with the settings it loaded (never deployed)."""
    return run_prune_flow(settings, where, dry_run, now)
