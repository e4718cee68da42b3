"""Database URLs as dj-database-url / django-environ users write them. Pure."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from erp_backup.core.errors import ConfigError

_ENGINES = {
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "pgsql": "postgresql",
    "postgis": "postgresql",
    "mysql": "mysql",
    "mysql2": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
}


@dataclass(frozen=True)
class DatabaseUrl:
    engine: str  # "postgresql" | "mysql" | "sqlite"
    name: str  # database name, or the file path for sqlite
    host: str = ""
    port: int | None = None
    user: str = ""
    password: str = field(default="", repr=False)
    options: tuple[tuple[str, str], ...] = ()

    def redacted(self) -> str:
        """The URL with the password replaced: safe for logs and manifests."""
        if self.engine == "sqlite":
            return f"sqlite:///{self.name}" if not self.name.startswith("/") else f"sqlite:///{self.name}"
        auth = self.user + (":***" if self.password else "")
        at = f"{auth}@" if auth else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.engine}://{at}{self.host}{port}/{self.name}"

    def with_name(self, name: str) -> DatabaseUrl:
        return DatabaseUrl(self.engine, name, self.host, self.port, self.user, self.password, self.options)

    def same_database(self, other: DatabaseUrl) -> bool:
        """True when both URLs point at the same database (ignoring credentials)."""
        if self.engine != other.engine:
            return False
        if self.engine == "sqlite":
            return posixpath.normpath(self.name) == posixpath.normpath(other.name)
        local = {"", "localhost", "127.0.0.1", "::1"}
        h1 = "local" if self.host in local else self.host
        h2 = "local" if other.host in local else other.host
        return (h1, self.port or 0, self.name) == (h2, other.port or 0, other.name)


def parse_database_url(url: str, *, key: str = "database.url") -> DatabaseUrl:
    if not url or "://" not in url:
        raise ConfigError(
            f"{key}: '{_safe(url)}' is not a database URL",
            hint="write it as postgresql://user@host:5432/name, mysql://user@host:3306/name "
            "or sqlite:////absolute/path/db.sqlite3",
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    engine = _ENGINES.get(scheme)
    if engine is None:
        raise ConfigError(
            f"{key}: unsupported database scheme '{scheme}'",
            hint="use postgresql://, mysql:// (MariaDB too) or sqlite://",
        )
    options = tuple(parse_qsl(parts.query))
    if engine == "sqlite":
        # sqlite:////abs/path -> /abs/path ; sqlite:///rel/path -> rel/path
        path = url.split("://", 1)[1]
        path = path.split("?", 1)[0]
        if path.startswith("/"):
            path = path[1:]
        path = unquote(path)
        if not path or path == ":memory:":
            raise ConfigError(f"{key}: an SQLite URL needs a file path",
                              hint="write sqlite:////absolute/path/db.sqlite3")
        return DatabaseUrl("sqlite", path, options=options)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ConfigError(f"{key}: the URL names no database", hint="append /<database name> to the URL")
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{key}: bad port in database URL", hint="use host:port with a number") from e
    return DatabaseUrl(
        engine,
        name,
        host=parts.hostname or "",
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        options=options,
    )


def _safe(url: str) -> str:
    """Hide a password in a URL we could not parse (for error messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
