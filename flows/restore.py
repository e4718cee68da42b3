"""Restore and verify flows.

Restore is never retried automatically: a half-done restore must be looked at
by a person, not repeated blindly.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from erp_backup import restore as restorer
from erp_backup import verify as verifier
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.errors import BackupError, ConfigError
from erp_backup.core.models import BackupId
from flows.common import artifact_key, retry_transient, settings_for


@task(name="restore-set", cache_policy=NO_CACHE)
def restore_task(repo: LocalRepository, target_dir: str | None, backup_id: str | None, at: datetime | None,
                 target_db: DatabaseUrl | None, live_db: DatabaseUrl | None, force: bool, yes: bool,
                 jobs: int) -> restorer.RestoreReport:
    return restorer.restore(repo, target_dir=Path(target_dir) if target_dir else None, backup_id=backup_id,
                            at=at, target_db=target_db, live_db=live_db, force=force, yes=yes, jobs=jobs)


def resolve_target_database(target: str | None, live: DatabaseUrl | None) -> DatabaseUrl | None:
    """The restore target. Passwords never travel in flow parameters or argv: a target on the
    live database's server reuses its credentials; otherwise $ERP_BACKUP_TARGET_DB_PASSWORD."""
    if not target:
        return None
    url = parse_database_url(target, key="target_database")
    if url.password:
        raise ConfigError("target_database contains a password",
                          hint="leave it out: it is taken from the configured database (same server and "
                          "user) or from $ERP_BACKUP_TARGET_DB_PASSWORD")
    pw = os.environ.get("ERP_BACKUP_TARGET_DB_PASSWORD", "")
    if not pw and live is not None and live.engine == url.engine and live.user == (url.user or live.user) \
            and live.with_name(url.name).same_database(url):
        pw = live.password
    if url.engine != "sqlite" and not url.user and live is not None:
        url = DatabaseUrl(url.engine, url.name, url.host, url.port, live.user, url.password, url.options)
    return DatabaseUrl(url.engine, url.name, url.host, url.port, url.user, pw, url.options)


@flow(name="erp-backup-restore", log_prints=True)
def restore_flow(target_dir: str | None = None, backup_id: str | None = None, at: datetime | None = None,
                 target_database: str | None = None, force: bool = False, yes: bool = False, jobs: int = 1,
                 config: str | None = None) -> dict[str, Any]:
    """Restore a backup set (``backup_id``), the newest set finished at or before ``at``,
    or the newest set, into ``target_dir`` and/or ``target_database``."""
    settings = settings_for(config)
    log = get_run_logger()
    if not target_dir and not target_database:
        raise ConfigError("nothing to restore into", hint="give target_dir and/or target_database")
    try:
        live = settings.database_url()
    except BackupError:
        live = None
    target = resolve_target_database(target_database, live)
    repo = LocalRepository(settings.storage.local_dir)
    rep = restore_task(repo, target_dir, backup_id, at, target, live, force, yes, jobs)
    row = {
        "set": rep.set_id, "sets read": ", ".join(rep.sets_read), "target": rep.target_dir,
        "files": rep.files, "dirs": rep.dirs, "symlinks": rep.symlinks, "bytes": rep.bytes,
        "database": rep.database or "-", "tables": len(rep.db_tables), "duration s": round(rep.duration_s, 2),
    }
    for n in rep.notes:
        log.warning(n)
    create_table_artifact(key=artifact_key("erp-backup-restore"), table=[row],
                          description=f"Restore of **{rep.set_id}** (live database: "
                          f"{live.redacted() if live else 'none configured'})")
    log.info("restored %s: %s", rep.set_id, row)
    return row


@task(name="verify-sets", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def verify_sets_task(repo: LocalRepository, ids: list[str], level: str, key_files: list[str]
                     ) -> list[verifier.VerifyReport]:
    return [verifier.verify_committed(repo, i, level=level, key_files=key_files) for i in ids]


@flow(name="erp-backup-verify", log_prints=True)
def verify_flow(backup_ids: list[str] | None = None, level: str = "full", config: str | None = None
                ) -> list[dict[str, Any]]:
    """Verify committed sets (all of them by default): checksums, archives, key files, dumps."""
    settings = settings_for(config)
    log = get_run_logger()
    repo = LocalRepository(settings.storage.local_dir)
    ids = [BackupId(i).value for i in backup_ids] if backup_ids else [i.value for i in repo.list_ids()]
    reports = verify_sets_task(repo, ids, level, settings.project.key_files)
    rows = []
    for r in reports:
        rows.append({"set": r.set_id, "level": r.level, "result": "passed" if r.ok else "FAILED",
                     "problems": "; ".join(r.problems) or "-", "bytes checked": r.bytes_checked,
                     "files checked": r.files_checked})
        if r.ok:
            log.info("%s: verification passed", r.set_id)
        else:
            for p in r.problems:
                log.error("%s", p)
    if rows:
        create_table_artifact(key=artifact_key("erp-backup-verify"), table=rows,
                              description=f"Verification of {len(rows)} set(s) in `{repo.root}`")
    bad = [r for r in reports if not r.ok]
    if bad:
        bad[0].raise_if_bad()
    return rows
