"""The interface every database adapter implements.

The engine owns compression, encryption and hashing: an adapter only produces
the *raw* dump as a stream of bytes (``write`` is called chunk by chunk) and
consumes the raw dump as an iterator of chunks on restore. Nothing is ever held
whole in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import ConfigError
from erp_backup.core.models import DatabaseInfo

Write = Callable[[bytes], object]


class DatabaseAdapter(Protocol):
    engine: str  # "sqlite" | "postgresql" | "mysql"
    artifact_name: str  # e.g. "db.postgresql.pgdump.zst" (".gpg" is added by the engine)
    # whether the row counts of the last dump come from the dump's own snapshot (MySQL without
    # RELOAD: best effort); always True for engines that dump from one snapshot
    counts_consistent: bool

    def check_available(self) -> None:
        """Fail fast, before anything is written, with an actionable DatabaseError
        (server down, wrong password, missing database, client binary missing or
        older than the server, file missing for SQLite)."""

    def dump(self, write: Write, workdir: Path) -> DatabaseInfo:
        """Stream a consistent raw dump to ``write``. Row counts in the returned
        DatabaseInfo come from the same snapshot as the dump. ``workdir`` is a
        private (0700) scratch directory inside the set being built."""

    def verify_dump(self, chunks: Iterable[bytes], info: DatabaseInfo, workdir: Path) -> list[str]:
        """Read a raw dump completely and return the problems found (empty = OK):
        truncated, unreadable, a table recorded in ``info`` missing."""

    def restore(self, chunks: Iterable[bytes], info: DatabaseInfo, target: DatabaseUrl, *,
                replace: bool, workdir: Path, jobs: int = 1) -> dict[str, int]:
        """Restore a raw dump into ``target`` (created if missing). Refuse with
        RestoreError if it exists and is not empty unless ``replace``. Returns the
        per-table row counts of the restored database."""

    def row_counts(self, url: DatabaseUrl) -> dict[str, int]:
        """Per-table row counts of a live database (used to check a restore)."""


def adapter_for(url: DatabaseUrl, *, timeout: float | None = None) -> DatabaseAdapter:
    if url.engine == "sqlite":
        from erp_backup.adapters.databases.sqlite import SqliteAdapter

        return SqliteAdapter(url, timeout=timeout)
    if url.engine == "postgresql":
        from erp_backup.adapters.databases.postgres import PostgresAdapter

        return PostgresAdapter(url, timeout=timeout)
    if url.engine == "mysql":
        from erp_backup.adapters.databases.mysql import MysqlAdapter

        return MysqlAdapter(url, timeout=timeout)
    raise ConfigError(f"database engine '{url.engine}' is not supported",
                      hint="use postgresql, mysql or sqlite")
