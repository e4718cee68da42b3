"""400 simulated days of the real schedule, with the real backup and prune code (~45 s).

What is simulated, exactly:

- The schedule is read from prefect.yaml (cron expressions and time zone of the ``full``,
  ``incremental``, ``differential`` and ``monthly`` deployments; the zone template means the
  default, Asia/Shanghai, as ``prefect_setup.schedule_zone`` reads it) and expanded with ``cronsim``
  over 400 days from 2027-03-01 local time (February 29, 2028 is crossed): the daily 02:00 full,
  the Sunday 01:00 differential and the last-day-of-month 01:00 monthly archive run **every
  time** (470 runs). Hourly incrementals run **every hour of the 26 hours before each hourly
  check** (every 16th day, so the weekday moves) and once (13:00) on the other days: 1,025
  incrementals instead of 9,600, because the full hourly schedule takes ~5 minutes here. Jobs due
  at the same minute run one after the other, each starting one second after the previous one
  finished, as the deployments' concurrency limit and the repository lock make them do.
- Every run is ``erp_backup.pipeline.run_backup(settings, job, now=<fake clock>)``: the real
  stages on a tiny project (a few files, one changed per incremental) with a fresh SQLite dump in
  every set, ``verify = "quick"``, and the real ``prune`` stage after it (``[retention]``
  defaults, judged on the fake clock). The backup directory is a real directory on tmpfs
  (``/dev/shm``: fsync costs nothing there).
- Remote half, on a real S3 endpoint (moto_server): every differential and monthly archive and
  the incrementals of every 8th hourly window are placed in the bucket as the upload stage leaves
  them, right after their backup — first any set they need that is not there (a differential's
  full), then artifacts and ``SHA256SUMS``, ``manifest.json`` last — and the real
  ``prune_remote`` runs after each such upload (after a window's last incremental). The daily
  fulls are not sent: no remote promise needs them, and sending them tripled the run time.
- Checks at 23:30 local every simulated day: every hour of the last 24 h restorable within the
  hour (on hourly-check days), every day of the last 7 days, every month whose archive is less
  than a year old, no kept set missing one it depends on (local); every 7th day the same for the
  remote sets, with every week of the last 30 days and every month of the last year.
  "Restorable" is the restore code's own choice (``chain.select_for_time`` on the sets as
  scanned); every 50 days the chosen sets are also restored for real and compared with the tree
  they were taken of.
- It prints the largest number of sets and bytes held, local and remote, asserts bounds derived
  from the policy, and that neither grows after the first year.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from cronsim import CronSim

from erp_backup import prune as pruning
from erp_backup.adapters.storage.local import MANIFEST, SUMS, LocalRepository
from erp_backup.adapters.storage.s3 import S3Store
from erp_backup.core import chain
from erp_backup.core.models import BackupJob, Manifest
from erp_backup.pipeline import run_backup
from erp_backup.prefect_setup import schedule_zone
from erp_backup.restore import restore
from tests.conftest import diff_states, make_settings, make_small_project, tree_state, write_file
from tests.integration.offsite_fixtures import S3Env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DAYS = int(os.environ.get("SIM_DAYS", "400"))
HOURLY_EVERY = 16  # an hourly-check day every 16 days (the weekday moves by 2)
INCR_HOUR = 13  # the one incremental of the other days
REMOTE_INCR_EVERY = 8  # incrementals of every 8th hourly window go off-site too
REMOTE_CHECK_EVERY = 7  # days
RESTORE_EVERY = 50
CHECK_AT = (23, 30)


def schedule() -> tuple[ZoneInfo, dict[BackupJob, str]]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    crons = {job: deps[job.value]["schedules"][0] for job in BackupJob}
    zones = {c["timezone"] for c in crons.values()}
    assert len(zones) == 1, zones
    return schedule_zone(zones.pop()), {job: c["cron"] for job, c in crons.items()}


@dataclass
class Sim:
    tz: ZoneInfo
    start: date
    root: Path
    settings: Any
    repo: LocalRepository
    store: S3Store
    client: Any
    bucket: str
    states: dict[str, Any] = field(default_factory=dict)
    clock: datetime = datetime.min.replace(tzinfo=UTC)
    max_local: tuple[int, int] = (0, 0)
    max_remote: tuple[int, int] = (0, 0)
    # day, local sets, local bytes, remote sets and bytes without the transient hourly windows
    history: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    checks: int = 0
    restores: int = 0
    largest_set: int = 0
    remote_ids: set[str] = field(default_factory=set)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4))

    def day_of(self, t: datetime) -> int:
        return (t.astimezone(self.tz).date() - self.start).days

    def hourly_day(self, d: int) -> bool:
        return d > 0 and d % HOURLY_EVERY == HOURLY_EVERY - 1

    def local(self, d: int, hour: int, minute: int = 0) -> datetime:
        day = self.start + timedelta(days=d)
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz)

    def in_hourly_window(self, t: datetime) -> int | None:
        """The hourly-check day whose 26-hour window holds ``t``, if any."""
        for d in (self.day_of(t), self.day_of(t) + 1):
            if self.hourly_day(d) and self.local(d, 0) - timedelta(hours=2) <= t <= self.local(d, 23):
                return d
        return None


def events(sim: Sim, crons: dict[BackupJob, str]) -> Iterator[tuple[datetime, BackupJob]]:
    begin = datetime(sim.start.year, sim.start.month, sim.start.day, tzinfo=sim.tz) - timedelta(seconds=1)
    end = sim.local(DAYS, 0)
    found: list[tuple[datetime, int, BackupJob]] = []
    order = {BackupJob.MONTHLY: 0, BackupJob.DIFFERENTIAL: 1, BackupJob.FULL: 2, BackupJob.INCREMENTAL: 3}
    for job, cron in crons.items():
        for t in CronSim(cron, begin):
            if t >= end:
                break
            if job is BackupJob.INCREMENTAL and sim.in_hourly_window(t) is None and t.hour != INCR_HOUR:
                continue
            found.append((t, order[job], job))
    for t, _, job in sorted(found):
        yield t, job


def place_remote(sim: Sim, m: Manifest) -> None:
    """As the upload stage does: first any set it needs that is not there, then the set itself:
    its artifacts and SHA256SUMS (in parallel), then its manifest."""
    for dep in m.depends_on:
        if dep.value not in sim.remote_ids:
            place_remote(sim, sim.repo.read_header(dep))
    d = sim.repo.set_dir(m.id)

    def put(name: str) -> None:
        with open(d / name, "rb") as f:
            sim.client.put_object(Bucket=sim.bucket, Key=f"erp/{m.id}/{name}", Body=f)

    list(sim.pool.map(put, [a.name for a in m.artifacts] + [SUMS]))
    put(MANIFEST)
    sim.remote_ids.add(m.id.value)


def remote_view(sim: Sim) -> tuple[list[Manifest], dict[str, int]]:
    """The complete remote sets (headers read through the prune code's reader) and the bytes of each."""
    objs: dict[str, dict[str, int]] = {}
    for o in sim.store.list():
        sid, _, name = o.key.partition("/")
        objs.setdefault(sid, {})[name] = o.size
    headers = []
    for sid, names in objs.items():
        assert MANIFEST in names, f"remote {sid} has no manifest (an incomplete set outside a kill test)"
        h = pruning.remote_header(sim.store, sid, names[MANIFEST])
        assert not isinstance(h, str), h
        assert {a.name for a in h.artifacts} | {SUMS} <= set(names), f"remote {sid} misses objects"
        headers.append(h)
    return headers, {sid: sum(names.values()) for sid, names in objs.items()}


def pick(sets: list[Manifest], at: datetime) -> Manifest:
    return chain.select_for_time(sets, at.astimezone(UTC)).chosen


def check_day(sim: Sim, d: int, real_restore: bool) -> None:
    now = sim.local(d, *CHECK_AT)
    found = sim.repo.scan()
    assert not found.damaged, found.damaged
    local = list(found.committed)
    ids = [m.id for m in local]
    for m in local:
        assert chain.chain_problem(m, ids) is None, f"day {d}: local {m.id} {chain.chain_problem(m, ids)}"
    local_bytes = sum(f.stat().st_size for i in ids for f in sim.repo.set_dir(i).iterdir())
    sim.max_local = max(sim.max_local, (len(local), local_bytes))
    remote: list[Manifest] = []
    if d % REMOTE_CHECK_EVERY == REMOTE_CHECK_EVERY - 1 or d == DAYS - 1:
        remote, sizes = remote_view(sim)
        remote_bytes = sum(sizes.values())
        rids = [m.id for m in remote]
        for m in remote:
            assert chain.chain_problem(m, rids) is None, f"day {d}: remote {m.id} {chain.chain_problem(m, rids)}"
        sim.max_remote = max(sim.max_remote, (len(remote), remote_bytes))
        lasting = [sid for sid in sizes if not sid.endswith("-incr")]
        sim.history.append((d, len(local), local_bytes, len(lasting), sum(sizes[i] for i in lasting)))

    chosen: list[Manifest] = []
    if sim.hourly_day(d):  # every hour of the last 24 h, within the hour (RPO)
        for h in range(24):
            at = now - timedelta(hours=h)
            m = pick(local, at)
            assert at.astimezone(UTC) - m.finished_at <= timedelta(hours=1), f"day {d}: {at} -> {m.id}"
            chosen.append(m)
            sim.checks += 1
    for k in range(min(7, d + 1)):  # every day of the last 7 days (local)
        day_end = min(now, sim.local(d - k + 1, 0) - timedelta(seconds=1))
        m = pick(local, day_end)
        assert m.finished_at.astimezone(sim.tz).date() == sim.start + timedelta(days=d - k), f"day {d}-{k}: {m.id}"
        chosen.append(m)
        sim.checks += 1
    for k in range(4 if remote else 0):  # every week of the last 30 days (remote)
        hi, lo = now - timedelta(days=7 * k), now - timedelta(days=7 * (k + 1))
        if lo < sim.local(0, 2, 30):
            break
        m = pick(remote, hi)
        assert m.finished_at > lo.astimezone(UTC), f"day {d}: no remote set in week {k}: {m.id}"
        sim.checks += 1
    month_end = sim.local(d, 0).replace(day=1)  # months whose archive is less than a year old
    while True:
        last = month_end - timedelta(days=1)
        archive = datetime(last.year, last.month, last.day, 1, 0, tzinfo=sim.tz)
        if archive < now - timedelta(days=365) or archive < sim.local(0, 1):
            break
        for where, sets in (("local", local), ("remote", remote)) if remote else (("local", local),):
            m = pick(sets, month_end - timedelta(seconds=1))
            assert m.finished_at.astimezone(sim.tz).month == last.month, f"day {d}: {where} month {last}: {m.id}"
            if where == "local":
                chosen.append(m)
            sim.checks += 1
        month_end = last.replace(day=1)
    if real_restore:
        for m in {chosen[0].id: chosen[0], chosen[-1].id: chosen[-1]}.values():
            target = sim.root / f"restore-{m.id}"
            restore(sim.repo, target_dir=target, backup_id=m.id.value)
            assert diff_states(sim.states[m.id.value], tree_state(target)) == [], m.id
            shutil.rmtree(target)
            sim.restores += 1
    keep = {i.value for i in ids}
    for sid in [s for s in sim.states if s not in keep]:
        del sim.states[sid]


def test_400_days_of_the_real_schedule_keep_every_promise_in_bounded_space(moto_s3: S3Env) -> None:
    t_start = time.monotonic()
    tz, crons = schedule()
    base = Path(tempfile.mkdtemp(prefix="erp-sim-", dir="/dev/shm"))
    try:
        project = make_small_project(base / "erp")
        settings = make_settings(base, verify="quick", retention={})
        sim = Sim(tz=tz, start=date(2027, 3, 1), root=base, settings=settings,
                  repo=LocalRepository(settings.storage.local_dir), store=S3Store(moto_s3.bucket, "erp"),
                  client=moto_s3.client(), bucket=moto_s3.bucket.bucket_name)
        checked_through = -1
        for due, job in events(sim, crons):
            d = sim.day_of(due)
            while checked_through < d - 1:  # the checks of every day before this run's
                checked_through += 1
                check_day(sim, checked_through, checked_through % RESTORE_EVERY == RESTORE_EVERY - 1)
            start = max(due.astimezone(UTC), sim.clock + timedelta(seconds=1))
            if job is BackupJob.INCREMENTAL:
                write_file(project / "app" / f"hour{start.hour % 5}.txt", f"{start.isoformat()}\n" * 40)
            res = run_backup(settings, job, now=start)
            m = res.manifest
            assert m.job is job and not res.report.warnings, res.report.warnings
            sim.clock = m.finished_at
            sim.largest_set = max(sim.largest_set, sum(f.stat().st_size for f in res.path.iterdir()))
            sim.states[m.id.value] = tree_state(project)
            sim.runs[job.value] = sim.runs.get(job.value, 0) + 1
            window = sim.in_hourly_window(due)
            every = HOURLY_EVERY * REMOTE_INCR_EVERY
            if job in (BackupJob.DIFFERENTIAL, BackupJob.MONTHLY) or (
                    job is BackupJob.INCREMENTAL and window is not None and window % every == every - 1):
                place_remote(sim, m)  # with the sets it needs: a differential's full
                if job is not BackupJob.INCREMENTAL or due.hour == 23:  # after an upload (window: its last)
                    sim.remote_ids -= set(pruning.prune_remote(sim.store, settings, now=sim.clock).removed)
        check_day(sim, DAYS - 1, True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    elapsed = time.monotonic() - t_start
    (ls, lb), (rs, rb) = sim.max_local, sim.max_remote
    print(f"\n{DAYS} days, runs {sim.runs}, {sim.checks} checks, {sim.restores} real restores, {elapsed:.0f} s; "
          f"largest held: local {ls} sets / {lb} bytes, remote {rs} sets / {rb} bytes")
    assert sum(sim.runs.values()) > 1400 and sim.runs["monthly"] == 13 and sim.runs["full"] == DAYS
    # local at 23:30: 7 fulls (+1 at the 7-day edge), 24 incrementals (+4 of the evening before that
    # the ones before 02:00 build on), 1 differential (+1), 13 monthly archives
    local_bound = 8 + 28 + 2 + 13
    # remote: 5 differentials in 30 days and the 5 fulls they build on, 13 monthly archives, an
    # uploaded hourly window (26 incrementals, the 4 they build on, its 2 fulls), keep_last slack
    remote_bound = 5 + 5 + 13 + 26 + 4 + 2 + 3
    assert ls <= local_bound and rs <= remote_bound, (ls, rs)
    assert lb <= local_bound * sim.largest_set and rb <= remote_bound * sim.largest_set, (lb, rb, sim.largest_set)
    # once the monthly archives of a year are there (day 365), nothing grows any more (remote: leaving
    # out the incrementals of the uploaded hourly windows, which come and go within a day)
    late = [h for h in sim.history if h[0] >= 366]
    year = [h for h in sim.history if 200 <= h[0] < 366]
    for i, what in ((1, "local sets"), (2, "local bytes"), (3, "remote sets"), (4, "remote bytes")):
        assert max(h[i] for h in late) <= max(h[i] for h in year) * 1.1, f"{what} keep growing"
    assert elapsed < 110, f"the simulation took {elapsed:.0f} s"
