"""The vocabulary of a backup set. Pure: frozen dataclasses and enums only."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from erp_backup.core.errors import BackupError

SCHEMA_VERSION = 1


class BackupKind(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"

    @property
    def label(self) -> str:
        return {"full": "full", "incremental": "incr", "differential": "diff"}[self.value]


MONTHLY_TAG = "monthly"  # a monthly archive is a full set carrying this tag (id suffix ``-monthly``)


class BackupJob(StrEnum):
    """The jobs of the strategy, as an operator names them (CLI, deployments)."""

    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"
    MONTHLY = "monthly"

    @property
    def kind(self) -> BackupKind:
        return BackupKind.FULL if self is BackupJob.MONTHLY else BackupKind(self.value)

    @property
    def tags(self) -> tuple[str, ...]:
        return (MONTHLY_TAG,) if self is BackupJob.MONTHLY else ()


class EntryType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


_LABEL_KIND = {
    "full": BackupKind.FULL,
    MONTHLY_TAG: BackupKind.FULL,
    "incr": BackupKind.INCREMENTAL,
    "diff": BackupKind.DIFFERENTIAL,
}
_ID_RE = re.compile(r"^(\d{8}T\d{6}Z)-(" + "|".join(_LABEL_KIND) + ")$")


@dataclass(frozen=True, order=True)
class BackupId:
    """``20261128T020000Z-full``: UTC start second + label. Sorts by time."""

    value: str

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.value):
            raise BackupError(f"'{self.value}' is not a backup id",
                              hint="ids look like 20261128T020000Z-full (see `erp-backup list`)")

    @classmethod
    def make(cls, started: datetime, kind: BackupKind, tags: tuple[str, ...] = ()) -> BackupId:
        label = MONTHLY_TAG if MONTHLY_TAG in tags and kind is BackupKind.FULL else kind.label
        return cls(f"{started.astimezone(UTC):%Y%m%dT%H%M%SZ}-{label}")

    @staticmethod
    def is_valid(value: str) -> bool:
        return bool(_ID_RE.match(value))

    @property
    def kind(self) -> BackupKind:
        return _LABEL_KIND[self.value.rsplit("-", 1)[1]]

    @property
    def timestamp(self) -> datetime:
        return datetime.strptime(self.value[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)

    def __str__(self) -> str:
        return self.value


# one int object per distinct mode/uid/gid value (a tree has a handful): ~80 bytes less per index entry
_SHARED: dict[int, int] = {}
_SHARED_MAX = 4096


def shared_int(v: int) -> int:
    """``v``, as the one int object kept for that value (for the few distinct modes, uids, gids)."""
    found = _SHARED.get(v)
    if found is not None:
        return found
    if len(_SHARED) < _SHARED_MAX:
        _SHARED[v] = v
    return v


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One path of the snapshot index (relative, POSIX separators)."""

    path: str
    type: EntryType
    mode: int  # permission bits (st_mode & 0o7777)
    mtime_ns: int
    size: int = 0
    uid: int = 0
    gid: int = 0
    ino: int = 0
    sha256: str | None = None  # files only
    holder: str | None = None  # files only: id of the set whose files archive holds the bytes
    target: str | None = None  # symlinks only

    def same_stat(self, other: FileEntry) -> bool:
        """Stat-level equality used for change detection (no content read)."""
        return (
            self.type == other.type
            and self.size == other.size
            and self.mtime_ns == other.mtime_ns
            and self.ino == other.ino
            and self.mode == other.mode
            and self.uid == other.uid
            and self.gid == other.gid
            and self.target == other.target
        )


@dataclass(frozen=True)
class Artifact:
    name: str
    role: str  # "files" | "database"
    size: int
    sha256: str
    compression: str = "zstd"
    encryption: str | None = None  # None | "gpg"


@dataclass(frozen=True)
class DatabaseInfo:
    """Facts about a database dump; recorded in the manifest."""

    engine: str  # "sqlite" | "postgresql" | "mysql"
    database: str  # name (or file name for sqlite); never a password
    server_version: str
    dump_tool: str
    dump_format: str  # "sqlite3" | "pg_dump-custom" | "sql"
    tables: dict[str, int] = field(default_factory=dict)  # per-table row counts, same snapshot as the dump
    raw_size: int = 0  # uncompressed dump bytes


@dataclass(frozen=True)
class BackupStats:
    files_scanned: int = 0
    files_changed: int = 0
    files_deleted: int = 0
    bytes_in: int = 0  # uncompressed bytes read (files + dump)
    bytes_out: int = 0  # bytes written (all artifacts)
    duration_s: float = 0.0


@dataclass(frozen=True)
class Manifest:
    id: BackupId
    kind: BackupKind
    started_at: datetime
    finished_at: datetime
    host: str
    tool_version: str
    source_root: str
    parent: BackupId | None = None
    base: BackupId | None = None  # the full this set builds on (itself for a full)
    tags: tuple[str, ...] = ()
    database: DatabaseInfo | None = None
    artifacts: tuple[Artifact, ...] = ()
    # the snapshot index, sorted by path: a tuple when read, or a view that reads it from disk
    # (``adapters/index_file.py``: what a backup hands on after writing its manifest)
    files: Collection[FileEntry] = ()
    deleted: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason): sockets, fifos, unreadable...
    stats: BackupStats = BackupStats()
    # other sets whose archives a restore of this set reads (derived from the snapshot index,
    # stored so that a header-only read knows the chain)
    depends_on: tuple[BackupId, ...] = ()
    schema: int = SCHEMA_VERSION
    # fingerprints of the keys the encrypted artifacts are encrypted to (never a secret)
    recipients: tuple[str, ...] = ()

    def artifact(self, role: str) -> Artifact | None:
        for a in self.artifacts:
            if a.role == role:
                return a
        return None

    @property
    def size_bytes(self) -> int:
        return sum(a.size for a in self.artifacts)

    @property
    def is_monthly(self) -> bool:
        return MONTHLY_TAG in self.tags

    @property
    def job(self) -> BackupJob:
        return BackupJob.MONTHLY if self.is_monthly and self.kind is BackupKind.FULL else BackupJob(self.kind.value)


def utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise BackupError("naive datetime", hint="pass timezone-aware times (UTC)")
    return dt.astimezone(UTC)
