"""Is a Prefect API configured? Answered the way Prefect resolves ``PREFECT_API_URL``, without
importing Prefect (``import prefect`` alone costs ~2 s; ``prefect.settings`` imports all of it).

Prefect 3 takes the setting from, first match wins: the environment, ``./.env``, ``./prefect.toml``
(``[api] url``), ``./pyproject.toml`` (``[tool.prefect.api] url``), then the active profile
(``PREFECT_PROFILE`` or ``active =`` in the profiles file: ``PREFECT_PROFILES_PATH``, else
``$PREFECT_HOME/profiles.toml``, else ``~/.prefect/profiles.toml``). An empty value counts as unset
(Prefect then runs a temporary server). ``tests/unit/test_runner.py`` checks each source against
Prefect's own answer.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEY = "PREFECT_API_URL"
_TEST_MODE = ("PREFECT_TEST_MODE", "PREFECT_UNIT_TEST_MODE", "PREFECT_TESTING_UNIT_TEST_MODE",
              "PREFECT_TESTING_TEST_MODE")


def _toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def _dig(data: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data


def _dotenv(path: Path) -> dict[str, str]:
    from erp_backup.config import read_dotenv

    try:
        return read_dotenv(path) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, ValueError):
        return {}


def _profiles_path(env: Mapping[str, str], cwd: Path, dotenv: Mapping[str, str]) -> Path | None:
    if any(env.get(k) for k in _TEST_MODE):
        return None  # Prefect's test mode reads only its bundled profiles (no API URL there)
    explicit = (env.get("PREFECT_PROFILES_PATH") or dotenv.get("PREFECT_PROFILES_PATH")
                or _dig(_toml(cwd / "prefect.toml"), "profiles_path")
                or _dig(_toml(cwd / "pyproject.toml"), "tool", "prefect", "profiles_path"))
    if explicit:
        return Path(str(explicit)).expanduser()
    home = env.get("PREFECT_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".prefect") / "profiles.toml"


def configured_api_url(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str | None:
    """The Prefect API URL this process would use, or ``None`` (no server: Prefect would start a
    temporary one)."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    if KEY in env:
        return env[KEY] or None
    dotenv = _dotenv(cwd / ".env")
    if KEY in dotenv:
        return dotenv[KEY] or None
    for value in (_dig(_toml(cwd / "prefect.toml"), "api", "url"),
                  _dig(_toml(cwd / "pyproject.toml"), "tool", "prefect", "api", "url")):
        if value is not None:
            return str(value) or None
    path = _profiles_path(env, cwd, dotenv)
    if path is None:
        return None
    data = _toml(path)
    active = env.get("PREFECT_PROFILE") or data.get("active")
    profile = _dig(data, "profiles", str(active)) if active else None
    value = profile.get(KEY) if isinstance(profile, dict) else None
    return str(value) if value else None


def api_problem(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url`` is not a Prefect API that answers, or None. ``/health`` must answer 2xx, or 401/403
    (an API key or auth string may be needed): a refused or timed-out connection, or anything else
    answering there (a proxy's 502 while the server is down, another web server on that port: 404)
    would only fail later, inside Prefect, with a traceback."""
    import urllib.error
    import urllib.request

    if not url.lower().startswith(("http://", "https://")):
        return "it is not an http(s) URL"  # Prefect speaks HTTP(S) only
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return None
        return f"it answers HTTP {e.code} for /health: not a running Prefect API"
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return f"it does not answer ({reason})"


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Does a Prefect API answer at ``url``? (``api_problem`` is None.)"""
    return api_problem(url, timeout) is None
