"""Prefect block holding the database connection of the ERP (URL + secret password)."""

from __future__ import annotations

from dataclasses import replace

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from erp_backup.core.dburl import DatabaseUrl, parse_database_url


class DatabaseConnection(Block):
    """Where the ERP database lives. Keep the password in ``password`` (stored encrypted
    by Prefect), not in ``url``: the URL is shown in the UI."""

    _block_type_name = "erp-backup database connection"
    _block_type_slug = "erp-backup-database-connection"
    _description = "Database the ERP backup dumps and restores (PostgreSQL, MySQL/MariaDB or SQLite)."

    url: str = Field(
        description="postgresql://user@host:5432/name, mysql://user@host:3306/name or "
        "sqlite:////abs/path/db.sqlite3 (leave the password out: use the password field)",
    )
    password: SecretStr | None = Field(default=None, description="Password of the database user.")

    def to_url(self) -> DatabaseUrl:
        """The parsed URL with the block's password (it wins over one written in ``url``)."""
        parsed = parse_database_url(self.url, key=f"block {self._block_document_name or 'database'}.url")
        if self.password is None:
            return parsed
        return replace(parsed, password=self.password.get_secret_value())
