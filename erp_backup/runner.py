"""How the CLI runs a job that changes something (backup, verify, restore, upload, prune, restore-test).

Every such CLI command hands ``run`` two callables with the same keyword arguments:

- ``flow``: the Prefect flow (so the run shows in the UI, with its tasks, logs and artifacts);
- ``plain``: the same work without Prefect (the plain stages of ``erp_backup``), or ``None`` where
  no plain variant exists yet.

Today ``run`` always runs the flow. Issue #12 decides when the plain variant runs instead (e.g. no
``PREFECT_API_URL``: no 20 s temporary server around half a second of work); commands need not
change when it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


def run(flow: Callable[..., R], plain: Callable[..., R] | None = None, /, **kwargs: Any) -> R:
    """Run one CLI job with ``kwargs``: the flow, or its plain variant (see the module doc)."""
    del plain  # not chosen yet: see the module doc
    return flow(**kwargs)
