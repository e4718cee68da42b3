"""The upload stage: after a set is committed locally, send it off-site (issue #8).

``upload_stage`` runs after ``commit`` in ``erp_backup.pipeline.run_pipeline``. It returns ``None``
when no ``[remote]`` is configured.
"""

from __future__ import annotations

from dataclasses import dataclass

from erp_backup.backup import CommittedSet
from erp_backup.config import Settings


@dataclass(frozen=True)
class UploadResult:
    """What the upload stage did: the sets it made complete remotely (this one and any earlier
    set that an earlier run failed to send), the bytes sent, and warnings for the report."""

    remote: str
    uploaded: tuple[str, ...] = ()
    bytes_sent: int = 0
    warnings: tuple[str, ...] = ()


def upload_stage(settings: Settings, committed: CommittedSet) -> UploadResult | None:
    """Send ``committed`` (and earlier sets missing remotely, oldest first) to the remote store."""
    del settings, committed  # not wired yet: issue #8
    return None
