"""How the CLI runs a job that changes something (backup, verify, restore, upload, prune, restore-test).

Every such CLI command hands ``run`` two callables with the same keyword arguments:

- ``flow``: the Prefect flow (so the run shows in the UI, with its tasks, logs and artifacts);
- ``plain``: the same work without Prefect (``erp_backup.jobs``: the same stages, order and
  retries), or ``None`` where no plain variant exists.

Which one runs (``ERP_BACKUP_RUNNER``, default ``auto``):

- ``auto``: the flow when a Prefect API is configured (``PREFECT_API_URL`` in the environment,
  ``./.env``, ``./prefect.toml``, ``./pyproject.toml`` or the active Prefect profile — read without
  importing Prefect, see ``erp_backup.prefect_target``), so the run shows in the server's UI with
  its artifacts and events; otherwise the plain variant, in this process, logging to stderr.
  Without a server Prefect would start a temporary one for every command (~13-20 s, ~200 MB)
  that nobody can look at afterwards, around often less than a second of work.
- ``flow``: always the flow (with no API configured: under Prefect's temporary server).
- ``plain``: always the plain variant (even with a server configured: nothing reaches it).

Commands pass the flow as a callable that imports the flow module when called, so the plain
path never imports Prefect.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from erp_backup.core.errors import BackupError, ConfigError
from erp_backup.prefect_target import api_problem, configured_api_url

R = TypeVar("R")

MODE_ENV = "ERP_BACKUP_RUNNER"
MODES = ("auto", "flow", "plain")


def mode() -> str:
    """``flow`` or ``plain``: what ``run`` would do for a job that has both variants."""
    chosen = os.environ.get(MODE_ENV, "").strip().lower() or "auto"
    if chosen not in MODES:
        raise ConfigError(f"{MODE_ENV}={chosen!r} is not one of {', '.join(MODES)}",
                          hint=f"unset {MODE_ENV} (auto: a flow run when a Prefect server is configured)")
    if chosen == "auto":
        return "flow" if configured_api_url() else "plain"
    return chosen


def check_server() -> None:
    """With a Prefect API configured, it must answer before the flow starts: else one clear line
    instead of Prefect's traceback after its connection retries (nothing has been written yet)."""
    url = configured_api_url()
    if url and not url.lower().startswith(("http://", "https://")):
        raise ConfigError(f"the configured Prefect API URL {url!r} is not an http(s) URL",
                          hint="fix PREFECT_API_URL (e.g. http://127.0.0.1:4200/api), or unset it to run "
                          "without a server")
    problem = api_problem(url) if url else None
    if problem:
        raise ConfigError(f"the Prefect API at {url} does not answer: {problem}",
                          hint="start the server (`prefect server start`) or fix PREFECT_API_URL, or run this job "
                          f"without it: {MODE_ENV}=plain (the run then does not show in the UI)")


def log_to_stderr() -> None:
    """``erp_backup``'s loggers to stderr, Prefect's console style (once per process)."""
    root = logging.getLogger("erp_backup")
    if any(getattr(h, "_erp_backup", False) for h in root.handlers):
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                                     datefmt="%H:%M:%S"))
    h._erp_backup = True  # type: ignore[attr-defined]
    root.addHandler(h)
    level = os.environ.get("PREFECT_LOGGING_LEVEL", "INFO").upper()
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")


def lazy(module: str, name: str, key: Any = None) -> Callable[..., Any]:
    """The flow ``module.name`` (or ``module.name[key]``), imported only when called: the plain path
    never pays for importing Prefect."""

    def call(**kwargs: Any) -> Any:
        found = getattr(importlib.import_module(module), name)
        return (found if key is None else found[key])(**kwargs)

    call.__name__ = name
    return call


def api_gone(exc: BaseException | None) -> bool:
    """Is ``exc`` (or what caused it) the Prefect API not answering any more: a connection refused,
    reset or timed out, a proxy's 502/503/504 in front of a server that stopped, or Prefect's own
    "Failed to reach API"? (Only asked on the flow path: httpx is loaded with Prefect.)"""
    import httpx

    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, httpx.TransportError):
            return True
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (502, 503, 504):
            return True
        if isinstance(exc, RuntimeError) and str(exc).startswith("Failed to reach API"):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class ServerGone(BackupError):
    """The Prefect server stopped answering while the CLI ran a job as a flow run on it."""

    # Prefect's API log handler prints "--- Error logging to API ---" and its cause without a final
    # newline: the CLI starts a new line before its error line
    after_partial_output = True


def run(flow: Callable[..., R], plain: Callable[..., R] | None = None, /, **kwargs: Any) -> R:
    """Run one CLI job with ``kwargs``: the flow, or its plain variant (see the module doc)."""
    if plain is None or mode() == "flow":
        check_server()
        try:
            return flow(**kwargs)
        except Exception as e:
            if isinstance(e, BackupError) or not api_gone(e):
                raise
            raise ServerGone(f"the Prefect API at {configured_api_url()} stopped answering during the run "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                             hint="the job itself may have finished (`erp-backup list` shows the committed sets; "
                             "a set is whole or absent): start the server again, or run jobs without it: "
                             f"{MODE_ENV}=plain") from None
    log_to_stderr()
    return plain(**kwargs)
