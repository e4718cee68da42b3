"""The markdown catalog artifact: every set, newest first, damaged ones with their reason, the remote
section from the store's listing; cells cannot break the table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from erp_backup.adapters.storage.local import RepoScan
from erp_backup.core.chain import Damaged
from erp_backup.core.models import BackupId, BackupKind, BackupStats, Manifest
from erp_backup.monitoring import catalog_markdown, markdown_table

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


def manifest(kind: BackupKind, at: datetime, parent: BackupId | None = None, tags: tuple[str, ...] = ()) -> Manifest:
    return Manifest(id=BackupId.make(at, kind, tags), kind=kind, started_at=at, finished_at=at + timedelta(seconds=9),
                    host="h", tool_version="t", source_root="/srv/erp", parent=parent, tags=tags,
                    stats=BackupStats(files_scanned=10, files_changed=3, bytes_out=2048))


def test_catalog_lists_sets_newest_first_with_status() -> None:
    full = manifest(BackupKind.FULL, T0)
    incr = manifest(BackupKind.INCREMENTAL, T0 + timedelta(hours=1), parent=full.id)
    bad = Damaged(BackupId.make(T0 + timedelta(hours=2), BackupKind.INCREMENTAL), "manifest | does not match")
    text = catalog_markdown("/var/backups/erp", RepoScan((full, incr), (bad,)), T0 + timedelta(hours=3))
    lines = text.splitlines()
    rows = [ln for ln in lines if ln.startswith("| 2027")]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == [incr.id.value, full.id.value, bad.id.value]
    assert "2 committed set(s)" in text and "1 damaged" in text
    assert "DAMAGED: manifest \\| does not match" in text  # a | in a reason stays inside its cell
    assert all(r.count(" | ") == rows[0].count(" | ") for r in rows)
    assert "No remote copy configured" in text


def test_catalog_remote_section() -> None:
    text = catalog_markdown("/b", RepoScan((), ()), T0, ("s3://bucket/erp", [
        {"set": "20270301T020000Z-full", "kind": "full", "objects": 4, "size": "2.0 KiB", "status": "complete"}]))
    assert "## Remote: `s3://bucket/erp`" in text
    assert "| 20270301T020000Z-full | full | 4 | 2.0 KiB | complete |" in text
    assert markdown_table([]) == "_none_\n"
