"""Operations on a real Prefect server: `erp-backup setup`, `prefect deploy --all`, a real worker,
automations that e-mail (aiosmtpd) and POST (an HTTP receiver) on failure, lateness and size
anomalies, the security team's audience (its own webhook path) for integrity failures, Prometheus
metrics, and the UI in headless Chromium.

One server for the session (tests/e2e/conftest.py); this module adds one setup, one deploy and one
worker. The tests run in file order and share them.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from erp_backup.demo import make_project
from tests.integration.offsite_fixtures import SIGN_PASSPHRASE, GpgTestKeys, gpg_keys  # noqa: F401
from tests.receivers import Receiver

from .browser import Browser
from .conftest import VENV_BIN, PrefectServer, free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
CLI = str(VENV_BIN / "erp-backup")
TZ = "America/New_York"  # not the default: the schedules must follow the configured zone
LATE_S = 15  # the shortened late window of the incremental automation
AUTOMATIONS = ("erp-backup: run failed or crashed", "erp-backup: scheduled run not started",
               "erp-backup: incremental late", "erp-backup: full late",
               "erp-backup: size anomaly", "erp-backup: restore test missed RTO/RPO",
               "erp-backup: integrity check failed")


def deployments_of_prefect_yaml() -> tuple[str, ...]:
    """"<flow name>/<deployment name>" of every deployment prefect.yaml declares."""
    out = []
    for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]:
        module, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        out.append(f"{flow.name}/{d['name']}")
    return tuple(out)


DEPLOYMENTS = deployments_of_prefect_yaml()


# ----------------------------------------------------------------------------- receivers


class Mailbox:
    """aiosmtpd handler: every message received, parsed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def texts(self) -> list[str]:
        out = []
        for m in self.messages:
            body = m.get_payload(decode=True) if not m.is_multipart() else b"".join(
                p.get_payload(decode=True) or b"" for p in m.walk() if not p.is_multipart())
            out.append(f"{m['Subject']}\n{(body or b'').decode('utf-8', 'replace')}")
        return out


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ----------------------------------------------------------------------------- the shared set-up


class Ops:
    def __init__(self, server: PrefectServer, tmp: Path, mailbox: Mailbox, hook: Receiver, smtp_port: int) -> None:
        self.server = server
        self.tmp = tmp
        self.mailbox = mailbox
        self.hook = hook
        self.env = {**server.env, "ERP_BACKUP_HOME": str(REPO)}
        self.notify = [f"mailto://127.0.0.1:{smtp_port}?from=erp-backup@localhost&to=ops@localhost",
                       f"json://127.0.0.1:{hook.port}/hook"]
        # the security team's audience: its own path on the same receiver
        self.notify_security = [f"json://127.0.0.1:{hook.port}/security"]
        self.setup_runs: list[subprocess.CompletedProcess[str]] = []

    def run(self, *args: str, timeout: float = 180, cwd: Path = REPO, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "COLUMNS": "250", **(env or {})}  # rich tables cut names to the terminal
        return subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def setup(self, *extra: str) -> subprocess.CompletedProcess[str]:
        args = [a for u in self.notify for a in ("--notify", u)]
        args += [a for u in self.notify_security for a in ("--notify-security", u)]
        r = self.run(CLI, "setup", *args, "--timezone", TZ, "--late-incremental", f"{LATE_S}s", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        self.setup_runs.append(r)
        return r

    def api(self, method: str, path: str, **kw: Any) -> Any:
        with self.server.client() as c:
            r = c.request(method, path, **kw)
            r.raise_for_status()
            return r.json() if r.content else None

    def deployment(self, flow: str, name: str) -> dict[str, Any]:
        return self.api("GET", f"/deployments/name/{flow}/{name}")

    def run_deployment(self, flow: str, name: str, **parameters: Any) -> str:
        dep = self.deployment(flow, name)
        run = self.api("POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})
        return str(run["id"])

    def wait_run(self, run_id: str, timeout: float = 120) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            r = self.api("GET", f"/flow_runs/{run_id}")
            return r if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
        return wait_for(f"flow run {run_id} to finish", final, timeout)

    def config(self, name: str, root: Path, db: Path, **sections: str) -> Path:
        cfg = self.tmp / f"{name}.toml"
        text = (f'[project]\nroot = "{root}"\n[database]\nurl = "sqlite:///{db}"\n'
                f'[storage]\nlocal_dir = "{self.tmp / name / "bk"}"\n'
                '[backup]\nmissing_parent = "full"\ntask_retries = 1\nretry_delay_s = [1]\n')
        for section, body in sections.items():
            text += f"[{section}]\n{body}\n"
        cfg.write_text(text)
        return cfg

    def messages_about(self, needle: str) -> tuple[list[str], list[dict[str, Any]]]:
        mails = [t for t in self.mailbox.texts() if needle in t]
        posts = [b for b in self.hook.json_bodies("/hook") if needle in f"{b.get('title')}\n{b.get('message')}"]
        return mails, posts

    def security_posts(self, needle: str) -> list[dict[str, Any]]:
        """What the security team's webhook received about ``needle``."""
        return [b for b in self.hook.json_bodies("/security") if needle in f"{b.get('title')}\n{b.get('message')}"]

    def wait_alert(self, needle: str, timeout: float) -> tuple[list[str], list[dict[str, Any]]]:
        """Both the e-mail and the webhook POST that mention ``needle``."""
        def both() -> tuple[list[str], list[dict[str, Any]]] | None:
            mails, posts = self.messages_about(needle)
            return (mails, posts) if mails and posts else None
        return wait_for(f"an e-mail and a webhook POST about {needle!r}", both, timeout)

    def deployed_backup(self, name: str, flow: str, deployment: str) -> tuple[dict[str, Any], Path]:
        """A new project backed up by a deployment run through the worker: (the Completed run, its config)."""
        root = self.tmp / f"{name}-erp"
        cfg = self.config(name, root, make_project(root))
        run = self.wait_run(self.run_deployment(flow, deployment, config=str(cfg)))
        assert run["state_type"] == "COMPLETED", run["state"]
        return run, cfg


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # a worker started from a non-interactive parent ignores SIGINT and hangs on SIGTERM (field
    # notes): reset SIGINT to its default before exec'ing it
    launcher = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execv(sys.argv[1], sys.argv[1:])")
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", launcher, str(VENV_BIN / "prefect"), "worker", "start",
                                 "--pool", "erp-backup", "--prefetch-seconds", "5"],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ops(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    tmp = tmp_path_factory.mktemp("ops")
    mailbox = Mailbox()
    smtp_port = free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    hook = Receiver()
    o = Ops(prefect_server, tmp, mailbox, hook, smtp_port)
    o.setup()
    deployed = o.run(str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    # nothing scheduled may start while the tests run, only the runs they trigger: every schedule is
    # paused (the incremental's too: the late alert must fire) but the monthly's, whose next runs are
    # checked below (all in the future)
    for flow, name in (d.split("/") for d in DEPLOYMENTS):
        dep = o.deployment(flow, name)
        for sched in o.api("GET", f"/deployments/{dep['id']}/schedules") if flow != "erp-backup-monthly" else []:
            o.api("PATCH", f"/deployments/{dep['id']}/schedules/{sched['id']}", json={"active": False})
    worker = start_worker(o.env, tmp / "worker.log")
    try:
        yield o
    finally:
        stop(worker)
        for name in AUTOMATIONS:  # the session's server outlives this module: its automations must not
            for a in o.api("POST", "/automations/filter", json={}):
                if a["name"] == name:
                    o.api("DELETE", f"/automations/{a['id']}")
        hook.close()
        smtp.stop()


# ----------------------------------------------------------------------------- the checks


def count(items: list[dict[str, Any]], key: str, value: str) -> int:
    return sum(1 for i in items if i.get(key) == value)


def test_setup_twice_leaves_exactly_one_of_each_and_updates_in_place(ops: Ops) -> None:
    before = {a["name"]: a for a in ops.api("POST", "/automations/filter", json={}) if a["name"] in AUTOMATIONS}
    copy = {k: v for k, v in before["erp-backup: size anomaly"].items()
            if k in ("name", "description", "enabled", "trigger", "actions")}
    # a setup killed at a random moment (SIGKILL) leaves nothing that the next one does not put right
    killed = subprocess.Popen([CLI, "setup", "--timezone", "UTC"], env=ops.env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.uniform(0.5, 2.5))
    killed.kill()
    killed.wait(timeout=30)
    # a hand-made duplicate (or two setups at once); made after the kill, which may have got as far
    # as removing duplicates itself
    ops.api("POST", "/automations/", json=copy)
    ops.notify = ops.notify[::-1]  # changed arguments: the same objects, changed
    second = ops.setup("--late-full", "2h")
    assert "created" not in second.stdout, second.stdout  # everything existed already
    assert "1 duplicate(s) removed" in second.stdout
    autos = ops.api("POST", "/automations/filter", json={})
    for name in AUTOMATIONS:
        assert count(autos, "name", name) == 1, name
    after = {a["name"]: a for a in autos if a["name"] in AUTOMATIONS}
    assert {n: a["id"] for n, a in after.items()} == {n: a["id"] for n, a in before.items()}  # updated in place
    assert after["erp-backup: full late"]["trigger"]["within"] == 7200
    assert after["erp-backup: incremental late"]["trigger"]["within"] == LATE_S
    pools = ops.api("POST", "/work_pools/filter", json={})
    assert count(pools, "name", "erp-backup") == 1
    limits = ops.api("POST", "/v2/concurrency_limits/filter", json={"limit": 200})
    assert count(limits, "name", "erp-backup-backups") == 1
    assert [lim["limit"] for lim in limits if lim["name"] == "erp-backup-backups"] == [1]
    docs = ops.api("POST", "/block_documents/filter", json={
        "block_types": {"slug": {"any_": ["erp-backup-notifications"]}}, "include_secrets": False})
    assert sorted(d["name"] for d in docs) == ["erp-backup", "erp-backup-security"]  # one per audience
    assert "127.0.0.1" not in json.dumps(docs)  # the targets are secrets: never shown
    slugs = {b["slug"] for b in ops.api("POST", "/block_types/filter", json={})}
    assert {"erp-backup-notifications", "erp-backup-database-connection", "erp-backup-gpg-keys"} <= slugs
    action = after["erp-backup: run failed or crashed"]["actions"][0]
    assert action["block_document_id"] == docs[0]["id"]


def test_every_deployment_is_listed_and_monthly_runs_fall_on_last_days(ops: Ops) -> None:
    assert {"erp-backup-full/full", "erp-backup-incremental/incremental", "erp-backup-differential/differential",
            "erp-backup-monthly/monthly", "erp-backup-verify/verify", "erp-backup-restore/restore",
            "erp-backup-restore-test/restore-test"} <= set(DEPLOYMENTS)
    ls = ops.run(str(VENV_BIN / "prefect"), "deployment", "ls")
    assert ls.returncode == 0, ls.stderr
    listed = ls.stdout.replace("│", " ")
    for name in DEPLOYMENTS:
        assert name in listed, name
    for flow, name in (d.split("/") for d in DEPLOYMENTS):
        assert ops.deployment(flow, name)["description"], name  # the UI shows what each job is
    monthly = ops.deployment("erp-backup-monthly", "monthly")
    scheds = ops.api("GET", f"/deployments/{monthly['id']}/schedules")
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in scheds] == [("0 1 L * *", TZ)]

    def scheduled() -> list[dict[str, Any]]:
        return ops.api("POST", "/flow_runs/filter", json={
            "deployments": {"id": {"any_": [monthly["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC"})

    if not scheduled():  # the scheduler service runs every minute: ask for the runs at once
        ops.api("POST", f"/deployments/{monthly['id']}/schedule", json={})
    runs = wait_for("scheduled monthly runs", lambda: scheduled()[:3] if len(scheduled()) >= 3 else None, 60)
    for r in runs:
        local = datetime.fromisoformat(r["expected_start_time"]).astimezone(ZoneInfo(TZ))
        assert (local.hour, local.minute) == (1, 0), local
        assert (local + timedelta(days=1)).month != local.month, f"{local} is not the last day of its month"


def test_failed_deployment_run_retries_then_mails_and_posts(ops: Ops) -> None:
    root = ops.tmp / "broken-erp"
    make_project(root)
    cfg = ops.tmp / "broken.toml"
    cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "postgresql://postgres@127.0.0.1:1/erp"\n'
                   f'[storage]\nlocal_dir = "{ops.tmp / "broken-bk"}"\n'
                   '[backup]\ntask_retries = 1\nretry_delay_s = [1]\n')
    run_id = ops.run_deployment("erp-backup-full", "full", config=str(cfg))
    run = ops.wait_run(run_id, timeout=120)
    assert run["state_type"] == "FAILED", run["state"]
    failed_at = time.monotonic()
    tasks = ops.api("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}})
    pre = [t for t in tasks if t["name"].startswith("preflight")]
    assert pre and pre[0]["run_count"] == 2, [(t["name"], t["run_count"]) for t in tasks]  # it retried
    mails, posts = ops.wait_alert(run["name"], 60)
    assert time.monotonic() - failed_at < 60
    for text in [mails[0], f"{posts[0]['title']}\n{posts[0]['message']}"]:
        assert "erp-backup-full/full" in text, text  # the deployment
        assert "127.0.0.1:1" in text or "connect" in text.lower(), text  # the error line
        assert "/runs/flow-run/" in text, text  # the link to the run
        assert "What to do" in text, text


def test_late_incremental_alerts_once_per_gap(ops: Ops) -> None:
    run, _ = ops.deployed_backup("late", "erp-backup-incremental", "incremental")
    done = time.monotonic()
    # the incremental deployment's schedule is paused (fixture): nothing completes after this run
    dep = ops.deployment("erp-backup-incremental", "incremental")
    assert [s["active"] for s in ops.api("GET", f"/deployments/{dep['id']}/schedules")] == [False]
    mails, posts = ops.wait_alert("incremental backup late", LATE_S + 45)
    assert LATE_S - 1 <= time.monotonic() - done, "the late alert fired before the window ended"
    assert run["name"] in mails[0]  # it names the last good run
    time.sleep(2 * LATE_S + 5)  # two more windows of the same gap
    mails, posts = ops.messages_about("incremental backup late")
    assert (len(mails), len(posts)) == (1, 1), "the late alert repeated for the same gap"
    assert ops.security_posts("late") == [], "a late backup is the administrators' alert only"


def test_a_scheduled_run_no_worker_starts_alerts(ops: Ops) -> None:
    """A run due a minute ago that no worker picks up (it belongs to no deployment, so the worker of
    the pool ignores it) goes Late on the server: the "not started" automation tells."""
    flow = ops.api("POST", "/flows/filter", json={"flows": {"name": {"any_": ["erp-backup-verify"]}}})[0]
    due = (datetime.now(ZoneInfo("UTC")) - timedelta(minutes=1)).isoformat()
    run = ops.api("POST", "/flow_runs/", json={"flow_id": flow["id"], "name": "nobody-runs-me", "state": {
        "type": "SCHEDULED", "state_details": {"scheduled_time": due}}})
    try:
        mails, posts = ops.wait_alert("nobody-runs-me", 60)
        assert "erp-backup-verify has not started" in mails[0]
        assert "prefect worker start --pool erp-backup" in posts[0]["message"]
    finally:
        ops.api("DELETE", f"/flow_runs/{run['id']}")


def test_size_anomaly_notifies_and_metrics_are_published(ops: Ops) -> None:
    root = ops.tmp / "big-erp"
    db = make_project(root)
    pushgw = Receiver()
    prom = ops.tmp / "textfile"
    prom.mkdir()
    cfg = ops.config("big", root, db, monitoring=f'textfile = "{prom / "erp_backup.prom"}"\n'
                     f'pushgateway = "{pushgw.url}"\nsize_min_history = 2')
    try:
        ids = []
        for _ in range(2):
            r = ops.run(CLI, "--config", str(cfg), "backup", "full")
            assert r.returncode == 0, r.stderr[-3000:]
            ids.append(r.stdout.split()[-1])
        small = json.loads(ops.run(CLI, "--config", str(cfg), "list", "--json").stdout)["sets"][-1]["size_bytes"]
        (root / "media_upload.bin").write_bytes(os.urandom(max(10 * small, 2 << 20)))  # 10x, incompressible
        r = ops.run(CLI, "--config", str(cfg), "backup", "full")
        assert r.returncode == 0, r.stderr[-3000:]
        big = r.stdout.split()[-1]
        mails, posts = ops.wait_alert(f"size anomaly in set {big}", 60)
        assert "the median" in posts[0]["message"] and "erp-backup show" in posts[0]["message"]
        assert not ops.messages_about(f"size anomaly in set {ids[1]}")[1]  # the ordinary set did not alert

        fams = {f.name: f for f in text_string_to_metric_families((prom / "erp_backup.prom").read_text())}
        last = {s.labels["kind"]: s.value for s in fams["erp_backup_last_success_timestamp_seconds"].samples}
        assert set(last) == {"full"} and abs(last["full"] - time.time()) < 120
        size = {s.labels["kind"]: s.value for s in fams["erp_backup_last_size_bytes"].samples}
        assert size["full"] > 10 * small
        assert [(s.labels, s.value) for s in fams["erp_backup_verify_ok"].samples] == [({"set_kind": "full"}, 1.0)]
        assert fams["erp_backup_last_duration_seconds"].samples[0].value > 0
        assert fams["erp_backup_rpo_seconds"].samples[0].value >= 0
        pushed = [(m, p, b) for m, p, b in pushgw.requests if p.startswith("/metrics/job/erp-backup")]
        assert len(pushed) == 3 and b'erp_backup_last_size_bytes{kind="full"}' in pushed[-1][2]
    finally:
        pushgw.close()
    verify = ops.run(CLI, "--config", str(cfg), "verify", "--quick")
    assert verify.returncode == 0, verify.stderr[-2000:]
    cat = ops.server.artifacts("erp-backup-catalog")
    assert any(big in str(a["data"]) for a in cat)


def test_a_second_backup_waits_for_the_slot_then_gives_up(ops: Ops) -> None:
    """The setup's concurrency limit serialises backups whatever started them: while another holder
    has the one slot, a backup waits (Running) and runs when it is released, or fails after lock_wait_s."""
    root = ops.tmp / "slot-erp"
    db = make_project(root)
    hold = ("import sys, time; from prefect.concurrency.sync import concurrency\n"
            "with concurrency('erp-backup-backups', occupy=1, strict=True):\n"
            "    print('held', flush=True); time.sleep(float(sys.argv[1]))\n"
            "print(time.time(), flush=True)")
    holder = subprocess.Popen([sys.executable, "-c", hold, "18"], env=ops.env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cfg = ops.tmp / "slot.toml"
        cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "sqlite:///{db}"\n'
                       f'[storage]\nlocal_dir = "{ops.tmp / "slot-bk"}"\n[backup]\nlock_wait_s = 2\n')
        gave_up = ops.run(CLI, "--config", str(cfg), "backup", "full")
        assert gave_up.returncode != 0
        assert "another backup held the erp-backup-backups slot for more than 2 s" in gave_up.stderr.splitlines()[-1]
        cfg.write_text(cfg.read_text().replace("lock_wait_s = 2", "lock_wait_s = 120"))
        waited = ops.run(CLI, "--config", str(cfg), "backup", "full")
        released = float(holder.stdout.readline())
        assert waited.returncode == 0, waited.stderr[-2000:]
    finally:
        holder.wait(timeout=60)
    run = ops.server.flow_runs("erp-backup-full")[0]
    started = datetime.fromisoformat(run["start_time"]).timestamp()
    task_runs = ops.api("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}})
    first_task = min(datetime.fromisoformat(t["start_time"]).timestamp() for t in task_runs if t["start_time"])
    assert started < released <= first_task + 1  # it was Running, waiting, and did its work after the release


def test_restore_test_that_misses_its_targets_notifies(ops: Ops) -> None:
    """The restore-test deployment, run through the worker with an RPO target no set can meet: the
    run fails and the restore-test automation sends its own message (the reason, RTO, RPO)."""
    root = ops.tmp / "rt-erp"
    db = make_project(root)
    cfg = ops.config("rt", root, db, restore_test='rpo_target = "1s"',
                     monitoring=f'textfile = "{ops.tmp / "rt.prom"}"')
    r = ops.run(CLI, "--config", str(cfg), "backup", "full")
    assert r.returncode == 0, r.stderr[-2000:]
    time.sleep(1.5)  # the set is older than the target by the time the test measures it
    run = ops.wait_run(ops.run_deployment("erp-backup-restore-test", "restore-test", config=str(cfg)))
    assert run["state_type"] == "FAILED", run["state"]
    mails, posts = ops.wait_alert("restore test missed its target", 60)
    set_id = r.stdout.split()[-1]
    assert set_id in mails[0] and "RPO" in posts[0]["message"] and "of 1.0 s" in posts[0]["message"]
    got = {f.name: f.samples for f in text_string_to_metric_families((ops.tmp / "rt.prom").read_text())}
    assert got["erp_backup_restore_test_rto_seconds"][0].value > 0
    assert got["erp_backup_restore_test_rpo_seconds"][0].value >= 1.0
    wait_for("the security team's restore-test alert",
             lambda: ops.security_posts(f"restore test failed ({set_id})"), 30)


def test_signature_failure_reaches_the_security_team_and_the_administrators(
        ops: Ops, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:  # noqa: F811
    """A signed set whose SHA256SUMS was changed: `verify` (a flow on the server) fails it and emits
    erp-backup.integrity.failed (class signature); the automation tells both audiences."""
    k = gpg_keys
    (tmp_path / "pub.asc").write_text(k.enc.public + k.sign.public)
    (tmp_path / "sign.asc").write_text(k.sign.secret)
    empty = tmp_path / "no-keyring"
    empty.mkdir(mode=0o700)
    gpg = {"GNUPGHOME": str(empty)}
    r = ops.run(CLI, "block", "gpg", "--name", "erp-gpg-alerts", "--public-keys", str(tmp_path / "pub.asc"),
                "--signing-key-file", str(tmp_path / "sign.asc"), "--trusted-signer", k.sign.fingerprint,
                "--overwrite", env={**gpg, "ERP_BACKUP_GPG_SIGNING_PASSPHRASE": SIGN_PASSPHRASE})
    assert r.returncode == 0, r.stderr[-2000:]
    root = ops.tmp / "signed-erp"
    cfg = ops.config("signed", root, make_project(root), encryption=f'recipients = ["{k.enc.fingerprint}"]\n'
                     'block = "erp-gpg-alerts"\nsign = true')
    r = ops.run(CLI, "--config", str(cfg), "backup", "full", env=gpg)
    assert r.returncode == 0, r.stderr[-3000:]
    sid = r.stdout.split()[-1]
    sig = ops.tmp / "signed" / "bk" / sid / "SHA256SUMS.sig"
    assert sig.is_file()
    sig.write_bytes(b"-----BEGIN PGP SIGNATURE-----\n\nnot-a-signature\n-----END PGP SIGNATURE-----\n")  # forged
    t0 = time.monotonic()
    r = ops.run(CLI, "--config", str(cfg), "verify", "--quick", sid, env=gpg)
    assert r.returncode != 0 and "signature" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    needle = f"signature failure in set {sid}"
    mails, posts = ops.wait_alert(needle, 60)
    security = wait_for("the security team's webhook", lambda: ops.security_posts(needle), 30)
    assert time.monotonic() - t0 < 90
    assert "SHA256SUMS.sig" in security[0]["message"] and "tampered" in security[0]["message"]
    assert "do not restore from this set" in posts[0]["message"] and "verify" in mails[0]
    assert len(security) == 1 and len(posts) == 1  # one event, one message per target
    # the CLI's restore refuses the set before Prefect starts: the security team hears of that too
    target = tmp_path / "restored"
    r = ops.run(CLI, "--config", str(cfg), "restore", "--backup", sid, "--target-dir", str(target), env=gpg)
    assert r.returncode != 0 and "signature" in r.stderr.strip().splitlines()[-1] and not target.exists()
    wait_for("a second security alert (the refused restore)", lambda: len(ops.security_posts(needle)) == 2, 30)
    assert "found by restore" in ops.security_posts(needle)[1]["message"]


def test_completed_backup_page_in_chromium(ops: Ops) -> None:
    run, cfg = ops.deployed_backup("ui", "erp-backup-full", "full")
    set_id = json.loads(ops.run(CLI, "--config", str(cfg), "list", "--json").stdout)["sets"][-1]["id"]
    arts = ops.api("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    assert {a["type"] for a in arts} >= {"table", "progress", "markdown"}
    assert [a["data"] for a in arts if a["type"] == "progress"] == [100.0]  # it moved to the end
    table = next(a for a in arts if a["type"] == "table" and a["key"] == "erp-backup-full")  # not the prune table

    ui = ops.server.api.removesuffix("/api")
    shots = REPO / "tests" / "e2e" / "screenshots"  # kept for a person to look at (git-ignored)
    shots.mkdir(exist_ok=True)
    with Browser(ops.tmp / "chromium", height=1500) as b:
        b.goto(f"{ui}/runs/flow-run/{run['id']}?tab=Artifacts")
        b.wait_text(run["name"], "Completed", "Artifacts")
        b.click_text("Artifacts")  # the tab of the query string is lost while the run loads
        page = b.wait_text("TABLE", "erp-backup-full", set_id)  # the run's table artifact names the set
        assert "erp-backup-catalog" in page and "erp-backup-progress" in page
        assert b.screenshot(shots / "completed-backup-run.png").stat().st_size > 20_000
        b.goto(f"{ui}/artifacts/artifact/{table['id']}")  # the backup's table itself
        b.wait_text(set_id, "files scanned", "throughput MB/s", "database rows", timeout=60)
        assert b.eval("document.querySelectorAll('table').length") >= 1
        assert b.screenshot(shots / "completed-backup-table.png").stat().st_size > 20_000
    # the table itself, read back from the API: the columns an operator sees in the UI's table view
    rows = table["data"] if isinstance(table["data"], list) else json.loads(table["data"])
    assert rows and rows[0]["id"] == set_id, rows
    assert {"files scanned", "throughput MB/s", "database rows", "verification"} <= set(rows[0]), rows[0]
