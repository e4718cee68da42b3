"""The CLI keeps Prefect from repeating an expected failure: no traceback, no repeated list."""

from __future__ import annotations

import logging

import pytest

from erp_backup import cli_quiet
from erp_backup.core.errors import IntegrityError


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("name", ["prefect.flow_runs", "prefect.task_runs"])
def test_expected_errors_lose_their_traceback_and_repeats(name: str) -> None:
    logger = logging.getLogger(name)
    keep = Keep()
    logger.addHandler(keep)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        cli_quiet.install()
        cli_quiet.install()  # idempotent
        assert logger.filters.count(cli_quiet._FILTER) == 1
        for exc in (IntegrityError("set X is corrupt", hint="restore another"), ValueError("a bug")):
            try:
                raise exc
            except Exception:
                logger.exception("Encountered exception during execution: %r", exc)
        logger.error("%s", "X/files.tar.zst: corrupt", extra=cli_quiet.DETAIL)
        logger.info("Finished in state Failed('Flow run encountered an exception: IntegrityError: …')")
        logger.info("Finished in state Completed()")
        shown = [(r.getMessage(), bool(r.exc_info)) for r in keep.records]
        assert shown == [("Encountered exception during execution: ValueError('a bug')", True),
                         ("Finished in state Failed (the error is below)", False),
                         ("Finished in state Completed()", False)]
    finally:
        logger.setLevel(level)
        logger.removeHandler(keep)
        logger.removeFilter(cli_quiet._FILTER)
