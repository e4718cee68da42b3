"""Shared Prefect wiring: settings loading, retry policy, table artifacts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.utilities.annotations import quote

from erp_backup.config import Settings, load_settings
from erp_backup.retry import PERMANENT, is_transient

__all__ = ["PERMANENT", "artifact_key", "as_stage", "retry_transient", "settings_for"]


def retry_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a task only for errors a second attempt may fix (network, server restart, lock timeouts)."""
    try:
        state.result(raise_on_failure=True)
    except Exception as e:
        return is_transient(e)  # the split the in-process CLI uses too (erp_backup.retry)
    return False


P = ParamSpec("P")
R = TypeVar("R")


def as_stage(t: Task[P, R]) -> Callable[P, R]:
    """A task as a pipeline stage: called like the plain function, its arguments ``quote``d so
    Prefect does not walk them (a change plan holds every path of the tree)."""

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        submit = cast(Callable[..., R], t)
        return submit(*(quote(a) for a in args), **{k: quote(v) for k, v in kwargs.items()})

    call.__name__ = t.name
    return call


def settings_for(config: str | None) -> Settings:
    return load_settings(config)


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100]
