"""Which errors a retry may fix, and retries for the plain (Prefect-free) stages.

One split for both ways a job runs: the Prefect tasks' ``retry_condition_fn``
(``flows/common.py:retry_transient``) and ``retrying`` below, which the in-process CLI
(``erp_backup.runner``) wraps around the stages that are safe to repeat, with the same
``[backup] task_retries`` / ``retry_delay_s`` as the tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import wraps
from typing import ParamSpec, TypeVar

from erp_backup.core.errors import (
    ChainError,
    ConfigError,
    IntegrityError,
    LockError,
    RestoreError,
    SourceError,
    ToolMissingError,
)

# errors that a retry cannot fix: fail at once with the operator's message
PERMANENT: tuple[type[BaseException], ...] = (ConfigError, ChainError, SourceError, ToolMissingError,
                                              IntegrityError, RestoreError, LockError)

P = ParamSpec("P")
R = TypeVar("R")


def is_transient(exc: BaseException) -> bool:
    """True for an error a second attempt may fix (network, server restart, lock timeouts);
    never for interrupts (KeyboardInterrupt, SystemExit) or the permanent errors above."""
    return isinstance(exc, Exception) and not isinstance(exc, PERMANENT)


def delay_for(attempt: int, delays: Sequence[float]) -> float:
    """Seconds before retry number ``attempt`` (0-based): Prefect's rule, the last delay repeats."""
    if not delays:
        return 0.0
    return float(delays[min(attempt, len(delays) - 1)])


def retrying(fn: Callable[P, R], *, retries: int, delays: Sequence[float], name: str,
             log: logging.Logger, sleep: Callable[[float], None] = time.sleep) -> Callable[P, R]:
    """``fn``, called again up to ``retries`` times after a transient error, ``delays`` apart."""

    @wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if attempt >= retries or not is_transient(e):
                    raise
                wait = delay_for(attempt, delays)
                attempt += 1
                log.warning("%s failed (%s: %s); retry %d of %d in %g s", name, type(e).__name__, e,
                            attempt, retries, wait)
                sleep(wait)

    return call
