"""``erp-backup setup``: take a Prefect server to a working erp-backup setup, idempotently.

Against ``PREFECT_API_URL`` it creates, or updates in place (found by name):

- the work pool ``erp-backup`` (process type) the deployments of ``prefect.yaml`` run on;
- the global concurrency limit ``erp-backup-backups`` (1 slot) every backup flow takes a slot of, so
  two backups never run at the same time, whatever started them;
- our block types (database connection, GPG keys, notifications);
- one notification block ``erp-backup`` holding the alert targets (Apprise URLs, as secrets);
- the Prefect variable ``erp_backup_timezone`` that ``prefect.yaml``'s schedules read at deploy time
  (and the timezone of the schedules already deployed);
- the automations of ``deployments/automations.yaml`` (failed/crashed, late, size anomaly, restore test).

Run it twice: exactly one of each. Run it with other arguments: the same objects, changed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from erp_backup.core.errors import BackupError, ConfigError

POOL = "erp-backup"
BACKUP_LIMIT = "erp-backup-backups"
NOTIFY_BLOCK = "erp-backup"
TZ_VARIABLE = "erp_backup_timezone"
DEFAULT_TZ = "Asia/Shanghai"
DEFAULT_LATE_INCREMENTAL_S = 75 * 60
DEFAULT_LATE_FULL_S = 26 * 3600
FLOW_PREFIX = "erp-backup-"
AUTOMATIONS_FILE = Path(__file__).resolve().parent.parent / "deployments" / "automations.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, what: str) -> int:
    """``90``, ``90s``, ``75m``, ``26h``, ``2d`` -> seconds (at least 1)."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{what} {text!r} is not a duration", hint="write e.g. 4500, 75m, 26h or 20s")
    seconds = int(float(m.group(1)) * _UNIT[m.group(2)])
    if seconds < 1:
        raise ConfigError(f"{what} {text!r} is shorter than a second", hint="give at least 1s")
    if seconds > 400 * 86400:
        raise ConfigError(f"{what} {text!r} is longer than 400 days", hint="an alert that late is no alert: "
                          "give e.g. 75m for incrementals, 26h for fulls")
    return seconds


TZ_TEMPLATE = "{{ prefect.variables." + TZ_VARIABLE + " }}"


def schedule_zone(value: str) -> ZoneInfo:
    """The zone of a ``prefect.yaml`` schedule as code reading the file should take it: the template
    ``{{ prefect.variables.erp_backup_timezone }}`` (filled in at deploy time) means the default."""
    return ZoneInfo(DEFAULT_TZ if value.strip() == TZ_TEMPLATE else value)


def check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(f"--timezone {tz!r} is not a known time zone",
                          hint="use an IANA name such as Asia/Shanghai, Europe/Berlin or UTC") from e
    return tz


def check_notify_url(url: str) -> str:
    """An Apprise URL Apprise understands (checked offline; the secret part is never printed)."""
    from apprise import Apprise

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme or Apprise.instantiate(url, suppress_exceptions=True) is None:
        raise ConfigError(f"--notify URL with scheme {scheme or '(none)'!r} is not a valid Apprise URL",
                          hint="e.g. mailtos://user:pass@smtp.example.com?to=ops@example.com, "
                          "dingtalk://token/secret, wecombot://key, feishu://token, slack://T/B/X, "
                          "twilio://SID:token@+from/+to, json://host:port/path")
    return url


@dataclass(frozen=True)
class SetupRequest:
    notify: tuple[str, ...] | None = None  # None: keep the targets already stored
    timezone: str | None = None  # None: keep the stored one (default Asia/Shanghai)
    late_incremental_s: int = DEFAULT_LATE_INCREMENTAL_S
    late_full_s: int = DEFAULT_LATE_FULL_S
    automations_file: Path = AUTOMATIONS_FILE


@dataclass(frozen=True)
class SetupReport:
    rows: tuple[dict[str, str], ...]
    warnings: tuple[str, ...] = ()


@dataclass
class _Log:
    rows: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, what: str, name: str, action: str) -> None:
        self.rows.append({"object": what, "name": name, "result": action})


def render_automations(text: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The automations of ``automations.yaml`` with ``${NAME}`` placeholders filled in: a value that is
    exactly a placeholder takes the value's type; inside text it is replaced by its string."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"automations file is not valid YAML: {str(e).splitlines()[0]}",
                          hint="fix it, or restore deployments/automations.yaml from the repository") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("automations"), list):
        raise ConfigError("automations file has no top-level `automations:` list",
                          hint="restore deployments/automations.yaml from the repository")

    def fill(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, str):
            for name, value in values.items():
                if v == f"${{{name}}}":
                    return value
                v = v.replace(f"${{{name}}}", str(value))
            left = re.findall(r"\$\{([A-Z_]+)\}", v)
            if left:
                raise ConfigError(f"automations file: unknown placeholder ${{{left[0]}}}",
                                  hint=f"known: {', '.join(values)}")
        return v

    autos = [fill(a) for a in doc["automations"]]
    names = [a.get("name") for a in autos]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("automations file: every automation needs a unique name", hint="fix the names")
    return autos


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("setup needs a Prefect server and PREFECT_API_URL is not set",
                          hint="start one (`prefect server start`) and export "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api")
    return str(url)


def run_setup(req: SetupRequest) -> SetupReport:
    """Everything ``setup`` does; raises ``BackupError`` with the operator's message on failure."""
    import httpx

    url = _api_url()
    text = req.automations_file.read_text(encoding="utf-8") if req.automations_file.is_file() else None
    if text is None:
        raise ConfigError(f"automations file {req.automations_file} not found",
                          hint="run setup from the repository checkout (deployments/automations.yaml)")
    # the whole file is checked before anything is written on the server
    validate_automations(render_automations(text, {"NOTIFY_BLOCK_ID": "00000000-0000-0000-0000-000000000000",
                                                   "LATE_INCREMENTAL_S": req.late_incremental_s,
                                                   "LATE_FULL_S": req.late_full_s}))
    log = _Log()
    try:
        _setup(req, text, log)
    except httpx.HTTPError as e:
        raise BackupError(f"Prefect server at {url} did not answer: {type(e).__name__}: {e}",
                          hint="check that it runs (`prefect server start`) and PREFECT_API_URL") from e
    return SetupReport(tuple(log.rows), tuple(log.warnings))


def _setup(req: SetupRequest, automations_text: str, log: _Log) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        err = client.api_healthcheck()  # returns the error rather than raising it
        if err is not None:
            raise err
        _work_pool(client, log)
        _concurrency_limit(client, log)
        _block_types(log)
        block_id = _notification_block(req, log)
        tz = _timezone(client, req, log)
        values = {"NOTIFY_BLOCK_ID": str(block_id), "LATE_INCREMENTAL_S": req.late_incremental_s,
                  "LATE_FULL_S": req.late_full_s}
        _automations(client, render_automations(automations_text, values), log)
        log.add("timezone", TZ_VARIABLE, tz)


def _work_pool(client: Any, log: _Log) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        pool = client.read_work_pool(POOL)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template(),
                                               description="erp-backup: backups, verify, prune, restores"))
        log.add("work pool", POOL, "created")
        return
    if pool.type != "process":
        log.warnings.append(f"work pool {POOL} has type {pool.type!r}, not 'process': "
                            "the deployments need a process worker on the backup host")
    log.add("work pool", POOL, "exists")


def _concurrency_limit(client: Any, log: _Log) -> None:
    from prefect.exceptions import ObjectNotFound

    try:
        existing = client.read_global_concurrency_limit_by_name(BACKUP_LIMIT)
    except ObjectNotFound:
        existing = None
    client.upsert_global_concurrency_limit_by_name(BACKUP_LIMIT, 1)
    if existing is not None and not existing.active:
        from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

        client.update_global_concurrency_limit(BACKUP_LIMIT, GlobalConcurrencyLimitUpdate(active=True))
    log.add("concurrency limit", BACKUP_LIMIT,
            "created" if existing is None else "updated" if (existing.limit != 1 or not existing.active)
            else "exists")


def _block_types(log: _Log) -> None:
    from erp_backup.blocks.database import DatabaseConnection
    from erp_backup.blocks.gpg import GpgKeys
    from erp_backup.blocks.notify import ErpBackupNotifications

    for cls in (DatabaseConnection, GpgKeys, ErpBackupNotifications):
        cls.register_type_and_schema()
        log.add("block type", cls.get_block_type_slug(), "registered")


def _notification_block(req: SetupRequest, log: _Log) -> Any:
    from pydantic import SecretStr

    from erp_backup.blocks.notify import ErpBackupNotifications

    try:
        old: ErpBackupNotifications | None = ErpBackupNotifications.load(NOTIFY_BLOCK)  # type: ignore[assignment]
    except ValueError:
        old = None
    if req.notify is None:
        urls = list(old.urls) if old is not None else []
    else:
        urls = [SecretStr(u) for u in req.notify]
    if not urls:
        log.warnings.append("no notification targets: alerts go nowhere until you run "
                            "`erp-backup setup --notify URL` (mailto://, dingtalk://, wecombot://, json://…)")
    block = ErpBackupNotifications(urls=urls, notify_type="failure")
    block_id = block.save(NOTIFY_BLOCK, overwrite=True)
    action = "created" if old is None else "unchanged" if req.notify is None else "updated"
    log.add("notification block", f"{ErpBackupNotifications.get_block_type_slug()}/{NOTIFY_BLOCK}",
            f"{action} ({len(urls)} target(s))")
    return block_id


def _timezone(client: Any, req: SetupRequest, log: _Log) -> str:
    from prefect.variables import Variable

    current = Variable.get(TZ_VARIABLE, default=None)
    tz = req.timezone or (current if isinstance(current, str) and current else DEFAULT_TZ)
    if tz != current:
        Variable.set(TZ_VARIABLE, tz, overwrite=True)
    _retime_deployments(client, tz, log)
    return tz


def _retime_deployments(client: Any, tz: str, log: _Log) -> None:
    """Deployments already deployed keep their cron but move to ``tz`` (in place)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId, FlowFilterName
    from prefect.client.schemas.schedules import CronSchedule

    flows = client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(like_=FLOW_PREFIX)))
    names = {f.id: f.name for f in flows if f.name.startswith(FLOW_PREFIX)}
    if not names:
        return
    for dep in client.read_deployments(flow_filter=FlowFilter(id=FlowFilterId(any_=list(names)))):
        for sched in client.read_deployment_schedules(dep.id):
            s = sched.schedule
            if isinstance(s, CronSchedule) and s.timezone != tz:
                client.update_deployment_schedule(dep.id, sched.id, schedule=CronSchedule(
                    cron=s.cron, timezone=tz, day_or=s.day_or))
                log.add("schedule", f"{names[dep.flow_id]}/{dep.name}", f"{s.cron} now in {tz}")


def validate_automations(specs: list[dict[str, Any]]) -> list[Any]:
    """Prefect's automation models of ``specs``; the first problem as a ConfigError."""
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import ValidationError

    cores = []
    for spec in specs:
        try:
            cores.append(AutomationCore.model_validate(spec))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"automation {spec.get('name')!r}: {where}: {err['msg']}",
                              hint="fix deployments/automations.yaml (Prefect's automation format)") from e
    return cores


def _same_name(client: Any, name: str) -> list[str]:
    """Ids of the automations called ``name``, oldest first."""
    r = client.request("POST", "/automations/filter",
                       json={"sort": "CREATED_DESC", "automations": {"name": {"any_": [name]}}})
    return [a["id"] for a in reversed(r.json()) if a.get("name") == name]


def _automations(client: Any, specs: list[dict[str, Any]], log: _Log) -> None:
    for core in validate_automations(specs):
        same = _same_name(client, core.name)
        if not same:
            client.create_automation(core)
            log.add("automation", core.name, "created")
            continue
        client.update_automation(same[0], core)  # the oldest: the one operators know (its id, its history)
        for dup in same[1:]:  # two setups at once, or a hand-made copy
            client.delete_automation(dup)
        log.add("automation", core.name, "updated" + (f", {len(same) - 1} duplicate(s) removed" if same[1:] else ""))


NOTIFY_ENV = "ERP_BACKUP_NOTIFY"


def notify_urls(args: list[str] | None) -> tuple[str, ...] | None:
    """The targets: ``--notify`` values, where ``env:NAME`` reads the URLs (whitespace-separated) from
    the environment variable NAME, so tokens and passwords stay out of argv (``ps`` shows argv to
    every user); without ``--notify``, $ERP_BACKUP_NOTIFY if set; else None (keep the stored ones)."""
    if not args:
        env = os.environ.get(NOTIFY_ENV, "").split()
        return tuple(check_notify_url(u) for u in env) if env else None
    urls: list[str] = []
    for a in args:
        if a.startswith("env:"):
            name = a[4:]
            value = os.environ.get(name, "").split()
            if not value:
                raise ConfigError(f"--notify {a}: environment variable {name} is not set or empty",
                                  hint="export it with the Apprise URL(s), separated by spaces")
            urls += value
        else:
            urls.append(a)
    return tuple(check_notify_url(u) for u in urls)


def setup_from_args(notify: list[str] | None, timezone: str | None, late_incremental: str | None,
                    late_full: str | None, automations_file: str | None,
                    run: Callable[[SetupRequest], SetupReport] = run_setup) -> SetupReport:
    """Check every argument before talking to the server, then run setup."""
    req = SetupRequest(
        notify=notify_urls(notify),
        timezone=check_timezone(timezone) if timezone else None,
        late_incremental_s=parse_duration(late_incremental, what="--late-incremental")
        if late_incremental else DEFAULT_LATE_INCREMENTAL_S,
        late_full_s=parse_duration(late_full, what="--late-full") if late_full else DEFAULT_LATE_FULL_S,
        automations_file=Path(automations_file) if automations_file
        else Path(os.environ.get("ERP_BACKUP_AUTOMATIONS", AUTOMATIONS_FILE)),
    )
    return run(req)
