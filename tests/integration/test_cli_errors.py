"""Bad input through the CLI: one line on stderr (``erp-backup: error: ...``), a non-zero exit, and
nothing written. These checks run before Prefect starts, so each process takes about a second."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from erp_backup.core.models import BackupKind
from erp_backup.pipeline import run_backup
from tests.conftest import ERROR_PREFIX, listing, make_settings, make_small_project, run_cli, write_config

pytestmark = pytest.mark.integration


def assert_one_error_line(res: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert res.returncode != 0, res
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{res.stderr}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in res.stdout and "prefect" not in res.stdout.lower()
    return lines[0]


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    """(project root, config path) for a valid small project; backups go to <tmp>/backups."""
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    return root, write_config(tmp_path / "config.toml", s)


def test_missing_config(tmp_path: Path) -> None:
    before = listing(tmp_path)
    missing = tmp_path / "nope" / "config.toml"
    res = run_cli("--config", str(missing), "backup", "full")
    assert_one_error_line(res, str(missing), "does not exist", "erp-backup init")
    assert res.returncode == 2
    assert listing(tmp_path) == before


def test_missing_default_config_names_the_way_out(tmp_path: Path) -> None:
    assert not Path("/etc/erp-backup/config.toml").exists()
    res = run_cli("list")
    assert_one_error_line(res, "no config file", "--config")


def test_config_with_an_unknown_key(tmp_path: Path, project: tuple[Path, Path]) -> None:
    _, config = project
    config.write_text(config.read_text().replace("[backup]", "[backup]\ncompresion_level = 5"))
    before = listing(tmp_path)
    res = run_cli("--config", str(config), "backup", "full")
    assert_one_error_line(res, "backup.compresion_level", "unknown key")
    assert listing(tmp_path) == before


def test_unreadable_project_root(tmp_path: Path) -> None:
    """The root belongs to another user, mode 0700, and the CLI runs without the capabilities that
    let root ignore permissions (``setpriv``): as for any non-root backup user, it is unreadable.
    (``runuser -u nobody`` cannot be used here: the venv's interpreter lives under /root, 0700.)"""
    root = make_small_project(tmp_path / "erp")
    os.chown(root, 65534, 65534)
    os.chmod(root, 0o700)
    s = make_settings(tmp_path, root=root)
    config = write_config(tmp_path / "config.toml", s)
    before = listing(tmp_path)
    res = run_cli("--config", str(config), "backup", "full", no_dac=True)
    assert_one_error_line(res, str(root), "not readable")
    assert not s.storage.local_dir.exists()
    assert listing(tmp_path) == before


def test_project_root_missing(tmp_path: Path) -> None:
    s = make_settings(tmp_path, root=tmp_path / "gone")
    config = write_config(tmp_path / "config.toml", s)
    res = run_cli("--config", str(config), "backup", "incremental")
    assert_one_error_line(res, str(tmp_path / "gone"), "does not exist")
    assert not s.storage.local_dir.exists()


def test_database_path_does_not_exist(tmp_path: Path) -> None:
    root = make_small_project(tmp_path / "erp")
    db = tmp_path / "no-such" / "db.sqlite3"
    s = make_settings(tmp_path, root=root, db=f"sqlite:///{db}")
    config = write_config(tmp_path / "config.toml", s)
    before = listing(tmp_path)
    res = run_cli("--config", str(config), "backup", "full")
    assert_one_error_line(res, str(db), "does not exist")
    assert not s.storage.local_dir.exists() and not db.exists()
    assert listing(tmp_path) == before


@pytest.mark.parametrize("kind", ["incremental", "differential"])
def test_no_parent_for_an_incremental_or_differential(tmp_path: Path, project: tuple[Path, Path],
                                                      kind: str) -> None:
    _, config = project
    before = listing(tmp_path)
    res = run_cli("--config", str(config), "backup", kind)
    assert_one_error_line(res, f"cannot run a {kind} backup", "no full backup", "backup full")
    assert not (tmp_path / "backups").exists()
    assert listing(tmp_path) == before


def test_no_parent_in_an_existing_repository_changes_nothing(tmp_path: Path) -> None:
    """A repository whose only full set was removed by hand: the incremental fails and leaves the
    repository exactly as it was (no partial, no lock change)."""
    root = make_small_project(tmp_path / "erp")
    s = make_settings(tmp_path, root=root)
    config = write_config(tmp_path / "config.toml", s)
    first = run_backup(s, BackupKind.FULL)
    shutil.rmtree(first.path)
    before = listing(s.storage.local_dir)
    res = run_cli("--config", str(config), "backup", "incremental")
    assert_one_error_line(res, "no full backup")
    assert listing(s.storage.local_dir) == before


@pytest.mark.parametrize("args, fragments", [
    (["verify", "20991231T000000Z-full"], ["20991231T000000Z-full", "not found"]),
    (["verify", "not-an-id"], ["'not-an-id' is not a backup id"]),
    (["show", "20991231T000000Z-full"], ["not found"]),
    (["restore", "--backup", "20991231T000000Z-full", "--target-dir", "{tmp}/r"], ["not found"]),
    (["restore", "--at", "yesterday", "--target-dir", "{tmp}/r"], ["--at", "not an ISO time"]),
])
def test_read_only_commands_with_bad_arguments(tmp_path: Path, project: tuple[Path, Path], args: list[str],
                                               fragments: list[str]) -> None:
    _, config = project
    before = listing(tmp_path)
    res = run_cli("--config", str(config), *[a.format(tmp=tmp_path) for a in args])
    assert_one_error_line(res, *fragments)
    assert listing(tmp_path) == before
