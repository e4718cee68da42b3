"""The ``[restore]`` and ``[restore_test]`` config sections (issue #10), included by ``config.Settings``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from erp_backup.core.objectives import parse_duration


def _duration(v: object) -> float:
    try:
        return parse_duration(v)
    except Exception as e:  # pydantic turns a ValueError into its own error line
        raise ValueError(getattr(e, "message", str(e))) from None


def _optional_duration(v: object) -> float | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "off")):
        return None
    return _duration(v)


Duration = Annotated[float, BeforeValidator(_duration)]
OptionalDuration = Annotated[float | None, BeforeValidator(_optional_duration)]


def _check_commands(v: list[list[str]]) -> list[list[str]]:
    for argv in v:
        if not argv or not argv[0].strip():
            raise ValueError('every command is a non-empty list of arguments, e.g. ["systemctl", "stop", "web"]')
        if any("\x00" in a for a in argv):
            raise ValueError("an argument contains a NUL byte")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestoreConfig(_Section):
    # argument lists run without a shell, in this order, each with command_timeout
    stop: list[list[str]] = Field(default_factory=list)
    start: list[list[str]] = Field(default_factory=list)
    smoke: list[list[str]] = Field(default_factory=list)
    command_timeout: Duration = 300.0
    # a restore without --backup/--at refuses a newest valid set older than this (--allow-old)
    max_age: OptionalDuration = 24 * 3600.0
    # how "latest valid" is verified: quick (checksums of everything the restore reads) or full
    verify: Literal["quick", "full"] = "quick"

    _stop = field_validator("stop", "start", "smoke")(_check_commands)


class RestoreTestConfig(_Section):
    # a database URL without password for the scratch database (dropped afterwards); default:
    # <name>_restore_test_<time> on the configured server (SQLite: a file in the scratch directory)
    database_url: str | None = None
    rto_target: Duration = 4 * 3600.0
    rpo_target: Duration = 3600.0
    rpo_window: Duration = 24 * 3600.0
    # the smoke check of the restore test (default: [restore] smoke), run in the restored tree
    # with DATABASE_URL pointing at the scratch database
    smoke: list[list[str]] | None = None

    _smoke = field_validator("smoke")(lambda v: v if v is None else _check_commands(v))


CONFIG_TEMPLATE = """
[restore]
# Emergency restore in place (`erp-backup restore --in-place --yes`): argument lists, no shell.
# stop = [["systemctl", "stop", "gunicorn"], ["systemctl", "stop", "celery"]]
# start = [["systemctl", "start", "celery"], ["systemctl", "start", "gunicorn"]]
# smoke = [["/srv/django_erp/venv/bin/python", "manage.py", "check", "--database", "default"]]
command_timeout = "5m"    # each stop/start/smoke command
max_age = "24h"           # restore without --backup/--at refuses an older newest valid set (--allow-old)
verify = "quick"          # how the newest valid set is checked: "quick" (checksums) or "full"

[restore_test]
# database_url = "postgresql://erp@test-db:5432/erp_restore_test"   # default: <name>_restore_test_<time>
rto_target = "4h"
rpo_target = "1h"
rpo_window = "24h"        # the largest gap between restorable sets is looked for in this window
"""
