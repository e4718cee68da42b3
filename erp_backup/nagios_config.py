"""The ``[nagios]`` config section: thresholds of ``erp-backup status --nagios``, as ``[warning, critical]``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from erp_backup.nagios import Thresholds
from erp_backup.recovery_config import Duration


class NagiosConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # newest set of each kind older than this: [warning, critical]
    full_age: tuple[Duration, Duration] = (26 * 3600.0, 50 * 3600.0)
    incremental_age: tuple[Duration, Duration] = (75 * 60.0, 3 * 3600.0)
    differential_age: tuple[Duration, Duration] = (8 * 86400.0, 15 * 86400.0)
    monthly_age: tuple[Duration, Duration] = (32 * 86400.0, 62 * 86400.0)
    rpo: tuple[Duration, Duration] = (3600.0, 2 * 3600.0)  # age of the newest restorable set (critical tier)
    non_critical_rpo: tuple[Duration, Duration] = (24 * 3600.0, 48 * 3600.0)  # the same for the non-critical tier
    restore_test_age: tuple[Duration, Duration] = (35 * 86400.0, 62 * 86400.0)

    @field_validator("*")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError("the warning threshold must not be above the critical one: [warning, critical]")
        return v

    def thresholds(self, tier_rpo: tuple[float, float] | None = None) -> Thresholds:
        """``tier_rpo``: the tiers' RPO targets (critical, non-critical); an RPO threshold not set in
        ``[nagios]`` is then [the tier's target, twice it] (the defaults for the default tiers)."""
        rpo, non = self.rpo, self.non_critical_rpo
        if tier_rpo is not None:
            if "rpo" not in self.model_fields_set:
                rpo = (tier_rpo[0], 2 * tier_rpo[0])
            if "non_critical_rpo" not in self.model_fields_set:
                non = (tier_rpo[1], 2 * tier_rpo[1])
        return Thresholds(age={"full": self.full_age, "incremental": self.incremental_age,
                               "differential": self.differential_age, "monthly": self.monthly_age},
                          rpo=rpo, restore_test_age=self.restore_test_age, non_critical_rpo=non)


CONFIG_TEMPLATE = """
[nagios]
# `erp-backup status --nagios` thresholds, [warning, critical]
full_age = ["26h", "50h"]          # newest full (daily)
incremental_age = ["75m", "3h"]    # newest incremental (hourly)
differential_age = ["8d", "15d"]   # newest differential (weekly)
monthly_age = ["32d", "62d"]       # newest monthly archive
rpo = ["1h", "2h"]                 # age of the newest restorable set (critical tier: the database);
                                   # unset: [the critical tier's RPO, twice it]
non_critical_rpo = ["24h", "48h"]  # the same for the non-critical tier ([tiers]); unset: from its RPO
restore_test_age = ["35d", "62d"]  # last restore test (monthly)
"""
