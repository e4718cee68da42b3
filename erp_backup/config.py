"""Typed settings: a TOML file (``--config`` or ``ERP_BACKUP_CONFIG``) plus the environment."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError

from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.errors import ConfigError
from erp_backup.nagios_config import NagiosConfig
from erp_backup.recovery_config import RestoreConfig, RestoreTestConfig
from erp_backup.tiers import TiersConfig

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
    task_retries: int = Field(2, ge=0, le=10)  # for stages safe to repeat (preflight, scan, dump, archive, verify)
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


class MonitoringConfig(_Section):
    # node_exporter textfile collector file (written atomically after backups, verifies, restore tests)
    textfile: Path | None = None
    pushgateway: str | None = None  # e.g. http://pushgateway:9091 (also pushed there when set)
    push_job: str = "erp-backup"
    # size anomaly: a set more than size_factor times larger (or smaller) than the median of the
    # previous size_history sets of its kind, once size_min_history of them exist
    size_factor: float = Field(3.0, gt=1)
    size_history: int = Field(10, ge=1)
    size_min_history: int = Field(3, ge=1)
    progress_interval_s: float = Field(5.0, gt=0)  # how often a long dump/archive moves the progress artifact


class VerifyConfig(_Section):
    log: Path = Path("/var/log/erp-backup/verify.log")  # one line per verified set, every verification
    log_max_bytes: int = Field(1 << 20, ge=1024)  # rotate when the log reaches this size
    log_keep: int = Field(5, ge=0, le=100)  # rotated logs kept (verify.log.1 … .N)


class RemoteConfig(_Section):
    """Off-site copies (``erp_backup.offsite``): where, and how the upload behaves."""

    # a prefect-aws S3Bucket block or an erp-backup FTP storage block; "s3-bucket/NAME" or
    # "erp-backup-ftp-storage/NAME" names the type, a bare NAME is looked up as S3 first, then FTP
    block: str = Field(min_length=1)
    prefix: str = "django_erp"
    # S3 multipart part size (5 MiB is S3's minimum; an object streamed is at most 10,000 parts) and
    # parts in flight per object: a stream being encrypted holds part_size_mib x concurrency in memory
    part_size_mib: int = Field(5, ge=5, le=5120)
    concurrency: int = Field(3, ge=1, le=64)
    retries: int = Field(3, ge=0, le=10)  # attempts per set after the first (on top of the client's own)
    retry_backoff_s: float = Field(2.0, ge=0)  # doubled after each failed attempt
    catch_up_days: float = Field(30, ge=0)  # local sets finished within this many days are sent if missing
    catch_up_monthly_days: float = Field(366, ge=0)  # the same for monthly archives


class EncryptionConfig(_Section):
    """``[encryption]``: GPG encryption and signing of sets (``erp_backup.encryption``). Holds no
    secret: private keys and passphrases come from the GPG keys block, GNUPGHOME and the environment."""

    recipients: list[str] = Field(default_factory=list)  # full fingerprints of the keys to encrypt to
    public_keys: Path | None = None  # armored public keys (recipients', signing key's) in a file
    block: str | None = None  # an erp-backup GPG keys block (public keys, signing key, restore key)
    local: bool = False  # also encrypt local sets as they are written
    sign: bool = True  # SHA256SUMS.sig on every set; verify/restore refuse sets without a good one
    signing_key: str | None = None  # fingerprint of the signing key (default: the only one available)
    signers: list[str] = Field(default_factory=list)  # fingerprints whose signatures are accepted
    manifest: Literal[False] = False  # manifest.json stays readable (README: why)


class Settings(_Section):
    project: ProjectConfig = Field(default_factory=ProjectConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    restore: RestoreConfig = Field(default_factory=RestoreConfig)
    restore_test: RestoreTestConfig = Field(default_factory=RestoreTestConfig)
    nagios: NagiosConfig = Field(default_factory=NagiosConfig)
    tiers: TiersConfig = Field(default_factory=TiersConfig)
    encryption: EncryptionConfig | None = None
    remote: RemoteConfig | None = None
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
    if data.get("remote") is not None and data.get("encryption") is None:
        raise ConfigError(f"config {source}: [remote] without [encryption]: off-site copies must be encrypted",
                          hint="add an [encryption] section with recipients (README: Encryption)")
    enc = data.get("encryption")
    if isinstance(enc, dict) and enc.get("manifest") is True:
        raise ConfigError(f"config {source}: encryption.manifest = true is not offered: manifest.json stays "
                          "readable (names, sizes and hashes, no contents)",
                          hint="remove the key; README (Encryption) says why the manifest is not encrypted")
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
    if not s.verify.log.is_absolute():
        raise ConfigError(f"config {source}: verify.log: must be an absolute path",
                          hint="e.g. /var/log/erp-backup/verify.log")
    if s.encryption is not None:
        _check_encryption(s.encryption, source, remote=data.get("remote") is not None)
    if s.remote is not None:
        _check_remote(s, source)
    s._source = source
    return s


def _check_encryption(e: EncryptionConfig, source: str, *, remote: bool) -> None:
    from erp_backup.adapters.crypto import normalize_fingerprint
    from erp_backup.core.errors import CryptoError

    for key, values in (("recipients", e.recipients), ("signers", e.signers),
                        ("signing_key", [e.signing_key] if e.signing_key else [])):
        for v in values:
            try:
                normalize_fingerprint(v)
            except CryptoError as err:
                raise ConfigError(f"config {source}: encryption.{key}: {err.message}", hint=err.hint) from err
    if (e.local or remote) and not e.recipients:
        raise ConfigError(f"config {source}: encryption.recipients is empty but "
                          f"{'local sets' if e.local else 'off-site copies'} are to be encrypted",
                          hint="list the full fingerprints of the keys to encrypt to")
    if e.public_keys is not None and not e.public_keys.is_absolute():
        raise ConfigError(f"config {source}: encryption.public_keys: must be an absolute path",
                          hint="e.g. /etc/erp-backup/keys.asc")
    if e.sign and not (e.signers or e.signing_key or e.block):
        raise ConfigError(f"config {source}: [encryption] sign = true but no verification key is named",
                          hint="set encryption.signers (or signing_key) to the signing key's fingerprint, "
                          "or use a GPG keys block")
    if e.recipients and e.public_keys is None and not e.block:
        raise ConfigError(f"config {source}: [encryption] names recipients but no public_keys file and no block",
                          hint="set encryption.public_keys to the armored keys file, or encryption.block")


def _check_remote(s: Settings, source: str) -> None:
    """``[remote] prefix``: a clean relative path (``[remote]`` without ``[encryption]`` is refused above)."""
    prefix = s.remote.prefix if s.remote else ""
    parts = prefix.strip("/").split("/")
    if prefix.strip("/") and any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"config {source}: remote.prefix: {prefix!r} is not a clean relative path",
                          hint='e.g. prefix = "django_erp"')


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
task_retries = 2          # retries of the stages safe to repeat (preflight, scan, dump, archive, verify)
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

[monitoring]
# textfile = "/var/lib/prometheus/node-exporter/erp_backup.prom"  # Prometheus metrics (node_exporter)
# pushgateway = "http://127.0.0.1:9091"                            # also push them there
size_factor = 3.0         # size anomaly: more than 3x larger or smaller than the median of ...
size_history = 10         # ... the previous 10 sets of the same kind, ...
size_min_history = 3      # ... once at least 3 exist
progress_interval_s = 5   # how often a long dump/archive moves the run's progress artifact

[verify]
log = "/var/log/erp-backup/verify.log"  # one line per verified set, appended by every verification
log_max_bytes = 1048576   # rotated (verify.log.1 … .N) when it reaches this size
log_keep = 5              # rotated logs kept

# [encryption]            # GPG: encrypt and sign sets (README: Encryption). Required by [remote].
# recipients = ["<40-hex fingerprint>"]        # keys to encrypt to (public keys only on this host)
# public_keys = "/etc/erp-backup/keys.asc"     # their armored public keys (or from the block)
# block = "erp-gpg"                            # erp-backup GPG keys block: keys, signing key, secrets
# local = false                                # also encrypt local sets (files.tar.zst.gpg, ...)
# sign = true                                  # SHA256SUMS.sig on every set; restore refuses unsigned sets
# signing_key = "<fingerprint>"                # which key signs (default: the only one available)
# signers = ["<fingerprint>"]                  # whose signatures verify/restore accept (default: signing_key)

# [remote]                # off-site copies (README: Off-site copies); needs [encryption]
# block = "erp-offsite"   # S3Bucket block or erp-backup FTP storage block (`erp-backup block s3|ftp`)
# prefix = "django_erp"   # sets go to <prefix>/<set id>/
# catch_up_days = 30      # sets finished this recently are sent if missing remotely (monthly: 366)
{recovery}"""


def render_config(root: Path, local_dir: Path, url: str | None) -> str:
    import json

    url_line = f"url = {json.dumps(url)}" if url else '# url = "sqlite:////srv/django_erp/db.sqlite3"'
    from erp_backup.nagios_config import CONFIG_TEMPLATE as NAGIOS_TEMPLATE
    from erp_backup.recovery_config import CONFIG_TEMPLATE as RECOVERY_TEMPLATE
    from erp_backup.tiers import CONFIG_TEMPLATE as TIERS_TEMPLATE

    return CONFIG_TEMPLATE.format(root=root, exclude=json.dumps(DEFAULT_EXCLUDES), url_line=url_line,
                                  local_dir=local_dir, recovery=RECOVERY_TEMPLATE + NAGIOS_TEMPLATE + TIERS_TEMPLATE)
