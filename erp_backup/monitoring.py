"""What the operator's console shows, without Prefect: the catalog of sets as markdown, the metrics
a run changes, the stage weights of a backup's progress bar."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from erp_backup import backup as stages
from erp_backup.adapters import metrics
from erp_backup.adapters.storage.base import RemoteStore
from erp_backup.adapters.storage.local import LocalRepository, RepoScan
from erp_backup.backup import BackupPlan, BackupReport, CommittedSet
from erp_backup.config import Settings
from erp_backup.core.errors import BackupError
from erp_backup.core.models import BackupId, Manifest
from erp_backup.tables import human
from erp_backup.verify import VerifyReport

CATALOG_KEY = "erp-backup-catalog"

# share of a backup's wall time each stage takes, roughly (archive and dump dominate): the progress
# artifact moves by these after each stage
STAGE_WEIGHTS: Mapping[str, float] = {
    "preflight": 2, "prepare": 2, "scan": 8, "dump": 25, "archive": 40, "seal": 2, "verify": 15,
    "commit": 1, "upload": 3, "prune": 1, "report": 1,
}


def progress_after(stage: str, order: Sequence[str]) -> float:
    """Percent done once ``stage`` (of ``order``) has finished."""
    total = sum(STAGE_WEIGHTS.get(s, 1) for s in order)
    done = sum(STAGE_WEIGHTS.get(s, 1) for s in order[: order.index(stage) + 1])
    return round(100.0 * done / total, 1)


def progress_within(stage: str, order: Sequence[str], fraction: float) -> float:
    """Percent done while ``stage`` is ``fraction`` (0..1) through: inside the stage's share."""
    before = progress_after(order[order.index(stage) - 1], order) if order.index(stage) else 0.0
    return round(before + (progress_after(stage, order) - before) * min(max(fraction, 0.0), 0.99), 1)


def written_bytes(partial: Path, prefix: str) -> int:
    """Bytes written so far into the artifacts of a ``.partial`` set whose names start with ``prefix``."""
    total = 0
    try:
        with os.scandir(partial) as it:
            for e in it:
                if e.name.startswith(prefix) and e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    except OSError:
        return 0
    return total


@dataclass(frozen=True)
class StageEstimate:
    """How far the dump or the archive of a running backup is: bytes written into its artifact
    against what the parent's set suggests (its dump's size; the changed bytes at its compression
    ratio). An estimate for the progress bar, never more than 99 % of the stage."""

    prefix: str
    expected: int

    def fraction(self, partial: Path) -> float:
        return written_bytes(partial, self.prefix) / self.expected if self.expected > 0 else 0.0


def estimates(parent: Manifest | None, changed_bytes: int) -> dict[str, StageEstimate]:
    out: dict[str, StageEstimate] = {}
    if parent is not None:
        db = parent.artifact("database")
        if db is not None and db.size > 0:
            out["dump"] = StageEstimate("db.", db.size)
    ratio = parent.stats.bytes_out / parent.stats.bytes_in if parent and parent.stats.bytes_in else 0.5
    if changed_bytes > 0:
        out["archive"] = StageEstimate("files.", max(1, int(changed_bytes * min(max(ratio, 0.01), 1.0))))
    return out


def set_label(m: Manifest) -> str:
    """The kind label used by metrics and the catalog (a monthly archive is its own)."""
    return "monthly" if m.is_monthly else m.kind.value


def _cell(v: object) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, object]]) -> str:
    if not rows:
        return "_none_\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def catalog_markdown(local_root: str, found: RepoScan, now: datetime,
                     remote: tuple[str, Sequence[Mapping[str, object]]] | None = None) -> str:
    """The catalog of sets (newest first): local, and remote when given as (where, rows)."""
    rows: list[dict[str, object]] = []
    for m in reversed(found.committed):
        rows.append({"set": m.id.value, "kind": set_label(m), "parent": m.parent.value if m.parent else "-",
                     "finished (UTC)": m.finished_at.strftime("%Y-%m-%d %H:%M:%S"), "size": human(m.size_bytes),
                     "files": m.stats.files_scanned, "changed": m.stats.files_changed, "status": "committed"})
    for d in reversed(found.damaged):
        rows.append({"set": d.id.value, "kind": d.id.kind.value, "parent": "-", "finished (UTC)": "-", "size": "-",
                     "files": "-", "changed": "-", "status": f"DAMAGED: {d.reason}"})
    total = sum(m.size_bytes for m in found.committed)
    text = [f"# erp-backup catalog\n\nUpdated {now.strftime('%Y-%m-%d %H:%M:%S')} UTC.\n",
            f"## Local: `{local_root}`\n\n{len(found.committed)} committed set(s), {human(total)}"
            + (f", {len(found.damaged)} damaged" if found.damaged else "") + ".\n", markdown_table(rows)]
    if remote is None:
        text.append("## Remote\n\nNo remote copy configured (or not listed by this run).\n")
    else:
        where, rrows = remote
        text.append(f"## Remote: `{where}`\n\n{len(rrows)} set(s).\n")
        text.append(markdown_table(rrows))
    return "\n".join(text)


def remote_catalog(settings: Settings, store: RemoteStore | None = None
                   ) -> tuple[str, list[dict[str, object]]] | None:
    """The sets of the ``[remote]`` store (``store``, default the configured one) as its listing shows
    them (no object is read: complete sets have their manifest, incomplete ones not yet); None
    without ``[remote]``."""
    if settings.remote is None:
        return None
    from erp_backup import remote_sets
    from erp_backup.remote_store import open_store

    store = store or open_store(settings)
    listing = remote_sets.scan(store)
    done = set(listing.complete)
    rows: list[dict[str, object]] = [
        {"set": sid, "kind": BackupId(sid).kind.value, "objects": len(objs),
         "size": human(sum(objs.values())),
         "status": "complete" if BackupId(sid) in done else "incomplete (upload not finished)"}
        for sid, objs in sorted(listing.objects.items(), reverse=True)]
    return store.describe(), rows


def backup_metrics(m: Manifest, history: Iterable[Manifest], *, verified: bool) -> metrics.Update:
    """Samples a committed set changes; ``history``: the committed sets (the new one may be among them)."""
    before = [h.finished_at for h in history if h.id != m.id and h.finished_at <= m.finished_at]
    return metrics.backup_update(set_label(m), m.finished_at.timestamp(), m.size_bytes, m.stats.duration_s,
                                 max(before).timestamp() if before else None, verified=verified)


def publish_metrics(settings: Settings, update: metrics.Update) -> bool:
    """Write/push the metrics when ``[monitoring]`` asks for them; False when nothing is configured."""
    mon = settings.monitoring
    if mon.textfile is None and not mon.pushgateway:
        return False
    metrics.publish(mon.textfile, mon.pushgateway, mon.push_job, update)
    return True


def publish_backup(settings: Settings, m: Manifest, *, verified: bool) -> bool:
    """The metrics of a committed set (the newest sets' history read from the repository)."""
    history = LocalRepository(settings.storage.local_dir).headers()
    return publish_metrics(settings, backup_metrics(m, history, verified=verified))


def plain_report(plan: BackupPlan, committed: CommittedSet, warnings: tuple[str, ...],
                 timings: dict[str, float]) -> BackupReport:
    """The plain pipeline's report stage (no Prefect): the engine's report, then the metrics; a metrics
    failure becomes a warning of the report, never a failed backup (the set is committed by now)."""
    rep = stages.report(plan, committed, warnings, timings)
    try:
        publish_backup(plan.settings, committed.manifest, verified=committed.verify.level != "none")
    except (BackupError, OSError) as e:
        return BackupReport(rep.row, rep.size, (*rep.warnings, f"metrics not written: {e}"), rep.timings)
    return rep


def publish_verify(settings: Settings, reports: Iterable[VerifyReport]) -> bool:
    """``erp_backup_verify_ok`` per kind from a verify run's reports (a damaged set counts under the
    kind its name says)."""
    kinds = {m.id.value: set_label(m) for m in LocalRepository(settings.storage.local_dir).headers()}
    return publish_metrics(settings, metrics.verify_update(
        [(kinds.get(r.set_id) or BackupId(r.set_id).kind.value, r.ok) for r in reports]))


def publish_restore_test_quietly(settings: Settings, rto_s: float, rpo_s: float | None) -> str | None:
    """The restore test's RTO/RPO gauges; the problem as text instead of an error (a restore test's
    verdict must not depend on the metrics file)."""
    try:
        publish_metrics(settings, metrics.restore_test_update(rto_s, rpo_s))
    except (BackupError, OSError) as e:
        return f"metrics not written: {e}"
    return None
