"""A malformed database URL holding a password, through the CLI: one ``erp-backup: error:`` line,
no password on stdout or stderr, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import cli_env, listing, make_settings, make_small_project, run_cli, write_config
from tests.integration.test_cli_errors import assert_one_error_line

pytestmark = pytest.mark.integration
PW = "Pw-S3cr3t/é:@x#"  # '/', ':', '@', '#' and a non-ASCII letter, as operators' passwords have
ENC = quote(PW, safe="")


@pytest.mark.parametrize(("url", "names"), [
    (f"postgresql:/erp:{PW}@db.example/erp", "not a database URL"),
    (f"erp:{PW}@db.example/erp", "not a database URL"),
    (f"mysql//erp:{PW}@db.example/erp", "not a database URL"),
    (f"postgresql://erp:{ENC}@db.example:notaport/erp", "bad port"),
    (f"postgres://erp:{PW}@db.example/erp", "percent-encode"),
    (f"mysql://erp:{ENC}@[db.example/erp", "bad host"),
    (f"sqlite://erp:{ENC}@db.example", "SQLite URL takes a file path"),
    (f"oracle://erp:{ENC}@db.example/erp", "unsupported database scheme 'oracle'"),
], ids=["one-slash", "no-scheme", "no-colon", "bad-port", "slash-in-password", "bracket", "sqlite", "oracle"])
@pytest.mark.parametrize("source", ["config", "environment"])
def test_a_malformed_url_never_prints_its_password(tmp_path: Path, url: str, names: str, source: str) -> None:
    root = make_small_project(tmp_path / "erp")
    config = write_config(tmp_path / "config.toml", make_settings(tmp_path, root=root))
    env = cli_env()
    if source == "config":
        text = config.read_text()
        start = text.index("url = ")
        end = text.index("\n", start)
        config.write_text(text[:start] + f"url = {json.dumps(url)}" + text[end:])
    else:
        config.write_text("\n".join(ln for ln in config.read_text().splitlines() if not ln.startswith("url = ")))
        env = cli_env(DATABASE_URL=url)
    before = listing(tmp_path)

    res = run_cli("--config", str(config), "backup", "full", env=env)

    line = assert_one_error_line(res, names)
    for secret in (PW, ENC, "S3cr3t"):
        assert secret not in res.stderr and secret not in res.stdout, line
    assert listing(tmp_path) == before
