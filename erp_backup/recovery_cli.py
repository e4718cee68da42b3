"""CLI of issue #10: ``restore --in-place``, ``restore-test``, ``status`` (registered by ``cli.build_parser``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from erp_backup.core.errors import BackupError, ConfigError
from erp_backup.tables import print_table


def add_restore_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--in-place", action="store_true",
                    help="emergency restore into the project root and the live database: [restore] stop "
                    "commands, a safety copy, restore, start, smoke check; needs --yes")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--files-only", action="store_true", help="with --in-place: only the files")
    g.add_argument("--database-only", action="store_true", help="with --in-place: only the database")
    sp.add_argument("--verify", choices=["quick", "full"],
                    help="how the newest valid set is checked when no --backup/--at is given "
                    "(default: [restore] verify)")
    sp.add_argument("--allow-old", action="store_true",
                    help="restore the newest valid set even if it is older than [restore] max_age")
    sp.add_argument("--put-back", metavar="SAFETY_DIR",
                    help="put an in-place restore's safety copy back (stop, files, database, start); needs --yes")


def add_recovery_parsers(sub: Any) -> None:
    sp = sub.add_parser("restore-test", help="restore the newest valid set into scratch, check it, measure RTO/RPO")
    sp.add_argument("--backup", help="set id (default: the newest valid set)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--from-remote", action="store_true",
                   help="test the off-site copy (the default when [remote] is configured)")
    g.add_argument("--local", action="store_true", help="test the local sets even when [remote] is configured")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(func=cmd_restore_test)

    sp = sub.add_parser("status", help="newest set per kind, RPO, last restore test, usage (no Prefect start-up)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print the status as JSON")
    g.add_argument("--nagios", action="store_true",
                   help="one Nagios/Icinga plugin line; exit 0/1/2/3 = OK/WARNING/CRITICAL/UNKNOWN ([nagios])")
    sp.set_defaults(func=cmd_status)


def _settings(args: argparse.Namespace) -> Any:
    from erp_backup.config import load_settings

    return load_settings(args.config)


def restore_in_place(args: argparse.Namespace, s: Any, at: datetime | None) -> int:
    from erp_backup import inplace

    clashes = [f for f, v in (("--target-dir", args.target_dir), ("--target-database", args.target_database),
                              ("--from-remote", getattr(args, "from_remote", False)),
                              ("--force", args.force), ("--keep-setid", args.keep_setid),
                              ("--jobs", args.jobs != 1)) if v]
    if clashes:
        raise ConfigError(f"--in-place restores into the project root and the live database: {clashes[0]} does "
                          "not go with it", hint=f"leave out {', '.join(clashes)}")
    req = inplace.InPlaceRequest(backup_id=args.backup, at=at, files=not args.database_only,
                                 database=not args.files_only, yes=args.yes, verify=args.verify or s.restore.verify,
                                 allow_old=args.allow_old)
    try:
        plan = inplace.plan(s, req)  # before Prefect starts and before anything is stopped
    except (BackupError, OSError) as e:  # a refused set (signature, checksum, permission): security team
        from erp_backup.alerts import emit_cli_refusal

        emit_cli_refusal(req.backup_id, e)
        raise
    for n in plan.restore.notes:
        print(f"note: {n}")
    from erp_backup import runner

    restore_in_place_checked_flow = runner.lazy("erp_backup.flows.restore", "restore_in_place_checked_flow")

    def plain(settings: Any, plan: inplace.InPlacePlan) -> dict[str, Any]:
        rep = inplace.run(settings, plan)
        return {**rep.row(), "steps": rep.rows()}

    try:
        row = runner.run(restore_in_place_checked_flow, plain, settings=s, plan=plan)
    except inplace.InPlaceFailed as e:
        print_table([st.row() for st in e.steps])
        raise
    print_table(row.pop("steps"))
    print_table([row])
    return 0


def put_back(args: argparse.Namespace, s: Any) -> int:
    from erp_backup import inplace

    others = [f for f, v in (("--in-place", args.in_place), ("--backup", args.backup), ("--at", args.at),
                             ("--target-dir", args.target_dir), ("--target-database", args.target_database)) if v]
    if others:
        raise ConfigError(f"--put-back does not go with {others[0]}", hint="give only --put-back DIR --yes")
    copy = inplace.check_put_back(s, args.put_back, yes=args.yes)
    from erp_backup import runner

    put_back_checked_flow = runner.lazy("erp_backup.flows.restore", "put_back_checked_flow")

    def plain(settings: Any, path: str) -> list[dict[str, object]]:
        return [st.row() for st in inplace.put_back(settings, inplace.check_put_back(settings, path, yes=True))]

    try:
        rows = runner.run(put_back_checked_flow, plain, settings=s, path=str(copy.path))
    except inplace.InPlaceFailed as e:
        print_table([st.row() for st in e.steps])
        raise
    print_table(rows)
    return 0


def cmd_restore_test(args: argparse.Namespace) -> int:
    from erp_backup import restore_test as tester

    s = _settings(args)
    from_remote = True if args.from_remote else False if args.local else None
    if from_remote:
        from erp_backup.remote_store import remote_config

        remote_config(s)  # [remote] missing: one line now, not after Prefect started
    if args.backup:
        from erp_backup.core.models import BackupId

        BackupId(args.backup)  # a typo fails here, before Prefect starts
    from erp_backup import runner

    restore_test_checked_flow = runner.lazy("erp_backup.flows.restore_test", "restore_test_checked_flow")

    def plain(settings: Any, backup_id: str | None, from_remote: bool | None) -> dict[str, Any]:
        # progress to stderr, like every in-process job's log: stdout is the result (`--json`: JSON only)
        result = tester.run_restore_test(settings, backup_id, from_remote=from_remote,
                                         log=lambda m: print(m, file=sys.stderr))
        if result.set is not None:  # Prometheus RTO/RPO gauges ([monitoring]), as the flow does
            from erp_backup.monitoring import publish_restore_test_quietly

            problem = publish_restore_test_quietly(settings, result.rto_seconds, result.rpo_seconds)
            if problem:
                print(f"warning: {problem}", file=sys.stderr)
        return tester.raise_if_failed(result).to_json()

    try:
        doc = runner.run(restore_test_checked_flow, plain, settings=s, backup_id=args.backup, from_remote=from_remote)
    except tester.RestoreTestFailed as e:
        _print_test(e.result.to_json(), args.json)
        raise
    _print_test(doc, args.json)
    return 0


def _print_test(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    from erp_backup import restore_test as tester

    fields = {k: doc.get(k) for k in ("ok", "set", "rto_seconds", "rto_extrapolated_seconds", "rpo_seconds",
                                      "max_gap_seconds", "max_gap")}
    print_table([fields])
    print_table([{"stage": k, "seconds": v} for k, v in (doc.get("stages") or {}).items()])
    print_table([{"tier": name, "covers": t.get("covers"), "RTO s": t.get("rto_extrapolated_seconds"),
                  "RTO target s": t.get("rto_target_seconds"), "RPO s": t.get("rpo_seconds"),
                  "RPO target s": t.get("rpo_target_seconds"), "verdict": "ok" if t.get("ok") else "MISSED"}
                 for name, t in (doc.get("tiers") or {}).items()])
    for p in doc.get("problems") or []:
        print(f"problem: {p}")
    del tester


def cmd_status(args: argparse.Namespace) -> int:
    from erp_backup import status

    if args.nagios:
        return _nagios(args)
    s = _settings(args)
    doc = status.collect(s)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        status.print_human(doc)
    return 0


def _nagios(args: argparse.Namespace) -> int:
    """The plugin contract: exactly one line on stdout and the exit code; any failure to read the
    status is UNKNOWN (3), never a traceback or our usual error line."""
    from erp_backup import nagios, status, tiers

    try:
        s = _settings(args)
        if not os.access(s.storage.local_dir, os.R_OK | os.X_OK) and s.storage.local_dir.exists():
            raise PermissionError(f"{s.storage.local_dir} is not readable")
        crit, non = tiers.of(s)
        verdict = nagios.evaluate(status.collect(s), s.nagios.thresholds((crit.rpo_s, non.rpo_s)))
    except Exception as e:
        verdict = nagios.unknown(f"cannot read the backup status: {e}")
    print(verdict.line)
    return verdict.code
