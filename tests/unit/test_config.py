"""Configuration: defaults, TOML loading, errors that name the key, database URL resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from erp_backup.adapters.scan import Excluder
from erp_backup.config import (
    DEFAULT_EXCLUDES,
    load_settings,
    read_dotenv,
    render_config,
    resolve_database_url,
    settings_from_dict,
)
from erp_backup.core.errors import ConfigError


def test_defaults_follow_the_strategy() -> None:
    s = settings_from_dict({})
    assert str(s.storage.local_dir) == "/var/backups/django_erp"
    assert s.project.include == ["."]
    for x in ("*.pyc", "__pycache__", "venv", "node_modules", "staticfiles", "media"):
        assert x in s.project.exclude
    assert s.project.key_files == [".env", "manage.py"]


def test_rendered_template_loads_back(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(render_config(tmp_path, tmp_path / "bk", "sqlite:////x/db.sqlite3"))
    s = load_settings(p)
    assert s.project.root == tmp_path and s.database.url is not None
    assert s.database.url.get_secret_value() == "sqlite:////x/db.sqlite3"
    assert s.project.exclude == DEFAULT_EXCLUDES


@pytest.mark.parametrize(("toml", "needle"), [
    ("[project]\nroot = 5\n", "project.root"),
    ("[project]\nroot = \"relative/path\"\n", "project.root: must be an absolute path"),
    ("[backup]\ncompression_level = 40\n", "backup.compression_level"),
    ("[storage]\nlocal_dirr = \"/x\"\n", "storage.local_dirr: unknown key"),
    ("[backup]\nmissing_parent = \"maybe\"\n", "backup.missing_parent"),
    ("[project\nroot=1", "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        load_settings(p)


def test_missing_config_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="erp-backup init"):
        load_settings(tmp_path / "nope.toml")


def test_database_url_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text('# comment\nexport DATABASE_URL="sqlite:////from/dotenv.db"\nX=1\n')
    assert read_dotenv(tmp_path / ".env")["DATABASE_URL"] == "sqlite:////from/dotenv.db"
    monkeypatch.delenv("DATABASE_URL", raising=False)
    s = settings_from_dict({"project": {"root": str(tmp_path)}})
    assert resolve_database_url(s).name == "/from/dotenv.db"
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/fromenv")
    assert resolve_database_url(s).name == "fromenv"
    s2 = settings_from_dict({"project": {"root": str(tmp_path)}, "database": {"url": "mysql://r@h/explicit"}})
    assert resolve_database_url(s2).name == "explicit"
    monkeypatch.delenv("DATABASE_URL")
    (tmp_path / ".env").unlink()
    with pytest.raises(ConfigError, match="no database configured"):
        resolve_database_url(s)


def test_excluder_rules() -> None:
    ex = Excluder(["*.pyc", "venv", "/media", "apps/*/tmp"], extra_paths=["db.sqlite3"])
    assert ex.excluded("a/b/x.pyc", "x.pyc")
    assert ex.excluded("deep/venv", "venv")
    assert ex.excluded("media", "media")
    assert ex.excluded("apps/sales/tmp", "tmp")
    assert ex.excluded("db.sqlite3", "db.sqlite3")
    assert not ex.excluded("apps/sales/models.py", "models.py")
    assert not ex.excluded("venvironment", "venvironment")


@pytest.mark.parametrize("key", ["source", "sorce", "storage_dir", "retain"])
def test_unknown_top_level_key_is_an_error_naming_it(key: str) -> None:
    """A top-level key is checked like a key in a section (``source`` is not a key: it is where the
    settings were read from)."""
    with pytest.raises(ConfigError) as ei:
        settings_from_dict({key: "x", "project": {"root": "/srv/erp"}}, source="c.toml")
    assert f"{key}: unknown key" in str(ei.value) and "c.toml" in str(ei.value)


def test_settings_are_frozen_and_the_database_url_is_secret() -> None:
    s = settings_from_dict({"database": {"url": "postgresql://u:hunter2@h/db"}}, source="c.toml")
    assert s.source == "c.toml"
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()
    assert s.database_url().password == "hunter2"
    with pytest.raises(ValidationError):
        s.backup.threads = 4  # type: ignore[misc]
