"""One exception tree for the whole tool.

Every message says what went wrong *and* what the operator should do about it.
The CLI prints ``str(error)`` on one line and exits non-zero; flows let these
propagate so the Prefect run ends Failed with the same text.
"""

from __future__ import annotations


class BackupError(Exception):
    """Base of every error this tool raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigError(BackupError):
    """The configuration file is missing, unreadable or has a bad value."""

    exit_code = 2


class RetentionRefused(ConfigError):
    """The retention policy would remove every set: refused, nothing removed (the prune rails)."""


class SourceError(BackupError):
    """The project tree to back up cannot be read."""


class DatabaseError(BackupError):
    """Dumping, checking or restoring the database failed."""


class ToolMissingError(DatabaseError):
    """A client binary (pg_dump, mariadb-dump, ...) is not installed."""


class ChainError(BackupError):
    """The backup chain needed for an operation is missing or broken."""


class StorageError(BackupError):
    """The backup repository cannot be read or written."""


class LockError(StorageError):
    """Another backup holds the repository lock."""


class IntegrityError(BackupError):
    """A backup set failed verification (checksum, structure, content)."""


class RestoreError(BackupError):
    """A restore was refused or failed."""


class UnsafeArchiveError(RestoreError):
    """An archive member would be written outside the restore target."""


class CryptoError(BackupError):
    """GPG encryption or decryption failed."""
