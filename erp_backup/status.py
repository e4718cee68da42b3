"""``erp-backup status``: what an operator (or a monitoring check) wants to know, from the repository alone.

No Prefect import and no database connection: the manifests (``LocalRepository.scan``), the restore
test's record (``.restore-test.json``) and the file system. The JSON is built for machines: every
measure has its value, its target where there is one, and ``problems`` lists every finding with a
``severity`` (``critical`` / ``warning``) and the ``check`` it comes from, so a Nagios plugin maps it to
its exit code without parsing text.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from erp_backup import tiers
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import Settings
from erp_backup.core import chain
from erp_backup.core.models import BackupJob, Manifest
from erp_backup.core.objectives import human
from erp_backup.tables import human as human_bytes
from erp_backup.tables import print_table

TEST_MAX_AGE_S = 35 * 86400  # the restore test is monthly: older than this, it was missed


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verification_of(settings: Settings, m: Manifest, chain_problem: str | None) -> dict[str, Any]:
    """The last verification outcome of set ``m``: the one place that reads it. The record the verify
    runs keep beside the set (``<local_dir>/<id>.verified.json``: ``result``, ``level``, ``at``,
    ``problems``; issue #9) when there is one; otherwise derived — a committed set passed the
    verification its backup ran before the commit (``[backup] verify``). A broken chain fails either way."""
    if chain_problem is not None:
        return {"outcome": "failed", "level": None, "at": None, "reason": f"it {chain_problem}",
                "source": "chain check"}
    path = settings.storage.local_dir / f"{m.id.value}.verified.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(1 << 20)
        doc = json.loads(raw)
    except FileNotFoundError:
        doc = None
    except (OSError, ValueError):
        doc = {}
    if doc is not None:
        if not isinstance(doc, dict) or doc.get("id") != m.id.value or doc.get("result") not in ("passed", "failed"):
            return {"outcome": "failed", "level": None, "at": None, "source": path.name,
                    "reason": f"its verification record {path.name} cannot be read"}
        problems = doc.get("problems") if isinstance(doc.get("problems"), list) else []
        return {"outcome": doc["result"], "level": doc.get("level"), "at": doc.get("at"), "source": path.name,
                "reason": (str(problems[0]) if problems else "failed") if doc["result"] == "failed" else None}
    level = settings.backup.verify
    if level == "none":
        return {"outcome": "unknown", "level": None, "at": None, "reason": "[backup] verify is none",
                "source": "derived (no verification record)"}
    return {"outcome": "passed", "level": level, "at": _iso(m.finished_at), "reason": None,
            "source": "derived: verified before its commit (no verification record)"}


def _dir_bytes(path: Path) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


def remote_usage(settings: Settings) -> dict[str, Any] | None:
    """Hook for the off-site store's usage (issue #8): None until it is wired."""
    del settings
    return None


def collect(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    repo = LocalRepository(settings.storage.local_dir)
    found = repo.scan()
    ids = found.committed_ids
    problems: list[dict[str, str]] = []

    def problem(severity: str, check: str, message: str) -> None:
        problems.append({"severity": severity, "check": check, "message": message})

    kinds: dict[str, Any] = {}
    restorable: list[Manifest] = []
    for m in found.committed:
        if chain.chain_problem(m, ids, found.damaged) is None:
            restorable.append(m)
    for job in BackupJob:
        of_kind = [m for m in found.committed if m.job is job]
        if not of_kind:
            kinds[job.value] = None
            continue
        m = max(of_kind, key=lambda x: x.id)
        cp = chain.chain_problem(m, ids, found.damaged)
        ver = verification_of(settings, m, cp)
        kinds[job.value] = {"set": m.id.value, "finished_at": _iso(m.finished_at),
                            "age_seconds": round((now - m.finished_at).total_seconds(), 1),
                            "size_bytes": m.size_bytes, "verification": ver}
        if ver["outcome"] == "failed":
            problem("critical", "verification", f"the newest {job.value} set {m.id} failed: {ver['reason']}")
    newest_any = max(restorable, key=lambda x: x.finished_at, default=None)
    crit, non = tiers.of(settings)
    # the critical tier's data is the database (when the sets hold one) and its paths
    with_db = [m for m in restorable if m.database is not None]
    newest = max(with_db, key=lambda x: x.finished_at, default=None) \
        if any(m.database is not None for m in found.committed) else newest_any
    rpo_s = None if newest is None else round((now - newest.finished_at).total_seconds(), 1)
    target = crit.rpo_s
    rpo = {"seconds": rpo_s, "target_seconds": target, "set": newest.id.value if newest else None,
           "ok": rpo_s is not None and rpo_s <= target}
    if newest is None:
        problem("critical", "rpo", f"no restorable backup set in {repo.root}")
    elif not rpo["ok"]:
        problem("critical", "rpo", f"the newest restorable set {newest.id} is {human(rpo_s or 0)} old, more than "
                f"the RPO target {human(target)}")
    any_s = None if newest_any is None else round((now - newest_any.finished_at).total_seconds(), 1)
    tier_docs = {crit.name: tiers.rpo_doc(crit, rpo_s, newest.id.value if newest else None),
                 non.name: tiers.rpo_doc(non, any_s, newest_any.id.value if newest_any else None)}
    if newest_any is not None and not tier_docs[non.name]["ok"]:
        problem("critical", "rpo_non_critical", f"the non-critical tier's newest restorable set {newest_any.id} is "
                f"{human(any_s or 0)} old, more than its RPO target {human(non.rpo_s)}")
    for d in found.damaged:
        problem("warning", "damaged", f"set {d.id} is damaged: {d.reason}")
    from erp_backup import safety

    for copy in safety.copies(repo.root):
        state = safety.state_of(copy)
        foreign = safety.not_ours(copy)
        if foreign:
            problem("warning", "foreign_safety_copy", f"{copy} looks like a safety copy but erp-backup did not make "
                    f"it ({foreign}): never put it back; find out who made it and remove it")
        elif state in safety.NEEDS_PUT_BACK:
            problem("critical", "in_place_restore", f"an in-place restore left its safety copy {copy} in state "
                    f"{state}: the project may be half restored — `erp-backup restore --put-back {copy} --yes`")
        elif state == "damaged":
            problem("warning", "in_place_restore", f"the safety copy {copy} has a damaged record "
                    f"({safety.RECORD}): it is kept; look at it by hand (README: put back by hand) and remove it")
        elif state == "copying":
            problem("warning", "in_place_restore", f"an in-place restore stopped while making its safety copy "
                    f"{copy}: nothing was changed, but its stop commands may have left services stopped")
    from erp_backup.recovery_record import last_result

    test = last_result(repo.root)
    test_doc: dict[str, Any] | None = None
    if test is None:
        problem("warning", "restore_test", "no restore test recorded: run `erp-backup restore-test`")
    else:
        test_doc = {k: test.get(k) for k in ("tested_at", "ok", "set", "rto_seconds", "rto_extrapolated_seconds",
                                              "rto_target_seconds", "rpo_seconds", "max_gap_seconds",
                                              "rpo_target_seconds", "problems")}
        try:
            at = datetime.strptime(str(test.get("tested_at")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            test_doc["age_seconds"] = round((now - at).total_seconds(), 1)
        except ValueError:
            test_doc["age_seconds"] = None
        if not test.get("ok"):
            first = (test.get("problems") or ["failed"])[0]
            when = f" ({test['tested_at']})" if test.get("tested_at") else ""
            problem("critical", "restore_test", f"the last restore test{when} failed: {first}")
        elif (test_doc["age_seconds"] or 0) > TEST_MAX_AGE_S:
            problem("warning", "restore_test", f"the last restore test is {human(test_doc['age_seconds'])} old")
    local: dict[str, Any] = {"path": str(repo.root), "sets": len(found.committed) + len(found.damaged),
                             "bytes": sum(_dir_bytes(repo.set_dir(i)) for i in found.ids)}
    try:
        st = os.statvfs(repo.root)
        local["free_bytes"] = st.f_bavail * st.f_frsize
        local["filesystem_bytes"] = st.f_blocks * st.f_frsize
    except OSError:
        local["free_bytes"] = local["filesystem_bytes"] = None
    return {"ok": not any(p["severity"] == "critical" for p in problems), "checked_at": _iso(now),
            "repository": str(repo.root), "kinds": kinds, "rpo": rpo, "tiers": tier_docs, "restore_test": test_doc,
            "usage": {"local": local, "remote": remote_usage(settings)}, "problems": problems}


def print_human(doc: dict[str, Any]) -> None:
    rows = []
    for kind, k in doc["kinds"].items():
        if k is None:
            rows.append({"kind": kind, "newest": "-", "age": "-", "verification": "-"})
        else:
            v = k["verification"]
            rows.append({"kind": kind, "newest": k["set"], "age": human(k["age_seconds"]),
                         "verification": f"{v['outcome']}" + (f" ({v['level']})" if v.get("level") else "")})
    print_table(rows)
    r = doc["rpo"]
    print(f"\nRPO           {human(r['seconds']) if r['seconds'] is not None else '-'} "
          f"(target {human(r['target_seconds'])}; newest restorable set {r['set'] or '-'})")
    for name, tier in (doc.get("tiers") or {}).items():
        sec = tier["seconds"]
        print(f"RPO {name:<13} {human(sec) if sec is not None else '-'} (target {human(tier['target_seconds'])}, "
              f"RTO target {human(tier['rto_target_seconds'])}: {tier['covers']}) {'ok' if tier['ok'] else 'MISSED'}")
    t = doc["restore_test"]
    if t is None:
        print("restore test  never run")
    else:
        rto = t.get("rto_extrapolated_seconds")
        print(f"restore test  {t['tested_at'] or '-'} {'passed' if t['ok'] else 'FAILED'} of {t['set'] or '-'}: "
              f"RTO {human(rto) if rto is not None else '-'}, RPO "
              f"{human(t['rpo_seconds']) if t.get('rpo_seconds') is not None else '-'}, largest gap "
              f"{human(t['max_gap_seconds']) if t.get('max_gap_seconds') is not None else '-'}")
    loc = doc["usage"]["local"]
    free = f", {human_bytes(loc['free_bytes'])} free" if loc.get("free_bytes") is not None else ""
    print(f"local usage   {human_bytes(loc['bytes'])} in {loc['sets']} set(s) in {loc['path']}{free}")
    print(f"remote usage  {'not configured' if doc['usage']['remote'] is None else doc['usage']['remote']}")
    for p in doc["problems"]:
        print(f"{p['severity']}: {p['message']}")
