"""Database URLs as dj-database-url / django-environ users write them. Pure.

A URL holds a password: no message, log line, repr or artifact shows it, however malformed the URL.
Errors never echo the URL's credentials part (nor chain an exception that would), ``redacted()``,
``str()`` and ``repr()`` print it as ``***``, and ``secrets()`` lists every form of it (as
decoded, as written, secret-looking query options) for the scrubbing of client output.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

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


@dataclass(frozen=True, repr=False)
class DatabaseUrl:
    engine: str  # "postgresql" | "mysql" | "sqlite"
    name: str  # database name, or the file path for sqlite
    host: str = ""
    port: int | None = None
    user: str = ""
    password: str = field(default="", repr=False)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    password_as_written: str = field(default="", repr=False, compare=False)  # percent-encoded, for scrubbing

    def redacted(self) -> str:
        """The URL with the password replaced (options left out): safe for logs and manifests."""
        if self.engine == "sqlite":
            return f"sqlite:///{self.name}"
        auth = self.user + (":***" if self.password else "")
        at = f"{auth}@" if auth else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.engine}://{at}{self.host}{port}/{self.name}"

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.redacted()!r})"

    def secrets(self) -> tuple[str, ...]:
        """Every form of the credentials that a message must not show."""
        found = [self.password, self.password_as_written]
        found += [v for k, v in self.options if _SECRET_OPTION.search(k)]
        return tuple(dict.fromkeys(s for s in found if s))

    def with_name(self, name: str) -> DatabaseUrl:
        return DatabaseUrl(self.engine, name, self.host, self.port, self.user, self.password, self.options,
                           self.password_as_written)

    def same_database(self, other: DatabaseUrl) -> bool:
        """True when both URLs point at the same database (ignoring credentials)."""
        if self.engine != other.engine:
            return False
        if self.engine == "sqlite":
            return posixpath.normpath(self.name) == posixpath.normpath(other.name)
        local = {"", "localhost", "127.0.0.1", "::1"}
        h1 = "local" if self.host in local else self.host.lower()
        h2 = "local" if other.host in local else other.host.lower()
        default = DEFAULT_PORTS.get(self.engine, 0)  # ":5432" written or not is the same server
        return (h1, self.port or default, self.name) == (h2, other.port or default, other.name)


DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_SECRET_OPTION = re.compile(r"pass|pwd|secret|token", re.I)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?://?)?")
_HOST_AND_NAME = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?/[A-Za-z0-9_.$-]*")
_FORMS = ("write it as postgresql://user:password@host:5432/name, mysql://user:password@host:3306/name "
          "or sqlite:////absolute/path/db.sqlite3 (percent-encode @ : / ? # % in the password)")


def parse_database_url(url: str, *, key: str = "database.url") -> DatabaseUrl:
    if not url or "://" not in url:
        raise ConfigError(f"{key}: '{_safe(url)}' is not a database URL", hint=_FORMS)
    split, port, bad = _split(url)  # no exception of urllib may carry the URL's text into a traceback
    if bad:
        raise ConfigError(f"{key}: {bad} in the database URL '{_safe(url)}'", hint=_FORMS)
    scheme = split.scheme.lower()
    engine = _ENGINES.get(scheme)
    if engine is None:
        raise ConfigError(
            f"{key}: unsupported database scheme '{scheme}'",
            hint="use postgresql://, mysql:// (MariaDB too) or sqlite://",
        )
    options = tuple(parse_qsl(split.query))
    if engine == "sqlite":
        if "@" in split.netloc:
            raise ConfigError(f"{key}: an SQLite URL takes a file path, not a user, password or host",
                              hint="write sqlite:////absolute/path/db.sqlite3")
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
    name = unquote(split.path.lstrip("/"))
    if not name:
        raise ConfigError(f"{key}: the URL names no database", hint="append /<database name> to the URL")
    if "@" in name or "@" in split.query or "@" in split.fragment:
        # e.g. postgresql://u:pa/ss@h/db: a '/', '?' or '#' in the password ended the host part early
        raise ConfigError(f"{key}: cannot tell the password from the host and database name in the URL",
                          hint="percent-encode the password's special characters (@ %40, : %3A, / %2F, "
                          "? %3F, # %23, % %25)")
    return DatabaseUrl(
        engine,
        name,
        host=split.hostname or "",
        port=port,
        user=unquote(split.username or ""),
        password=unquote(split.password or ""),
        options=options,
        password_as_written=split.password or "",
    )


def _split(url: str) -> tuple[SplitResult, int | None, str]:
    """(parts, port, problem): the problem is "" or says what is wrong, never with the URL's text."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return urlsplit(""), None, "bad host (brackets or characters)"
    try:
        return parts, parts.port, ""
    except ValueError:
        return parts, None, "bad port (use host:port with a number)"


def _safe(url: str) -> str:
    """A malformed URL for a message: only its scheme as typed and, after the last '@', a plain
    host[:port]/name; everything else (where credentials could be) becomes ***."""
    m = _SCHEME.match(url)
    # only a scheme we know is echoed: 'pw:rest' without '//' may be a bare password with a colon
    scheme = m.group() if m and m.group().split(":", 1)[0].lower() in _ENGINES else ""
    rest = url[len(scheme):]
    if "@" in rest:
        tail = rest.rpartition("@")[2]
        return f"{scheme}***@{tail}" if _HOST_AND_NAME.fullmatch(tail) else f"{scheme}***"
    return f"{scheme}***" if rest else scheme
