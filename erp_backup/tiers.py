"""Data tiers (strategy §8.2–8.3): what must come back fast, and how much of it may be lost.

Two tiers, each with its own recovery targets:

- **critical** — the database, always, and the project paths listed in ``[tiers] critical_paths``
  (e.g. ``config``, ``media/contracts``): RTO 4 h, RPO 1 h by default (the ``[restore_test]``
  ``rto_target`` / ``rpo_target``, which stay its defaults);
- **non_critical** — every other project file: RTO 24 h, RPO 24 h.

Every backup set carries both tiers (the database dump and the files of every include), so the RPO
of a tier is the age of the newest restorable set that holds its data, judged against the tier's own
target. The restore test restores everything in one pass: the critical tier's RTO is the database
stage plus the critical paths' share (by bytes) of the files stage, plus selecting the set and the
smoke check; the non-critical tier's is the whole restore. ``status``, ``status --nagios``,
``restore-test`` and ``setup``'s late windows use these targets.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from erp_backup.core.errors import ConfigError
from erp_backup.recovery_config import OptionalDuration

if TYPE_CHECKING:
    from erp_backup.config import Settings

CRITICAL, NON_CRITICAL = "critical", "non_critical"


class TierTargets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rto: OptionalDuration = None  # how long a restore of the tier may take
    rpo: OptionalDuration = None  # how old its newest restorable copy may be


def _clean_path(p: str) -> str:
    if not isinstance(p, str) or not p.strip() or "\x00" in p:
        raise ValueError("a critical path is a non-empty path relative to the project root, e.g. \"config\"")
    if p.startswith("/"):
        raise ValueError(f"critical path {p!r} is absolute: give it relative to [project] root")
    norm = posixpath.normpath(p.strip())
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"critical path {p!r} leaves the project root")
    return norm


class TiersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # project paths (relative to [project] root; a directory covers everything under it) in the
    # critical tier; the database is always critical
    critical_paths: list[str] = Field(default_factory=list)
    critical: TierTargets = Field(default_factory=TierTargets)  # default: [restore_test] rto/rpo_target
    non_critical: TierTargets = Field(default_factory=lambda: TierTargets(rto=24 * 3600.0, rpo=24 * 3600.0))

    @field_validator("critical_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for p in v:
            n = _clean_path(p)
            if n not in out:
                out.append(n)
        return out


@dataclass(frozen=True)
class Tier:
    name: str  # critical | non_critical
    rto_s: float
    rpo_s: float
    database: bool  # the database belongs to it
    paths: tuple[str, ...]  # critical: its paths; non_critical: () = every other path

    @property
    def covers(self) -> str:
        if self.name == CRITICAL:
            return "database" + (" + " + ", ".join(self.paths) if self.paths else "")
        return "all project files (a full restore)"


def is_under(path: str, roots: Iterable[str]) -> bool:
    """``path`` (relative, as in a set's index) is one of ``roots`` or inside one ("." covers all)."""
    p = posixpath.normpath(path.lstrip("/"))
    for r in roots:
        if r == "." or p == r or p.startswith(r.rstrip("/") + "/"):
            return True
    return False


def of(settings: Settings) -> tuple[Tier, Tier]:
    """(critical, non_critical) with their targets; a critical path that no include covers is a
    ConfigError (it would never be backed up)."""
    cfg: TiersConfig = getattr(settings, "tiers", None) or TiersConfig()
    includes = [posixpath.normpath(i.strip("/") or ".") for i in settings.project.include]
    for p in cfg.critical_paths:
        if not is_under(p, includes):
            raise ConfigError(f"[tiers] critical path {p!r} is not under any [project] include "
                              f"({', '.join(includes)}): it is never backed up",
                              hint="add it (or a directory above it) to [project] include, or drop it")
    rt = settings.restore_test
    crit = Tier(CRITICAL, cfg.critical.rto or rt.rto_target, cfg.critical.rpo or rt.rpo_target, True,
                tuple(cfg.critical_paths))
    non = Tier(NON_CRITICAL, cfg.non_critical.rto or 24 * 3600.0, cfg.non_critical.rpo or 24 * 3600.0, False, ())
    return crit, non


def critical_share(files: Iterable[tuple[str, int]], paths: Iterable[str]) -> tuple[int, int]:
    """(bytes under the critical ``paths``, all bytes) of ``files`` ``(path, size)``."""
    roots = list(paths)
    crit = total = 0
    for path, size in files:
        total += size
        if roots and is_under(path, roots):
            crit += size
    return crit, total


def late_window(rpo_s: float) -> int:
    """The late-alert window of a tier: its RPO plus a grace (a twelfth, at least 15 min) so a
    backup running a little long does not page anyone: 1 h -> 75 min, 24 h -> 26 h."""
    return int(rpo_s + max(900.0, rpo_s / 12))


def setup_windows(config: str | None) -> tuple[int, int] | None:
    """``setup``'s default late windows (incremental, full) from the tiers of the config: the critical
    tier's RPO for the incrementals (they carry the database), the non-critical tier's for the fulls.
    None when no config is given and the default one does not exist (a Prefect host without one)."""
    import os
    from pathlib import Path

    from erp_backup.config import DEFAULT_CONFIG, load_settings

    if config is None and "ERP_BACKUP_CONFIG" not in os.environ and not Path(DEFAULT_CONFIG).exists():
        return None
    crit, non = of(load_settings(config))
    return late_window(crit.rpo_s), late_window(non.rpo_s)


def rpo_doc(tier: Tier, age_s: float | None, set_id: str | None) -> dict[str, Any]:
    """One tier's RPO for ``status``: the age of its newest restorable copy against its target."""
    return {"covers": tier.covers, "seconds": age_s, "target_seconds": tier.rpo_s, "rto_target_seconds": tier.rto_s,
            "set": set_id, "ok": age_s is not None and age_s <= tier.rpo_s}


CONFIG_TEMPLATE = """
[tiers]
# Data tiers (strategy 8.2-8.3), each judged against its own targets by status, status --nagios,
# restore-test and setup's late alerts. The database is always critical.
critical_paths = []       # project paths (relative to root) in the critical tier, e.g. ["config", "media/contracts"]
# [tiers.critical]        # default: [restore_test] rto_target / rpo_target (4h / 1h)
# rto = "4h"
# rpo = "1h"
# [tiers.non_critical]    # every other project file
# rto = "24h"
# rpo = "24h"
"""
