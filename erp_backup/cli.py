"""``erp-backup``: the outermost shell.

Read-only commands (``list``, ``show``) answer from the manifests without
importing Prefect. The others check their input first (one-line errors, nothing
written, no Prefect start-up for a typo), then run through ``erp_backup.runner``: as a
flow run on the Prefect server when one is configured (``PREFECT_API_URL``), else in
this process without Prefect (``erp_backup.jobs``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from erp_backup import cli_quiet, reaper
from erp_backup.core.errors import BackupError, ConfigError
from erp_backup.tables import human as _human
from erp_backup.tables import print_table

# the ephemeral API server gets 2 minutes to start (Prefect's default, 20 s, is not enough on a
# loaded host: the run then died with a traceback instead of doing its job)
for _k, _v in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
               ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")):
    os.environ.setdefault(_k, _v)


def _err(msg: str) -> None:
    print(f"erp-backup: error: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    from erp_backup.config import DEFAULT_CONFIG, read_dotenv, render_config
    from erp_backup.core.dburl import parse_database_url

    path = Path(args.config or os.environ.get("ERP_BACKUP_CONFIG") or DEFAULT_CONFIG)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} already exists", hint="pass --force to overwrite it")
    root = Path(args.root).resolve()
    url = None
    dot = read_dotenv(root / ".env").get("DATABASE_URL")
    note = ""
    if dot:
        parsed = parse_database_url(dot, key=f"DATABASE_URL in {root / '.env'}")
        if parsed.password:
            note = f"DATABASE_URL found in {root / '.env'} (with a password: read from there at run time)"
        else:
            url = dot if parsed.engine != "sqlite" else f"sqlite:///{(root / parsed.name).resolve()}" \
                if not parsed.name.startswith("/") else dot
            note = f"database URL taken from {root / '.env'}"
    elif (root / "db.sqlite3").exists():
        url = f"sqlite:///{root / 'db.sqlite3'}"
        note = "found db.sqlite3 in the project"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_config(root, Path(args.local_dir), url))
    print(f"wrote {path}" + (f" ({note})" if note else ""))
    return 0


def _settings(args: argparse.Namespace) -> Any:
    from erp_backup.config import load_settings

    return load_settings(args.config)


def cmd_list(args: argparse.Namespace) -> int:
    from erp_backup.adapters.storage.local import LocalRepository
    from erp_backup.core import chain

    s = _settings(args)
    if args.remote:
        from erp_backup.remote_cli import list_remote

        return list_remote(s, args.json)
    from erp_backup import verdicts
    from erp_backup.core.objectives import human

    repo = LocalRepository(s.storage.local_dir)
    found = repo.scan()
    ids = found.committed_ids
    failed = verdicts.failed(repo.root)  # the last recorded verification (verify runs, verify_backup.sh)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for m in found.committed:
        problem = chain.chain_problem(m, ids, found.damaged)
        verified = ("FAILED" if m.id in failed else
                    "passed" if verdicts.record_path(repo.root, m.id.value).exists() else None)
        rows.append({
            "id": m.id.value,
            "kind": m.kind.value,
            "tags": ",".join(m.tags),
            "parent": m.parent.value if m.parent else None,
            "finished_at": m.finished_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "age": human(max(0.0, (now - m.finished_at).total_seconds())),
            "size_bytes": m.size_bytes,
            "files": m.stats.files_scanned,
            "changed": m.stats.files_changed,
            "status": "committed" if problem is None else "broken",
            "verified": verified,
            "reason": None if problem is None else f"it {problem}",
            "verify_problem": failed.get(m.id),
        })
    for d in found.damaged:  # nothing of its manifest is trusted: only what its directory name says
        rows.append({"id": d.id.value, "kind": d.id.kind.value, "tags": "", "parent": None, "finished_at": None,
                     "age": None, "size_bytes": None, "files": None, "changed": None, "status": "damaged",
                     "verified": None, "reason": d.reason, "verify_problem": None})
    rows.sort(key=lambda r: r["id"])
    partials = [p.name for p in repo.partials()]
    if args.json:
        print(json.dumps({"sets": rows, "incomplete": partials}, indent=2))
        return 0
    if not rows:
        print(f"no backup sets in {repo.root}")
    else:
        print_table([{**{k: ("-" if v is None else v) for k, v in r.items() if k not in ("reason", "verify_problem")},
                      "size_bytes": "-" if r["size_bytes"] is None else _human(r["size_bytes"])} for r in rows])
    for r in rows:
        if r["reason"]:
            print(f"({r['status']}: {r['id']}: {r['reason']} — `erp-backup verify {r['id']}` says more; "
                  "restore from another set)")
        elif r["verify_problem"]:
            print(f"(verification FAILED: {r['id']}: {r['verify_problem']} — a restore without --backup passes it "
                  "over)")
    for p in partials:
        print(f"(incomplete, ignored: {p})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from erp_backup.adapters.storage.local import LocalRepository, damaged_error
    from erp_backup.core import chain
    from erp_backup.core.chain import Damaged
    from erp_backup.core.errors import StorageError
    from erp_backup.core.models import BackupId

    s = _settings(args)
    repo = LocalRepository(s.storage.local_dir)
    bid = BackupId(args.id)
    found = repo.inspect(bid)
    if found is None:
        raise StorageError(f"backup set {bid} not found in {repo.root}",
                           hint="see `erp-backup list` for the committed sets")
    if isinstance(found, Damaged):
        if not args.json:
            print(f"id           {bid}\nstatus       DAMAGED: {found.reason}")
        raise damaged_error(found)
    m = repo.read_manifest(bid)
    if args.json:
        print((repo.set_dir(m.id) / "manifest.json").read_text())
        return 0
    deps = {d: repo.inspect(d) for d in m.depends_on}
    problem = chain.chain_problem(m, [d for d, x in deps.items() if x is not None and not isinstance(x, Damaged)],
                                  [x for x in deps.values() if isinstance(x, Damaged)])
    status = "committed" if problem is None else f"BROKEN: it {problem}"
    print(f"id           {m.id}\nstatus       {status}\nkind         {m.kind.value} {' '.join(m.tags)}")
    print(f"parent       {m.parent or '-'}\nbase         {m.base or '-'}\ndepends on   "
          f"{', '.join(d.value for d in m.depends_on) or '-'}")
    print(f"started      {m.started_at:%Y-%m-%dT%H:%M:%S}Z\nfinished     {m.finished_at:%Y-%m-%dT%H:%M:%S}Z")
    print(f"host         {m.host}   tool {m.tool_version}\nsource       {m.source_root}")
    st = m.stats
    print(f"files        {st.files_scanned} in index, {st.files_changed} archived, {st.files_deleted} deleted")
    print(f"bytes        {_human(st.bytes_in)} in -> {_human(st.bytes_out)} out in {st.duration_s:.2f} s")
    if m.database:
        d = m.database
        print(f"database     {d.engine} {d.database} (server {d.server_version}, {d.dump_format}, "
              f"{len(d.tables)} tables, {sum(d.tables.values())} rows)")
    if m.recipients:
        print(f"encrypted to {', '.join(m.recipients)}")
    for a in m.artifacts:
        print(f"artifact     {a.name}  {_human(a.size)}  sha256 {a.sha256[:16]}…  "
              f"{a.compression}{'+' + a.encryption if a.encryption else ''}")
    for p, why in m.skipped:
        print(f"skipped      {p}: {why}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from erp_backup.backup import preflight
    from erp_backup.core.models import BackupJob

    s = _settings(args)
    job = BackupJob(args.kind)
    checked = preflight(s, job.kind, job.tags)  # before Prefect starts: bad input costs a second, not ten
    from erp_backup import jobs, runner

    flow = runner.lazy("erp_backup.flows.backup", "CLI_FLOWS", job)
    row = runner.run(flow, jobs.backup_job(job), settings=s, checked=checked)
    print(row["id"])
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from erp_backup.adapters.storage.local import LocalRepository
    from erp_backup.core.models import BackupId
    from erp_backup.verify import VerifyFailed

    s = _settings(args)
    if args.remote:
        return _verify_remote(s, args)
    repo = LocalRepository(s.storage.local_dir)
    for i in args.ids:
        if not repo.exists(BackupId(i)):
            raise BackupError(f"backup set {i} not found in {repo.root}", hint="see `erp-backup list`")
    from erp_backup import jobs, runner

    flow = runner.lazy("erp_backup.flows.restore", "verify_checked_flow")
    try:
        rows = runner.run(flow, jobs.verify_job, settings=s, backup_ids=args.ids or None,
                          level="quick" if args.quick else "full")
    except VerifyFailed as e:
        print_table(e.rows)  # every set, passed or not, before the error line
        raise
    print_table(rows)
    return 0


def cmd_verify_log(args: argparse.Namespace) -> int:
    if args.tail < 1:  # lines[-0:] is every line, lines[--5:] skips the first five
        raise ConfigError(f"--tail {args.tail}: must be 1 or more", hint="e.g. --tail 50")
    s = _settings(args)
    path = s.verify.log
    if args.path:
        print(path)
        return 0
    if not path.exists():
        print(f"no verification log yet at {path}")
        return 0
    from collections import deque

    with path.open(encoding="utf-8", errors="replace") as f:
        for line in deque(f, maxlen=args.tail):
            print(line, end="")
    return 0


def _verify_remote(s: Any, args: argparse.Namespace) -> int:
    from erp_backup import runner
    from erp_backup.core.models import BackupId
    from erp_backup.flows.remote import verify_remote_checked_flow
    from erp_backup.remote_cli import plain_verify_remote
    from erp_backup.remote_store import remote_config
    from erp_backup.verify import VerifyFailed

    remote_config(s)
    ids = [BackupId(i).value for i in args.ids] or None
    try:
        rows = runner.run(verify_remote_checked_flow, plain_verify_remote, settings=s, backup_ids=ids)
    except VerifyFailed as e:
        print_table(e.rows)
        raise
    print_table(rows)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from erp_backup import runner
    from erp_backup.core.models import BackupId
    from erp_backup.flows.remote import upload_checked_flow
    from erp_backup.remote_cli import plain_upload
    from erp_backup.remote_store import remote_config

    s = _settings(args)
    remote_config(s)
    ids = [BackupId(i).value for i in args.ids] or None
    row = runner.run(upload_checked_flow, plain_upload, settings=s, backup_ids=ids)
    print_table([row])
    return 0


def _restore_remote(s: Any, args: argparse.Namespace) -> int:
    from erp_backup import restore as restorer
    from erp_backup import runner
    from erp_backup.flows.remote import restore_from_remote_checked_flow
    from erp_backup.remote_cli import plain_restore_from_remote
    from erp_backup.remote_restore import live_guard, precheck
    from erp_backup.remote_store import remote_config

    remote_config(s)
    request = restorer.RestoreRequest(
        target_dir=args.target_dir, backup_id=args.backup, at=_parse_time(args.at) if args.at else None,
        target_database=args.target_database, force=args.force, yes=args.yes, jobs=args.jobs,
        keep_setid=args.keep_setid)
    precheck(request, args.scratch_dir)  # before Prefect starts: a typo costs a second
    live_guard(s, request)
    row = runner.run(restore_from_remote_checked_flow, plain_restore_from_remote, settings=s, request=request,
                     scratch_dir=args.scratch_dir)
    print_table([row])
    return 0


def _parse_time(text: str, option: str = "--at") -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ConfigError(f"{option} {text!r} is not an ISO time", hint="e.g. 2026-11-28T14:30:00Z") from e
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def cmd_restore(args: argparse.Namespace) -> int:
    from erp_backup import restore as restorer
    from erp_backup.adapters.storage.local import LocalRepository

    if args.put_back:
        from erp_backup.recovery_cli import put_back

        return put_back(args, _settings(args))
    if args.in_place:
        from erp_backup.recovery_cli import restore_in_place

        return restore_in_place(args, _settings(args), _parse_time(args.at) if args.at else None)
    if args.files_only or args.database_only:
        raise ConfigError("--files-only/--database-only go with --in-place",
                          hint="for a restore elsewhere give only --target-dir or only --target-database")
    s = _settings(args)
    if args.from_remote:
        return _restore_remote(s, args)
    request = restorer.RestoreRequest(
        target_dir=args.target_dir, backup_id=args.backup, at=_parse_time(args.at) if args.at else None,
        target_database=args.target_database, force=args.force, yes=args.yes, jobs=args.jobs,
        keep_setid=args.keep_setid, verify=args.verify or s.restore.verify, allow_old=args.allow_old)
    try:
        plan = restorer.preflight(LocalRepository(s.storage.local_dir), request, live=s.live_database(), settings=s,
                                  max_age_s=s.restore.max_age)
    except (BackupError, OSError) as e:  # a refused set (signature, checksum, permission): security team
        from erp_backup.alerts import emit_cli_refusal

        emit_cli_refusal(args.backup, e)
        raise
    from erp_backup import jobs, runner

    flow = runner.lazy("erp_backup.flows.restore", "restore_checked_flow")
    row = runner.run(flow, jobs.restore_job, settings=s, plan=plan)
    print_table([row])
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from erp_backup import prune as pruning

    s = _settings(args)
    where = "remote" if args.remote else "all" if args.all else "local"
    now = _parse_time(args.now, "--now") if args.now else None
    pruning.check_request(s, where, dry_run=args.dry_run, now=now)  # before Prefect starts
    from erp_backup import runner

    flow = runner.lazy("erp_backup.flows.prune", "prune_checked_flow")  # Prefect imported only if it runs
    rows = runner.run(flow, pruning.plain_prune, settings=s, where=where, dry_run=args.dry_run, now=now)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if rows:
        print_table(rows)
    else:
        print("no backup sets")
    removed = sum(1 for r in rows if r["action"] == "remove")
    print(f"{'dry run: would remove' if args.dry_run else 'removed'} {removed}, kept {len(rows) - removed}")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from erp_backup.prefect_setup import setup_from_args
    from erp_backup.tiers import setup_windows

    rep = setup_from_args(args.notify, args.timezone, args.late_incremental, args.late_full, args.automations,
                          notify_security=args.notify_security, windows=setup_windows(args.config))
    print_table(list(rep.rows))
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def cmd_block_gpg(args: argparse.Namespace) -> int:
    from erp_backup import gpg_block

    print(gpg_block.save(gpg_block.spec_from_args(args), overwrite=args.overwrite))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from erp_backup.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    from erp_backup.core.models import BackupJob

    p = argparse.ArgumentParser(prog="erp-backup", description="Backup and disaster recovery for a Django ERP.")
    p.add_argument("--config", help="config TOML (default: $ERP_BACKUP_CONFIG or /etc/erp-backup/config.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("init", help="write a commented config file with the defaults")
    sp.add_argument("--root", default=".", help="the Django project directory (default: .)")
    sp.add_argument("--local-dir", default="/var/backups/django_erp", help="backup directory")
    sp.add_argument("--force", action="store_true", help="overwrite an existing config")
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("backup", help="run a backup flow and print the new set's id")
    sp.add_argument("kind", choices=[j.value for j in BackupJob])
    sp.set_defaults(func=cmd_backup)

    sp = sub.add_parser("list", help="list committed backup sets (no Prefect start-up)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--remote", action="store_true", help="the sets in the [remote] store instead")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("show", help="show one set's manifest summary")
    sp.add_argument("id")
    sp.add_argument("--json", action="store_true", help="print the whole manifest.json")
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("verify", help="verify sets (all by default): checksums, archives, key files, dumps")
    sp.add_argument("ids", nargs="*")
    sp.add_argument("--quick", action="store_true", help="checksums only")
    sp.add_argument("--remote", action="store_true",
                    help="the remote copies: stream every object, check sizes and SHA-256 (nothing written)")
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser("verify-log", help="show the verification log's newest lines (no Prefect start-up)")
    sp.add_argument("--path", action="store_true", help="print the log's path only")
    sp.add_argument("--tail", type=int, default=20, help="how many lines (default 20)")
    sp.set_defaults(func=cmd_verify_log)

    sp = sub.add_parser("restore", help="restore a set into a directory and/or a database")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--backup", help="set id (default: the newest)")
    g.add_argument("--at", help="ISO time: the newest set finished at or before it")
    sp.add_argument("--target-dir", help="directory for the files (must be empty unless --force)")
    sp.add_argument("--target-database", help="database URL without password (SQLite: the file path URL)")
    sp.add_argument("--force", action="store_true", help="write over a non-empty target / existing database")
    sp.add_argument("--yes", action="store_true", help="confirm restoring into the live database")
    sp.add_argument("--jobs", type=int, default=1,
                    help="parallel restore jobs (PostgreSQL; MariaDB: data sessions, default 2)")
    sp.add_argument("--keep-setid", action="store_true",
                    help="restore setuid/setgid bits as recorded (default: dropped, with a warning)")
    sp.add_argument("--from-remote", action="store_true",
                    help="from the [remote] store (needs --backup or --at; no local backup directory needed)")
    sp.add_argument("--scratch-dir", help="with --from-remote: where the chain is downloaded first "
                    "(default: $TMPDIR); removed afterwards")
    from erp_backup.recovery_cli import add_recovery_parsers, add_restore_flags

    add_restore_flags(sp)
    sp.set_defaults(func=cmd_restore)
    add_recovery_parsers(sub)

    sp = sub.add_parser("upload", help="send committed sets missing remotely (default: the catch-up window)")
    sp.add_argument("ids", nargs="*")
    sp.set_defaults(func=cmd_upload)

    sp = sub.add_parser("block", help="create the Prefect blocks of a scripted install (secrets from the environment)")
    block_sub = sp.add_subparsers(dest="block_kind", required=True)
    from erp_backup import gpg_block
    from erp_backup.remote_cli import add_block_parsers

    gpg_block.add_parser(block_sub)
    block_sub.choices["gpg"].set_defaults(func=cmd_block_gpg)
    add_block_parsers(block_sub)  # s3, ftp

    sp = sub.add_parser("prune", help="apply the retention policy: remove expired sets (local by default)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--remote", action="store_true", help="the remote store's sets only")
    g.add_argument("--all", action="store_true", help="local and remote sets")
    sp.add_argument("--dry-run", action="store_true", help="print the plan, remove nothing")
    sp.add_argument("--now", help="ISO time to judge ages at (with --dry-run): what will a prune then remove?")
    sp.add_argument("--json", action="store_true", help='one JSON object per set: {"id","where","action","reason"}')
    sp.set_defaults(func=cmd_prune)
    sp = sub.add_parser("setup", help="prepare the Prefect server (PREFECT_API_URL): work pool, concurrency "
                        "limit, block types, notification block, automations; idempotent")
    sp.add_argument("--notify", action="append", metavar="URL",
                    help="Apprise URL of an alert target (repeat for several; replaces the stored ones): "
                    "mailto://, dingtalk://, wecombot://, feishu://, slack://, twilio://, json://; "
                    "env:NAME reads them from $NAME (keeps tokens out of the process list); "
                    "default $ERP_BACKUP_NOTIFY, else the stored ones. These are the administrators: every alert")
    sp.add_argument("--notify-security", action="append", metavar="URL",
                    help="Apprise URL of the security team (repeat for several; replaces the stored ones): they get "
                    "integrity, signature, permission and restore-test failures; env:NAME as for --notify; "
                    "`none` removes them; default $ERP_BACKUP_NOTIFY_SECURITY, else the stored ones")
    sp.add_argument("--timezone", help="timezone of the schedules (default: the stored one, else Asia/Shanghai)")
    sp.add_argument("--late-incremental", metavar="DURATION",
                    help="alert when no incremental completed for this long (default: the critical tier's "
                    "RPO plus a twelfth, at least 15m: 75m for 1h)")
    sp.add_argument("--late-full", metavar="DURATION", help="alert when no full completed for this long (default: "
                    "the non-critical tier's RPO plus a twelfth: 26h for 24h)")
    sp.add_argument("--automations", metavar="FILE", help="automations YAML (default deployments/automations.yaml)")
    sp.set_defaults(func=cmd_setup)

    sp = sub.add_parser("demo", help="sample ERP: full, incremental, differential, restore each, check")
    sp.add_argument("--dir", help="work directory (default: a new temporary directory)")
    sp.add_argument("--keep", action="store_true", help="keep the work directory")
    sp.set_defaults(func=cmd_demo)
    return p


_FINAL: list[str] = []


def _print_final() -> None:
    for msg in _FINAL:
        if msg:
            _err(msg)
        else:
            print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # Prefect's background services (events, logs) may print while the interpreter exits;
    # the error line is printed by an exit handler registered before any of theirs, so it
    # runs after them and stays the last line an operator (or a script) sees.
    import atexit

    atexit.register(_print_final)
    args = build_parser().parse_args(argv)
    cli_quiet.install()  # a failed job: its table, then one error line (no traceback, no repeats)
    try:
        # before anything is spawned: a killed run leaves no process behind
        reaper.guard(args.command, remote=bool(getattr(args, "remote", False)))
        return int(args.func(args) or 0)
    except BackupError as e:
        if getattr(e, "after_partial_output", False):  # Prefect's API log handler leaves half a line
            _FINAL.append("")
        _FINAL.append(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # `erp-backup list | head`: the reader left; no traceback, like any Unix tool
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush finds no pipe
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
