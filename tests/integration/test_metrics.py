"""Prometheus metrics: the node_exporter textfile (atomic, merged, parseable) and the Pushgateway push
(against a real HTTP receiver on loopback)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from erp_backup.adapters import metrics
from erp_backup.core.errors import ConfigError, StorageError
from erp_backup.prefect_setup import check_notify_url, check_timezone, parse_duration
from tests.integration.test_faults import small_disk  # noqa: F401  (a real 2 MiB tmpfs)
from tests.receivers import Receiver


def parse(path: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(path.read_text())}


def test_textfile_merges_runs_and_parses(tmp_path: Path) -> None:
    prom = tmp_path / "erp_backup.prom"
    metrics.write_textfile(prom, metrics.backup_update("full", 1_800_000_000.0, 1234, 5.5, None))
    metrics.write_textfile(prom, metrics.backup_update("incremental", 1_800_003_600.0, 99, 0.5, 1_800_000_000.0))
    metrics.write_textfile(prom, metrics.verify_update([("full", True), ("incremental", True), ("incremental", False)]))
    metrics.write_textfile(prom, metrics.restore_test_update(42.0, 600.0))
    got = parse(prom)
    assert sorted(got["erp_backup_last_success_timestamp_seconds"], key=lambda x: x[1]) == [
        ({"kind": "full"}, 1_800_000_000.0), ({"kind": "incremental"}, 1_800_003_600.0)]
    assert dict((x[0]["kind"], x[1]) for x in got["erp_backup_last_size_bytes"]) == {"full": 1234, "incremental": 99}
    assert dict((x[0]["set_kind"], x[1]) for x in got["erp_backup_verify_ok"]) == {"full": 1.0, "incremental": 0.0}
    assert got["erp_backup_rpo_seconds"] == [({}, 3600.0)]
    assert got["erp_backup_restore_test_rto_seconds"] == [({}, 42.0)]
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["erp_backup.prom"]  # no temporary file left behind


def test_damaged_textfile_is_rewritten_not_trusted(tmp_path: Path) -> None:
    prom = tmp_path / "erp_backup.prom"
    prom.write_bytes(b"erp_backup_last_size_bytes{kind=\"full\" 12\n\xff\xfe garbage")
    metrics.write_textfile(prom, metrics.backup_update("full", 1.0, 7, 1.0, None))
    assert parse(prom)["erp_backup_last_size_bytes"] == [({"kind": "full"}, 7.0)]


def test_missing_directory_and_unwritable_file_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        metrics.write_textfile(tmp_path / "nope" / "x.prom", metrics.restore_test_update(1.0))
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "x.prom").mkdir()  # a directory where the file should be: the rename fails
    with pytest.raises(StorageError, match="metrics textfile .*x.prom"):
        metrics.write_textfile(ro / "x.prom", metrics.restore_test_update(1.0))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["full", "incremental", "differential", "monthly", "we\"ird\\kind\n"]),
                       st.tuples(st.floats(0, 4e9), st.integers(0, 1 << 50), st.floats(0, 1e6)), min_size=1))
def test_textfile_roundtrip(tmp_path_factory: pytest.TempPathFactory,
                            runs: dict[str, tuple[float, int, float]]) -> None:
    prom = tmp_path_factory.mktemp("prom") / "m.prom"
    for kind, (ts, size, dur) in runs.items():
        metrics.write_textfile(prom, metrics.backup_update(kind, ts, size, dur, None))
    back = metrics.read_samples(prom)
    for kind, (ts, size, _dur) in runs.items():
        assert back[("erp_backup_last_success_timestamp_seconds", kind)] == pytest.approx(ts)
        assert back[("erp_backup_last_size_bytes", kind)] == float(size)
        assert back[("erp_backup_verify_ok", kind)] == 1.0


@pytest.fixture
def gateway() -> Iterator[Receiver]:
    g = Receiver()
    yield g
    g.close()


def test_push_sends_every_known_sample(tmp_path: Path, gateway: Receiver) -> None:
    prom = tmp_path / "m.prom"
    metrics.publish(prom, None, "erp-backup", metrics.backup_update("full", 10.0, 5, 1.0, None))
    metrics.publish(prom, gateway.url, "erp-backup", metrics.backup_update("incremental", 20.0, 6, 1.0, 10.0))
    [(method, path, body)] = gateway.requests
    assert (method, path) == ("PUT", "/metrics/job/erp-backup")
    text = body.decode()
    assert 'erp_backup_last_size_bytes{kind="full"} 5.0' in text  # merged from the textfile
    assert 'erp_backup_last_size_bytes{kind="incremental"} 6.0' in text


def test_push_to_a_dead_or_failing_gateway_is_one_line_error(tmp_path: Path) -> None:
    failing = Receiver(status=500)
    try:
        with pytest.raises(StorageError, match="cannot push metrics"):
            metrics.publish(None, failing.url, "erp-backup", metrics.restore_test_update(1.0))
    finally:
        failing.close()
    with pytest.raises(StorageError, match="cannot push metrics"):
        metrics.publish(None, "http://127.0.0.1:1", "erp-backup", metrics.restore_test_update(1.0))


def test_setup_arguments_are_checked_before_the_server() -> None:
    assert parse_duration("75m", what="x") == 4500 and parse_duration("26h", what="x") == 93600
    assert parse_duration("20", what="x") == 20
    for bad in ("", "soon", "-5m", "0s", "1w", "99999999999d", "1e400"):
        with pytest.raises(ConfigError):
            parse_duration(bad, what="--late-full")
    assert check_timezone("Asia/Shanghai") == "Asia/Shanghai"
    for bad in ("Mars/Base", "../../etc/passwd", ""):
        with pytest.raises(ConfigError, match="time zone"):
            check_timezone(bad)
    for good in ("mailto://user:pw@smtp.example.com?to=ops@example.com", "json://127.0.0.1:8080/hook",
                 "dingtalk://token/secret", "wecombot://botkey", "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnl",
                 "twilio://AC735c307c62944b5a:e29dfbcebf390dee9@12345678901/15551234567"):
        assert check_notify_url(good) == good
    for bad in ("nope", "http//x", "unknownscheme://x"):
        with pytest.raises(ConfigError, match="not a valid Apprise URL"):
            check_notify_url(bad)


def test_secrets_in_a_bad_url_never_reach_the_message() -> None:
    with pytest.raises(ConfigError) as e:
        check_notify_url("bogus://user:hunter2@host")
    assert "hunter2" not in str(e.value)


def test_notify_urls_from_the_environment_keep_secrets_out_of_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    from erp_backup.prefect_setup import notify_urls

    monkeypatch.setenv("OPS_HOOKS", "json://127.0.0.1:1/a  mailto://u:hunter2@smtp.example.com?to=o@example.com")
    assert notify_urls(["env:OPS_HOOKS", "wecombot://k"]) == (
        "json://127.0.0.1:1/a", "mailto://u:hunter2@smtp.example.com?to=o@example.com", "wecombot://k")
    monkeypatch.delenv("ERP_BACKUP_NOTIFY", raising=False)
    assert notify_urls(None) is None  # keep what is stored
    monkeypatch.setenv("ERP_BACKUP_NOTIFY", "json://127.0.0.1:2/b")
    assert notify_urls([]) == ("json://127.0.0.1:2/b",)
    with pytest.raises(ConfigError, match="OPS_NONE is not set"):
        notify_urls(["env:OPS_NONE"])
    monkeypatch.setenv("OPS_BAD", "bogus://u:hunter2@h")
    with pytest.raises(ConfigError) as e:
        notify_urls(["env:OPS_BAD"])
    assert "hunter2" not in str(e.value)


def test_plain_pipeline_writes_metrics_and_a_metrics_failure_is_only_a_warning(tmp_path: Path) -> None:
    """The CLI's Prefect-free path (PLAIN_STAGES) publishes the same metrics as the flows."""
    from erp_backup.config import MonitoringConfig
    from erp_backup.core.models import BackupKind
    from erp_backup.pipeline import run_backup
    from tests.conftest import make_settings, make_small_project

    make_small_project(tmp_path / "erp")
    base = make_settings(tmp_path)
    prom = tmp_path / "erp_backup.prom"
    s = base.model_copy(update={"monitoring": MonitoringConfig(textfile=prom)})
    full = run_backup(s, BackupKind.FULL)
    got = parse(prom)
    finished = full.manifest.finished_at.timestamp()
    assert got["erp_backup_last_success_timestamp_seconds"] == [({"kind": "full"}, finished)]
    assert got["erp_backup_last_size_bytes"] == [({"kind": "full"}, float(full.manifest.size_bytes))]
    assert "erp_backup_rpo_seconds" not in got  # one set: no gap yet
    incr = run_backup(s, BackupKind.INCREMENTAL)
    got = parse(prom)
    assert {x[0]["kind"] for x in got["erp_backup_last_success_timestamp_seconds"]} == {"full", "incremental"}
    gap = (incr.manifest.finished_at - full.manifest.finished_at).total_seconds()
    [(labels, value)] = got["erp_backup_rpo_seconds"]
    assert labels == {} and value == pytest.approx(gap, abs=1e-3)  # Unix times as floats: microseconds

    broken = base.model_copy(update={"monitoring": MonitoringConfig(textfile=tmp_path / "gone" / "m.prom")})
    res = run_backup(broken, BackupKind.FULL)
    assert (res.path / "manifest.json").exists()  # the set is committed all the same
    assert any("metrics not written" in w and "does not exist" in w for w in res.report.warnings)


def test_pushgateway_credentials_never_reach_the_error() -> None:
    with pytest.raises(StorageError) as e:
        metrics.publish(None, "http://ops:hunter2@127.0.0.1:1", "erp-backup", metrics.restore_test_update(1.0))
    assert "hunter2" not in str(e.value) and "***@127.0.0.1:1" in str(e.value)


def test_full_disk_keeps_the_previous_textfile_whole(small_disk: Path) -> None:  # noqa: F811
    """A real full filesystem (the 2 MiB tmpfs of tests/integration/test_faults.py): the write fails
    with one line, the previous file stays as it was, no temporary file is left."""
    prom = small_disk / "erp_backup.prom"
    metrics.write_textfile(prom, metrics.backup_update("full", 1.0, 5, 1.0, None))
    before = prom.read_bytes()
    with open(small_disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:  # fill the disk to the last block
            f.write(b"\0" * 4096)
    with pytest.raises(StorageError, match="cannot write metrics textfile"):
        metrics.write_textfile(prom, metrics.backup_update("incremental", 2.0, 6, 1.0, 1.0))
    assert prom.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["erp_backup.prom", "filler"]


def test_plain_verify_publishes_verify_ok_per_kind(tmp_path: Path) -> None:
    """The CLI's Prefect-free verify (erp_backup.jobs.verify_job) writes erp_backup_verify_ok; a set
    with a flipped byte turns its kind to 0."""
    from erp_backup.config import MonitoringConfig
    from erp_backup.core.models import BackupKind
    from erp_backup.jobs import verify_job
    from erp_backup.pipeline import run_backup
    from erp_backup.verify import VerifyFailed
    from tests.conftest import flip_byte, make_settings, make_small_project

    make_small_project(tmp_path / "erp")
    prom = tmp_path / "m.prom"
    s = make_settings(tmp_path).model_copy(update={"monitoring": MonitoringConfig(textfile=prom)})
    run_backup(s, BackupKind.FULL)
    incr = run_backup(s, BackupKind.INCREMENTAL)
    prom.unlink()
    verify_job(s, None, "quick")
    assert dict((x[0]["set_kind"], x[1]) for x in parse(prom)["erp_backup_verify_ok"]) == {
        "full": 1.0, "incremental": 1.0}
    flip_byte(incr.path / "files.tar.zst", 10)
    with pytest.raises(VerifyFailed):
        verify_job(s, None, "quick")
    assert dict((x[0]["set_kind"], x[1]) for x in parse(prom)["erp_backup_verify_ok"]) == {
        "full": 1.0, "incremental": 0.0}


def test_plain_restore_test_publishes_rto_and_rpo(tmp_path: Path) -> None:
    """`erp-backup restore-test` without a Prefect server (the plain path) writes the restore-test
    gauges, like the flow; a missed target still fails the command."""
    from erp_backup.demo import make_project
    from tests.conftest import cli_env, run_cli

    root = tmp_path / "erp"
    db = make_project(root)
    prom = tmp_path / "m.prom"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[project]\nroot = "{root}"\n[database]\nurl = "sqlite:///{db}"\n'
                   f'[storage]\nlocal_dir = "{tmp_path / "bk"}"\n[monitoring]\ntextfile = "{prom}"\n'
                   '[restore_test]\nrpo_target = "1s"\n')
    env = cli_env(ERP_BACKUP_RUNNER="plain")
    assert run_cli("--config", str(cfg), "backup", "full", env=env).returncode == 0
    time.sleep(1.2)
    r = run_cli("--config", str(cfg), "restore-test", env=env)
    assert r.returncode != 0 and "RPO" in r.stderr.splitlines()[-1]
    got = parse(prom)
    [(_, rto)] = got["erp_backup_restore_test_rto_seconds"]
    [(_, rpo)] = got["erp_backup_restore_test_rpo_seconds"]
    assert rto > 0 and rpo >= 1.0
    assert got["erp_backup_last_success_timestamp_seconds"][0][0] == {"kind": "full"}  # the backup's, kept


def test_every_sample_alert_rule_reads_a_metric_we_write_and_no_sample_time(tmp_path: Path) -> None:
    """deployments/prometheus-alerts.yml against the textfile a real restore test writes. A review
    found ErpBackupRestoreTestStale on `timestamp(erp_backup_restore_test_rto_seconds)`: a textfile
    sample has no time of its own, so that is the scrape time and the alert could never fire. The
    restore test now writes when it ran."""
    import re
    import time

    import yaml

    from tests.conftest import REPO

    prom = tmp_path / "erp_backup.prom"
    before = time.time()
    metrics.write_textfile(prom, metrics.restore_test_update(42.0, 600.0))
    (stamp,) = parse(prom)["erp_backup_restore_test_timestamp_seconds"]
    assert before - 1 <= stamp[1] <= time.time() + 1
    rules = yaml.safe_load((REPO / "deployments" / "prometheus-alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    for name, expr in exprs.items():
        assert "timestamp(" not in expr, (name, expr)
        for metric in re.findall(r"erp_backup_[a-z_]+", expr):
            assert metric in metrics.HELP, (name, metric)
    assert "erp_backup_restore_test_timestamp_seconds" in exprs["ErpBackupRestoreTestStale"]
