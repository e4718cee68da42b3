"""Typed settings: a TOML file (``--config`` or ``ERP_BACKUP_CONFIG``) plus the environment."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError

from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/erp-backup/config.toml")
DEFAULT_EXCLUDES = ["*.pyc", "__pycache__", "venv", ".venv", "node_modules", "staticfiles", "media"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectConfig(_Section):
    root: Path = Path("/srv/django_erp")
    include: list[str] = Field(default_factory=lambda: ["."])
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDES))
    key_files: list[str] = Field(default_factory=lambda: [".env", "manage.py"])


class DatabaseConfig(_Section):
    # a URL may carry a password: SecretStr keeps it out of reprs, logs and flow-run parameters
    url: SecretStr | None = None
    url_env: str = "DATABASE_URL"
    block: str | None = None  # name of an erp-backup database connection block
    timeout_s: float = 4 * 3600


class StorageConfig(_Section):
    local_dir: Path = Path("/var/backups/django_erp")


class BackupConfig(_Section):
    compression_level: int = Field(3, ge=1, le=19)
    threads: int = Field(0, ge=0)  # 0 = all cores
    missing_parent: Literal["fail", "full"] = "fail"
    verify: Literal["full", "quick", "none"] = "full"
    lock_wait_s: float = Field(3600, ge=0)
    task_retries: int = Field(2, ge=0, le=10)  # for stages safe to repeat (scan, dump, archive, verify)
    retry_delay_s: list[float] = Field(default_factory=lambda: [10.0, 60.0])


class RetentionPolicyConfig(_Section):
    """How long sets stay in one place (``[retention.local]`` / ``[retention.remote]``)."""

    full_days: float = Field(7, ge=0, le=36500, allow_inf_nan=False)
    incremental_hours: float = Field(24, ge=0, le=876000, allow_inf_nan=False)
    differential_days: float = Field(7, ge=0, le=36500, allow_inf_nan=False)
    monthly_days: float = Field(365, ge=0, le=36500, allow_inf_nan=False)
    keep_last: int = Field(1, ge=0, le=10000, strict=True)  # the newest sets of each kind kept whatever their age


class RemotePolicyConfig(RetentionPolicyConfig):
    """``[retention.remote]``: off-site copies stay longer (30 days) than local ones (7 days)."""

    full_days: float = Field(30, ge=0, le=36500, allow_inf_nan=False)
    differential_days: float = Field(30, ge=0, le=36500, allow_inf_nan=False)


class RetentionConfig(_Section):
    after_backup: bool = Field(True, strict=True)  # prune at the end of every backup flow
    # age before .partial dirs and incomplete remote uploads are removed
    leftover_grace_hours: float = Field(24, ge=0, le=876000, allow_inf_nan=False)
    local: RetentionPolicyConfig = Field(default_factory=RetentionPolicyConfig)
    remote: RemotePolicyConfig = Field(default_factory=RemotePolicyConfig)


class Settings(_Section):
    project: ProjectConfig = Field(default_factory=ProjectConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    _source: str = PrivateAttr(default="defaults")

    @property
    def source(self) -> str:
        """Where the settings came from (the config file's path): not a TOML key."""
        return self._source

    def database_url(self) -> DatabaseUrl:
        return resolve_database_url(self)

    def live_database(self) -> DatabaseUrl | None:
        """The configured (live) database, or None when none is configured or it cannot be resolved:
        a restore into a directory or another database needs none."""
        try:
            return resolve_database_url(self)
        except ConfigError:
            return None


def _fmt_loc(loc: tuple[object, ...]) -> str:
    return ".".join(str(x) for x in loc)


def load_settings(path: str | Path | None = None) -> Settings:
    """Load the TOML config. ``path`` None -> $ERP_BACKUP_CONFIG -> /etc/erp-backup/config.toml."""
    explicit = path is not None or "ERP_BACKUP_CONFIG" in os.environ
    p = Path(path or os.environ.get("ERP_BACKUP_CONFIG") or DEFAULT_CONFIG)
    if not p.exists():
        if explicit:
            raise ConfigError(f"config file {p} does not exist",
                              hint="create one with `erp-backup init --config PATH`")
        raise ConfigError(f"no config file: {p} does not exist and --config/ERP_BACKUP_CONFIG is not set",
                          hint="run `erp-backup init` to write one, or pass --config PATH")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except PermissionError as e:
        raise ConfigError(f"config file {p} is not readable", hint="run as root or fix its permissions") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}", hint="fix the syntax at that line") from e
    return settings_from_dict(data, source=str(p))


def settings_from_dict(data: dict[str, object], *, source: str = "dict") -> Settings:
    try:
        s = Settings.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = _fmt_loc(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise ConfigError(f"config {source}: {loc}: {msg}{more}",
                          hint="fix that key (see `erp-backup init` for a commented example)") from e
    if not s.project.root.is_absolute():
        raise ConfigError(f"config {source}: project.root: must be an absolute path, got {s.project.root}",
                          hint="write the full path of the Django project directory")
    if not s.storage.local_dir.is_absolute():
        raise ConfigError(f"config {source}: storage.local_dir: must be an absolute path",
                          hint="e.g. /var/backups/django_erp")
    for where, pol in (("local", s.retention.local), ("remote", s.retention.remote)):
        if pol.keep_last == 0 and not any((pol.full_days, pol.incremental_hours, pol.differential_days,
                                           pol.monthly_days)):
            raise ConfigError(f"config {source}: retention.{where}: every age is 0 and keep_last = 0: "
                              "this policy would remove every set",
                              hint=f"set retention.{where}.keep_last = 1 or give a kind an age above 0")
    s._source = source
    return s


def read_dotenv(path: Path) -> dict[str, str]:
    """Minimal .env reader (KEY=VALUE, optional quotes, # comments)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def resolve_database_url(s: Settings) -> DatabaseUrl:
    """``[database] url`` -> $url_env -> url_env in the project's .env -> the named block."""
    if s.database.url:
        return parse_database_url(s.database.url.get_secret_value(), key="database.url")
    env = s.database.url_env
    if os.environ.get(env):
        return parse_database_url(os.environ[env], key=f"${env}")
    dot = read_dotenv(s.project.root / ".env")
    if dot.get(env):
        return parse_database_url(dot[env], key=f"{env} in {s.project.root / '.env'}")
    if s.database.block:
        from erp_backup.blocks.database import DatabaseConnection  # Prefect import only when needed

        try:
            block = cast(DatabaseConnection, DatabaseConnection.load(s.database.block))  # sync context
        except ValueError as e:
            raise ConfigError(f"database.block: no block named {s.database.block!r}",
                              hint="create it (see README) or fix the name") from e
        return block.to_url()
    raise ConfigError(
        "no database configured",
        hint=f"set [database] url, or {env} in the environment or in {s.project.root / '.env'}",
    )


CONFIG_TEMPLATE = """\
# erp-backup configuration. Every key is optional; the values shown are the defaults
# except where `erp-backup init` filled them in.

[project]
# The Django ERP deployment to back up.
root = "{root}"
# Paths under root to back up; "." is the whole root.
include = ["."]
# Left out wherever they appear (a name) or where the path matches (a pattern with "/").
exclude = {exclude}
# Must be present in every backup, or verification fails.
key_files = [".env", "manage.py"]

[database]
# postgresql://user@host:5432/name, mysql://user@host:3306/name or sqlite:////abs/path/db.sqlite3
# Leave it out to read the URL from the environment variable named by url_env,
# then from that variable in the project's .env (as django-environ does).
{url_line}
url_env = "DATABASE_URL"
# block = "erp-db"        # or an erp-backup database connection block holding the password

[storage]
# Root-only (0700) directory holding one sub-directory per backup set.
local_dir = "{local_dir}"

[backup]
compression_level = 3     # zstd level 1..19
threads = 0               # compression threads; 0 = all cores
missing_parent = "fail"   # incremental/differential with no full: "fail" or "full" (promote to a full)
verify = "full"           # after each backup: "full" (decompress + content), "quick" (checksums), "none"
lock_wait_s = 3600        # how long a backup waits for another one to finish
task_retries = 2          # retries of the stages safe to repeat (scan, dump, archive, verify)
retry_delay_s = [10, 60]  # seconds before each retry

[retention]
# Applied by `erp-backup prune` and at the end of every backup flow (after the upload).
# Whatever the numbers say, the newest valid full and every set newer than it are kept,
# and so is every set a kept set builds on.
after_backup = true          # prune at the end of every backup flow
leftover_grace_hours = 24    # .partial dirs and incomplete remote uploads older than this are removed

[retention.local]            # sets in [storage] local_dir
full_days = 7
incremental_hours = 24
differential_days = 7
monthly_days = 365
keep_last = 1                # the newest set of each kind is kept whatever its age

[retention.remote]           # off-site copies
full_days = 30
incremental_hours = 24
differential_days = 30
monthly_days = 365
keep_last = 1
"""


def render_config(root: Path, local_dir: Path, url: str | None) -> str:
    import json

    url_line = f"url = {json.dumps(url)}" if url else '# url = "sqlite:////srv/django_erp/db.sqlite3"'
    return CONFIG_TEMPLATE.format(root=root, exclude=json.dumps(DEFAULT_EXCLUDES), url_line=url_line,
                                  local_dir=local_dir)
