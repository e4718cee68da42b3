"""The wiring: import direction, packaging, the job vocabulary, restore target credentials."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import ConfigError
from erp_backup.core.models import MONTHLY_TAG, BackupId, BackupJob, BackupKind
from erp_backup.pipeline import PLAIN_STAGES, Stages
from erp_backup.restore import resolve_target_database

REPO = Path(__file__).resolve().parents[2]


def _imports(py: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(py.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_imports_point_one_way() -> None:
    """core <- adapters <- engine <- flows/blocks <- cli: nothing below imports what sits above it."""
    above = {
        "core": ("erp_backup.adapters", "erp_backup.flows", "erp_backup.blocks", "erp_backup.cli", "prefect"),
        "adapters": ("erp_backup.flows", "erp_backup.cli", "erp_backup.backup", "erp_backup.restore",
                     "erp_backup.pipeline", "prefect"),
    }
    for layer, banned in above.items():
        for py in (REPO / "erp_backup" / layer).rglob("*.py"):
            for m in _imports(py):
                assert not m.startswith(banned), (str(py.relative_to(REPO)), m)
    engine = ["backup.py", "pipeline.py", "restore.py", "verify.py", "config.py", "tables.py"]
    for name in engine:
        for m in _imports(REPO / "erp_backup" / name):
            assert not m.startswith(("erp_backup.flows", "erp_backup.cli", "prefect")), (name, m)
    for m in _imports(REPO / "erp_backup" / "demo.py"):
        assert not m.startswith("erp_backup.cli"), m  # no cli <-> demo circle


def test_flows_and_blocks_install_inside_the_project_namespace() -> None:
    # outside the repository (no cwd on sys.path), as the installed tool sees it
    code = "import importlib.util as u; print(u.find_spec('flows'), u.find_spec('blocks'))"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"], "a top-level 'flows' or 'blocks' package is installed"
    for name in ("flows", "blocks"):
        spec = importlib.util.find_spec(f"erp_backup.{name}")
        assert spec is not None and spec.origin is not None
        assert Path(spec.origin).resolve().parent == REPO / name  # the code stays in flows/ and blocks/
    yaml = (REPO / "prefect.yaml").read_text()
    assert "entrypoint: flows/backup.py:full_backup" in yaml  # prefect.yaml still points at flows/


def test_every_stage_is_named_in_the_order_and_plain() -> None:
    assert tuple(f.name for f in Stages.__dataclass_fields__.values()) == Stages.order()
    for name in Stages.order():
        assert callable(getattr(PLAIN_STAGES, name))


@pytest.mark.parametrize("job, kind, tags, label", [
    (BackupJob.FULL, BackupKind.FULL, (), "full"),
    (BackupJob.INCREMENTAL, BackupKind.INCREMENTAL, (), "incr"),
    (BackupJob.DIFFERENTIAL, BackupKind.DIFFERENTIAL, (), "diff"),
    (BackupJob.MONTHLY, BackupKind.FULL, (MONTHLY_TAG,), "monthly"),
])
def test_jobs_map_to_kinds_tags_and_ids(job: BackupJob, kind: BackupKind, tags: tuple[str, ...],
                                        label: str) -> None:
    from datetime import UTC, datetime

    assert (job.kind, job.tags) == (kind, tags)
    bid = BackupId.make(datetime(2026, 11, 30, 17, tzinfo=UTC), job.kind, job.tags)
    assert bid.value == f"20261130T170000Z-{label}" and bid.kind is kind


LIVE_PG = DatabaseUrl("postgresql", "erp", "127.0.0.1", 5432, "erp", "livepw")


def test_target_on_the_live_server_reuses_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERP_BACKUP_TARGET_DB_PASSWORD", raising=False)
    t = resolve_target_database("postgresql://erp@localhost:5432/erp_restored", LIVE_PG)
    assert t is not None and (t.user, t.password, t.name) == ("erp", "livepw", "erp_restored")
    t = resolve_target_database("postgresql://127.0.0.1:5432/scratch", LIVE_PG)  # no user: the live one
    assert t is not None and (t.user, t.password) == ("erp", "livepw")


def test_target_elsewhere_takes_the_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERP_BACKUP_TARGET_DB_PASSWORD", raising=False)
    other_host = resolve_target_database("postgresql://erp@db2.internal:5432/erp", LIVE_PG)
    other_user = resolve_target_database("postgresql://admin@127.0.0.1:5432/erp2", LIVE_PG)
    other_engine = resolve_target_database("mysql://erp@127.0.0.1:3306/erp", LIVE_PG)
    assert other_host is not None and other_host.password == ""  # never the live password elsewhere
    assert other_user is not None and other_user.password == ""
    assert other_engine is not None and other_engine.password == ""
    monkeypatch.setenv("ERP_BACKUP_TARGET_DB_PASSWORD", "envpw")
    t = resolve_target_database("postgresql://erp@db2.internal:5432/erp", LIVE_PG)
    assert t is not None and t.password == "envpw"


def test_target_with_a_password_is_refused_and_none_is_none() -> None:
    with pytest.raises(ConfigError) as ei:
        resolve_target_database("postgresql://erp:typed-in@127.0.0.1/x", LIVE_PG)
    assert "typed-in" not in str(ei.value) and "password" in str(ei.value)
    assert resolve_target_database(None, LIVE_PG) is None and resolve_target_database("", None) is None
    s = resolve_target_database("sqlite:////tmp/x.sqlite3", None)
    assert s is not None and (s.engine, s.name, s.user, s.password) == ("sqlite", "/tmp/x.sqlite3", "", "")


def test_deployed_flows_take_no_settings_plan_or_preflight() -> None:
    """What the UI can start (every deployment's entrypoint) takes a config path and the operator's
    request, never pre-checked values: a run from the UI always runs its own checks."""
    import importlib
    import inspect

    import yaml

    from erp_backup.flows import backup as fb

    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    for d in deployments:
        path, name = d["entrypoint"].split(":")
        module = importlib.import_module("erp_backup." + path.removesuffix(".py").replace("/", "."))
        params = set(inspect.signature(getattr(module, name).fn).parameters)
        assert "config" in params and not params & {"settings", "checked", "plan"}, (name, params)
    for job, cli_flow in fb.CLI_FLOWS.items():
        assert cli_flow.name == fb.FLOWS[job].name  # one flow per job in the UI and the automations
