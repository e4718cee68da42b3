"""What a CLI run prints when a job fails on purpose: its table (if any), then one error line.

Prefect logs a failing flow or task three times over — "Encountered exception during execution"
or "Task run failed with exception" with a traceback, then "Finished in state Failed('…the same
message…')" — and the CLI prints the error line itself (``cli.main``). For our own errors
(``BackupError``: expected, already actionable) the CLI drops the traceback records and shortens
the final state lines; records logged with ``extra=DETAIL`` (e.g. each problem ``verify`` found,
which its table shows) stay out of the terminal too. An unexpected exception keeps its traceback.
Flow runs on a worker are not affected: only the CLI installs this. The plain jobs (``jobs.py``,
no Prefect server) raise straight to the CLI; only their DETAIL lines need hiding.
"""

from __future__ import annotations

import logging

from erp_backup.core.errors import BackupError

DETAIL = {"erp_backup_detail": True}  # extra= of a log record the CLI's table or error line repeats
_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "erp_backup.run")  # the flows'; the plain jobs' (jobs.py)
_FAILED = "Finished in state Failed("


class _ExpectedErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BackupError) or getattr(record, "erp_backup_detail", False):
            return False
        if exc is not None and _api_gone(exc):  # the server went away: the CLI's error line says so
            return False
        if isinstance(record.msg, str) and record.msg.startswith(_FAILED):
            record.msg, record.args = "Finished in state Failed (the error is below)", ()
        return True


def _api_gone(exc: BaseException) -> bool:
    from erp_backup.runner import api_gone

    return api_gone(exc)


_FILTER = _ExpectedErrors()


def install() -> None:
    """Quiet expected failures in this process's Prefect run loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
