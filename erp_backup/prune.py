"""The prune stage: apply the retention policy after every backup (issue #9).

``prune_stage`` runs after ``upload`` in ``erp_backup.pipeline.run_pipeline``. It returns ``None``
when retention is not applied (not wired yet).
"""

from __future__ import annotations

from dataclasses import dataclass

from erp_backup.backup import CommittedSet
from erp_backup.config import Settings
from erp_backup.upload import UploadResult


@dataclass(frozen=True)
class PruneResult:
    """What the prune stage decided and did: sets removed (local and remote) and warnings."""

    removed_local: tuple[str, ...] = ()
    removed_remote: tuple[str, ...] = ()
    kept: int = 0
    warnings: tuple[str, ...] = ()


def prune_stage(settings: Settings, committed: CommittedSet, uploaded: UploadResult | None) -> PruneResult | None:
    """Apply the local (and, with a remote, the remote) retention policy."""
    del settings, committed, uploaded  # not wired yet: issue #9
    return None
