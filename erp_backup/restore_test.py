"""The monthly restore test: restore a set into scratch, check it, measure RTO and RPO.

Stages (each timed): ``select`` (the newest set whose chain passes the quick check, or ``--backup``),
``files`` (into a scratch directory in the backup directory), ``database`` (into a scratch database:
``<name>_restore_test_<time>`` on the configured server, ``[restore_test] database_url``, or a SQLite
file in the scratch directory), ``check`` (every path against the snapshot index, every table's rows
against the counts in the set), ``smoke`` (the smoke commands in the restored tree, ``DATABASE_URL``
pointing at the scratch database). The scratch directory and database are dropped whatever happens;
a killed test's are dropped by the next one (it holds ``.restore-test.lock``, so every scratch
database of that prefix is a dead predecessor's).

RTO = select + files + database + smoke (the emergency procedure), extrapolated linearly to the size
of the newest set; RPO = the age of the newest restorable set, and the largest gap between restorable
sets in the last ``rpo_window``. Each data tier (``erp_backup.tiers``) is judged against its own
targets: the critical tier (the database and ``[tiers] critical_paths``) by the stages that bring it
back (select, database, the critical paths' share of files by bytes, smoke) against 4 h / 1 h, the
non-critical tier by the whole restore against 24 h / 24 h. The result is kept next to the sets
(``.restore-test.json``, and a line in ``.restore-test-history.jsonl``) for ``erp-backup status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from erp_backup import commands, encryption, recovery_record, tiers
from erp_backup import restore as restorer
from erp_backup.adapters.databases import scratch as scratchdb
from erp_backup.adapters.databases.base import adapter_for
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import Settings
from erp_backup.core import chain, objectives
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import BackupError, ConfigError, IntegrityError, LockError
from erp_backup.core.models import BackupId, EntryType, Manifest

RECORD = recovery_record.RECORD
LOCK = ".restore-test.lock"
SUFFIX = "_restore_test_"
RTO_STAGES = ("fetch", "select", "files", "database", "smoke")
Log = Callable[[str], object]


@dataclass(frozen=True)
class RestoreTestResult:
    ok: bool
    set: str | None
    tested_at: str
    rto_seconds: float
    rto_extrapolated_seconds: float
    rto_target_seconds: float
    rpo_seconds: float | None
    max_gap_seconds: float | None
    rpo_target_seconds: float
    problems: tuple[str, ...] = ()
    max_gap: str | None = None  # "A → B" of the largest gap
    stages: dict[str, float] = field(default_factory=dict)
    restored_bytes: int = 0
    current_bytes: int = 0
    files_checked: int = 0
    tables_checked: int = 0
    smoke: tuple[dict[str, object], ...] = ()
    scratch_database: str | None = None
    passed_over: tuple[str, ...] = ()
    # per data tier: covers, rto_seconds, rto_extrapolated_seconds, rto_target_seconds, rpo_seconds,
    # rpo_target_seconds, ok
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rows(self) -> list[dict[str, object]]:
        """The artifact's table: one row per measure, with its target and verdict."""
        def verdict(v: float | None, target: float) -> str:
            return "-" if v is None else ("ok" if v <= target else "MISSED")

        def fmt(v: float | None) -> str:
            return "-" if v is None else objectives.human(v)

        rows: list[dict[str, object]] = [
            {"measure": f"stage {k}", "value": f"{v:.2f} s", "target": "-", "verdict": "-"}
            for k, v in self.stages.items()]
        rows += [
            {"measure": "RTO measured", "value": fmt(self.rto_seconds), "target": fmt(self.rto_target_seconds),
             "verdict": verdict(self.rto_seconds, self.rto_target_seconds)},
            {"measure": "RTO extrapolated", "value": fmt(self.rto_extrapolated_seconds),
             "target": fmt(self.rto_target_seconds),
             "verdict": verdict(self.rto_extrapolated_seconds, self.rto_target_seconds)},
            {"measure": "RPO (newest restorable set)", "value": fmt(self.rpo_seconds),
             "target": fmt(self.rpo_target_seconds), "verdict": verdict(self.rpo_seconds, self.rpo_target_seconds)},
            {"measure": f"largest gap ({self.max_gap or '-'})", "value": fmt(self.max_gap_seconds),
             "target": fmt(self.rpo_target_seconds),
             "verdict": verdict(self.max_gap_seconds, self.rpo_target_seconds)},
        ]
        for name, t in self.tiers.items():
            rows += [
                {"measure": f"{name} tier RTO ({t['covers']})", "value": fmt(t["rto_extrapolated_seconds"]),
                 "target": fmt(t["rto_target_seconds"]),
                 "verdict": verdict(t["rto_extrapolated_seconds"], t["rto_target_seconds"])},
                {"measure": f"{name} tier RPO", "value": fmt(t["rpo_seconds"]), "target": fmt(t["rpo_target_seconds"]),
                 "verdict": verdict(t["rpo_seconds"], t["rpo_target_seconds"])},
            ]
        return rows


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


@contextlib.contextmanager
def _exclusive(repo: LocalRepository) -> Iterator[None]:
    repo.ensure()
    fd = os.open(repo.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockError(f"another restore test is running on {repo.root}",
                            hint="wait for it to finish (a killed one frees the lock by itself)") from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the scratch database


def _server(settings: Settings) -> DatabaseUrl | None:
    """The server and credentials for scratch databases: [restore_test] database_url or the live one."""
    live = settings.live_database()
    if settings.restore_test.database_url:
        url = restorer.resolve_target_database(settings.restore_test.database_url, live)
        if url is not None and live is not None and url.engine != "sqlite" and restorer._same_database(url, live):
            raise ConfigError("restore_test.database_url is the live database",
                              hint="give a database the restore test may drop, e.g. erp_restore_test")
        return url
    return live


def scratch_prefix(name: str) -> str:
    return name[: 63 - len(SUFFIX) - 15] + SUFFIX


def scratch_database(settings: Settings, m: Manifest, work: Path, now: datetime) -> DatabaseUrl | None:
    if m.database is None:
        return None
    if m.database.engine == "sqlite":
        return DatabaseUrl("sqlite", str(work / "database" / os.path.basename(m.database.database or "db.sqlite3")))
    server = _server(settings)
    if server is None:
        raise ConfigError("the restore test needs a database server for the scratch database",
                          hint="configure [database] or [restore_test] database_url")
    if server.engine != m.database.engine:
        raise ConfigError(f"set {m.id} holds a {m.database.engine} dump but the scratch server is {server.engine}",
                          hint="set [restore_test] database_url to a server of that engine")
    if settings.restore_test.database_url:
        return server
    return server.with_name(f"{scratch_prefix(server.name)}{now:%Y%m%d%H%M%S}")


def clean_predecessors(settings: Settings, log: Log) -> list[str]:
    """Drop the scratch databases a killed restore test left (the caller holds the lock)."""
    server = _server(settings)
    if server is None or server.engine == "sqlite":
        return []
    if settings.restore_test.database_url:
        names = [server.name]
    else:
        names = scratchdb.list_databases(server, scratch_prefix(server.name))
    live = settings.live_database()
    dropped = []
    for n in names:
        url = server.with_name(n)
        if live is not None and restorer._same_database(url, live):
            continue  # never the live database, whatever its name
        scratchdb.drop_database(url)
        dropped.append(n)
    if dropped and not settings.restore_test.database_url:
        log(f"dropped scratch database(s) of an interrupted restore test: {', '.join(dropped)}")
    return dropped


# ----------------------------------------------------------------------------- checks


def check_tree(tree: Path, m: Manifest) -> tuple[int, list[str]]:
    """Every index path in ``tree`` as recorded (type, size, SHA-256, mode without set-id bits, link
    target), nothing else there. (paths checked, problems)"""
    problems: list[str] = []
    index = {e.path: e for e in m.files}
    n = 0
    for rel, e in index.items():
        p = tree / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            problems.append(f"{rel}: missing after the restore")
            continue
        n += 1
        kind = (EntryType.DIR if stat.S_ISDIR(st.st_mode) else EntryType.SYMLINK if stat.S_ISLNK(st.st_mode)
                else EntryType.FILE if stat.S_ISREG(st.st_mode) else None)
        if kind is not e.type:
            problems.append(f"{rel}: restored as {kind.value if kind else 'special file'}, index says {e.type.value}")
            continue
        if stat.S_IMODE(st.st_mode) & ~restorer.SETID_BITS != e.mode & ~restorer.SETID_BITS:
            problems.append(f"{rel}: mode {oct(stat.S_IMODE(st.st_mode))}, index says {oct(e.mode)}")
        if e.type is EntryType.SYMLINK and os.readlink(p) != e.target:
            problems.append(f"{rel}: link target differs from the index")
        if e.type is EntryType.FILE:
            if st.st_size != e.size:
                problems.append(f"{rel}: {st.st_size} bytes, index says {e.size}")
                continue
            with open(p, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if e.sha256 and digest != e.sha256:
                problems.append(f"{rel}: content differs from the index (sha256)")
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            rel = os.path.relpath(os.path.join(dirpath, name), tree)
            if rel not in index:
                problems.append(f"{rel}: restored but not in the index")
    return n, problems


def check_tables(url: DatabaseUrl, m: Manifest) -> tuple[int, list[str]]:
    assert m.database is not None
    counts = adapter_for(url).row_counts(url)
    problems = [f"table {t}: {counts.get(t)} rows, the set recorded {n}" for t, n in m.database.tables.items()
                if counts.get(t) != n]
    return len(m.database.tables), problems


# ----------------------------------------------------------------------------- RPO


def restorable(committed: list[Manifest], damaged: list[chain.Damaged], invalid: dict[BackupId, str]
               ) -> list[Manifest]:
    ids = [m.id for m in committed]
    return [m for m in committed if chain.chain_problem(m, ids, damaged, invalid) is None]


def _data_size(m: Manifest) -> int:
    files = sum(e.size for e in m.files if e.type is EntryType.FILE)
    return files + (m.database.raw_size if m.database else 0)


# ----------------------------------------------------------------------------- the test


def _fetch_remote(settings: Settings, backup_id: str | None, scratch: Path, at: datetime, store: Any = None
                  ) -> tuple[LocalRepository, str, tuple[str, ...], list[Manifest], list[chain.Damaged]]:
    """The chosen remote set and its chain downloaded into ``scratch`` (checked as they arrive; the
    newer remote sets that failed are named), and the remote headers (for the RPO of the off-site copy)."""
    from erp_backup import remote_restore, remote_sets
    from erp_backup.remote_store import open_store

    store = store if store is not None else open_store(settings)
    req = restorer.RestoreRequest(target_dir=str(scratch / "unused-target"), backup_id=backup_id,
                                  at=None if backup_id else at)
    fetched = remote_restore.fetch(settings, store, req, scratch)
    good, damaged = remote_sets.headers(store)
    return LocalRepository(scratch), fetched.set_id, fetched.notes, good, damaged


def _passed_over(notes: tuple[str, ...], invalid: dict[BackupId, str]) -> list[str]:
    out = []
    for n in notes:
        if n.startswith("skipped "):
            out.append(n.removeprefix("skipped "))
            sid = n.split()[1].rstrip(":")
            if BackupId.is_valid(sid):
                invalid[BackupId(sid)] = n
    return out


def run_restore_test(settings: Settings, backup_id: str | None = None, *, from_remote: bool | None = None,
                     now: datetime | None = None, log: Log = print, store: Any = None) -> RestoreTestResult:
    """Run the restore test and record its result next to the sets. Never raises for a failed check:
    the result says ``ok: false`` with its problems (``raise_if_failed`` turns it into an error).
    ``from_remote`` (None: when ``[remote]`` is configured): test the off-site copy, downloaded first
    (stage ``fetch``, part of the RTO); the RPO is then the off-site copy's. ``store``: the remote
    store itself (default: opened from ``[remote] block``)."""
    repo = LocalRepository(settings.storage.local_dir)
    remote = getattr(settings, "remote", None) is not None if from_remote is None else from_remote
    cfg = settings.restore_test
    stages: dict[str, float] = {}
    problems: list[str] = []
    passed_over: list[str] = []
    m: Manifest | None = None
    smoke: list[commands.CommandResult] = []
    files_checked = tables_checked = 0
    scratch_text = None
    invalid: dict[BackupId, str] = {}
    src = repo
    heads: tuple[list[Manifest], list[chain.Damaged]] | None = None

    def timed(name: str, t0: float) -> None:
        stages[name] = round(stages.get(name, 0.0) + time.monotonic() - t0, 3)

    tested_at = _now(now)
    with _exclusive(repo), contextlib.ExitStack() as stack:
        repo.clean_leftovers()  # scratch directories of killed runs (a restore test's too)
        try:
            clean_predecessors(settings, log)
        except BackupError as e:
            problems.append(f"cleaning a previous restore test's scratch database failed: {e}")
        t0 = time.monotonic()
        try:
            if remote:
                fetched_into = stack.enter_context(repo.scratch("remotetest"))
                src, backup_id, notes, good, bad = _fetch_remote(settings, backup_id, fetched_into, tested_at,
                                                               store)
                heads = (good, bad)
                passed_over += _passed_over(notes, invalid)
                timed("fetch", t0)
                t0 = time.monotonic()
            m_head, notes = restorer._pick_set(src, backup_id, None, "quick", settings)
            passed_over += _passed_over(notes, invalid)
            m = restorer.manifest_to_restore(src, m_head.id, settings)
        except BackupError as e:
            problems.append(f"no set to test{' in the remote store' if remote else ''}: {e}")
        timed("select", t0)
        problems += [f"newer set passed over: {p}" for p in passed_over]
        if m is not None:
            with repo.scratch("restoretest") as work:
                db = None
                try:
                    db = scratch_database(settings, m, work, tested_at)
                    scratch_text = db.redacted() if db else None
                    r = _restore_and_check(src, settings, m, work, db, timed, log)
                    files_checked, tables_checked, found, smoke = r
                    problems += found
                except BackupError as e:
                    problems.append(str(e))
                except OSError as e:  # the scratch directory's disk (full, read-only)
                    problems.append(f"restore into {work} failed: {e.strerror or e}"
                                    + (f" ({e.filename})" if e.filename else ""))
                finally:
                    live = settings.live_database()
                    if db is not None and not (live is not None and restorer._same_database(db, live)):
                        try:
                            scratchdb.drop_database(db)
                        except BackupError as e:
                            problems.append(str(e))
    rto = sum(stages.get(k, 0.0) for k in RTO_STAGES)
    if heads is None:
        found_sets = repo.scan()
        committed, damaged = list(found_sets.committed), list(found_sets.damaged)
    else:
        committed, damaged = heads
    sets = restorable(committed, damaged, invalid)
    newest = max(sets, key=lambda s: s.finished_at, default=None)
    rpo = (tested_at - newest.finished_at).total_seconds() if newest else None
    gap = objectives.max_gap([(s.id.value, s.finished_at) for s in sets], tested_at,
                             timedelta(seconds=cfg.rpo_window))
    restored_bytes = _data_size(m) if m is not None else 0
    newest_any = max(committed, key=lambda s: s.id, default=None)
    current = restored_bytes
    if heads is None and newest_any is not None and m is not None and newest_any.id != m.id:
        with contextlib.suppress(BackupError):
            current = _data_size(repo.read_manifest(newest_any.id))
    rto_x = objectives.extrapolate(rto, restored_bytes, current)
    crit, non = tiers.of(settings)
    rto_crit = critical_rto(stages, m, crit)
    rto_crit_x = objectives.extrapolate(rto_crit, restored_bytes, current)
    h = objectives.human
    if m is not None and rto_crit_x > crit.rto_s:
        problems.append(f"RTO of the critical tier ({crit.covers}) {h(rto_crit_x)} (measured {h(rto_crit)}, "
                        f"extrapolated to {current >> 20} MiB) exceeds the target {h(crit.rto_s)}")
    if m is not None and rto_x > non.rto_s:
        problems.append(f"RTO {h(rto_x)} (measured {h(rto)}, extrapolated to {current >> 20} MiB) of the whole "
                        f"restore exceeds the non-critical tier's target {h(non.rto_s)}")
    if rpo is None:
        problems.append("RPO: there is no restorable set")
    elif rpo > crit.rpo_s:
        also = "" if rpo <= non.rpo_s else f" and {h(non.rpo_s)} of the non-critical tier"
        problems.append(f"RPO {h(rpo)}: the newest restorable set {newest.id if newest else '-'} is older than "
                        f"the target {h(crit.rpo_s)} of the critical tier{also}")
    gap_text = None
    if gap is not None:
        gap_text = f"{gap.after or 'window start'} → {gap.before}"
        if gap.seconds > crit.rpo_s:
            problems.append(f"RPO: a gap of {h(gap.seconds)} between restorable sets ({gap_text}) in the last "
                            f"{h(cfg.rpo_window)} exceeds the target {h(crit.rpo_s)}")
    tier_docs = {t.name: {"covers": t.covers, "rto_seconds": round(r, 3), "rto_extrapolated_seconds": round(x, 3),
                          "rto_target_seconds": t.rto_s, "rpo_seconds": None if rpo is None else round(rpo, 3),
                          "rpo_target_seconds": t.rpo_s,
                          "ok": m is not None and x <= t.rto_s and rpo is not None and rpo <= t.rpo_s}
                 for t, r, x in ((crit, rto_crit, rto_crit_x), (non, rto, rto_x))}
    result = RestoreTestResult(
        ok=not problems, set=m.id.value if m else None, tested_at=tested_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        rto_seconds=round(rto, 3), rto_extrapolated_seconds=round(rto_x, 3), rto_target_seconds=crit.rto_s,
        rpo_seconds=None if rpo is None else round(rpo, 3),
        max_gap_seconds=None if gap is None else round(gap.seconds, 3), rpo_target_seconds=crit.rpo_s,
        problems=tuple(problems), max_gap=gap_text, stages=stages, restored_bytes=restored_bytes,
        current_bytes=current, files_checked=files_checked, tables_checked=tables_checked,
        smoke=tuple({"command": r.label, "ok": r.ok, "duration_s": round(r.duration_s, 3), "output": r.output}
                    for r in smoke),
        scratch_database=scratch_text, passed_over=tuple(passed_over), tiers=tier_docs)
    record(repo, result)
    return result


def critical_rto(stages: dict[str, float], m: Manifest | None, crit: tiers.Tier) -> float:
    """The time that brought the critical tier back: fetch, select, database and smoke, and the critical
    paths' share (by bytes) of the files stage (the files are restored in one pass)."""
    base = sum(stages.get(k, 0.0) for k in ("fetch", "select", "database", "smoke"))
    if m is None or not crit.paths:
        return base
    part, total = tiers.critical_share(((e.path, e.size) for e in m.files if e.type is EntryType.FILE), crit.paths)
    return base + (stages.get("files", 0.0) * part / total if total else 0.0)


def _restore_and_check(repo: LocalRepository, settings: Settings, m: Manifest, work: Path, db: DatabaseUrl | None,
                       timed: Callable[[str, float], None], log: Log
                       ) -> tuple[int, int, list[str], list[commands.CommandResult]]:
    problems: list[str] = []
    tree = work / "tree"
    t0 = time.monotonic()
    restorer.check_set(repo, m)
    with encryption.restore_decryptor(settings, repo, m, files=True) as decryptor_for:
        encryption.check_restorable(settings, repo, m, files=True, database=db is not None, hash_artifacts=True)
        safe = restorer.SafeTarget(tree)
        try:
            files = restorer.restore_files(repo, m, safe, decryptor_for=decryptor_for)
        finally:
            safe.close()
        timed("files", t0)
        log(f"restored {files.files} files of {m.id} into the scratch directory")
        if db is not None:
            t0 = time.monotonic()
            try:
                restorer.restore_database(repo, m, db, replace=True, decryptor_for=decryptor_for)
            except IntegrityError as e:  # row counts differ: the check below names every table
                problems.append(str(e))
            timed("database", t0)
            log(f"restored the database into {db.redacted()}")
    t0 = time.monotonic()
    n_files, found = check_tree(tree, m)
    problems += found
    n_tables = 0
    if db is not None:
        n_tables, found = check_tables(db, m)
        problems += [p for p in found if p not in problems]
    timed("check", t0)
    t0 = time.monotonic()
    cmds = settings.restore_test.smoke if settings.restore_test.smoke is not None else settings.restore.smoke
    env = {"DATABASE_URL": scratchdb.url_text(db)} if db is not None else None
    smoke = commands.run_all("smoke", cmds, timeout=settings.restore.command_timeout, cwd=str(tree),
                             env_extra=env, secrets=db.secrets() if db else ())
    timed("smoke", t0)
    problems += [f"smoke check failed: {r.label}: {r.error}" for r in smoke if not r.ok]
    return n_files, n_tables, problems, smoke


# ----------------------------------------------------------------------------- the record


def record(repo: LocalRepository, result: RestoreTestResult) -> None:
    """The result next to the sets (``erp_backup.recovery_record``), for ``status``."""
    recovery_record.write(repo.root, result.to_json())


class RestoreTestFailed(IntegrityError):
    def __init__(self, result: RestoreTestResult) -> None:
        first = result.problems[0] if result.problems else "failed"
        more = f" (+{len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        super().__init__(f"restore test of {result.set or 'no set'} failed: {first}{more}",
                         hint="see the restore test's report (`erp-backup restore-test --json`, the flow's "
                         "artifact); fix the backups before you need them")
        self.result = result

    def __reduce__(self) -> tuple[object, ...]:
        return (RestoreTestFailed, (self.result,))


def raise_if_failed(result: RestoreTestResult) -> RestoreTestResult:
    if not result.ok:
        raise RestoreTestFailed(result)
    return result



