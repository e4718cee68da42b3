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
    rpo: tuple[Duration, Duration] = (3600.0, 2 * 3600.0)  # age of the newest restorable set
    restore_test_age: tuple[Duration, Duration] = (35 * 86400.0, 62 * 86400.0)

    @field_validator("*")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError("the warning threshold must not be above the critical one: [warning, critical]")
        return v

    def thresholds(self) -> Thresholds:
        return Thresholds(age={"full": self.full_age, "incremental": self.incremental_age,
                               "differential": self.differential_age, "monthly": self.monthly_age},
                          rpo=self.rpo, restore_test_age=self.restore_test_age)


CONFIG_TEMPLATE = """
[nagios]
# `erp-backup status --nagios` thresholds, [warning, critical]
full_age = ["26h", "50h"]          # newest full (daily)
incremental_age = ["75m", "3h"]    # newest incremental (hourly)
differential_age = ["8d", "15d"]   # newest differential (weekly)
monthly_age = ["32d", "62d"]       # newest monthly archive
rpo = ["1h", "2h"]                 # age of the newest restorable set
restore_test_age = ["35d", "62d"]  # last restore test (monthly)
"""
