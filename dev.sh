#!/usr/bin/env bash
# erp-backup developer entry point. Two commands set everything up on a fresh machine:
#   ./dev.sh demo   - build a sample Django ERP and run full/incremental/differential backups and restores
#   ./dev.sh test   - install system tools, start PostgreSQL/MariaDB if down, run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV=${ERP_BACKUP_VENV:-.venv}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PREFECT_LOGGING_LEVEL=${PREFECT_LOGGING_LEVEL:-INFO}

need_apt=()
system_tools() {
  command -v zstd >/dev/null || need_apt+=(zstd)
  command -v gpg >/dev/null || need_apt+=(gnupg)
  command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
  command -v tar >/dev/null || need_apt+=(tar)
  if [ "${1:-}" = test ]; then
    command -v pg_dump >/dev/null || need_apt+=(postgresql-client)
    command -v mariadb-dump >/dev/null || need_apt+=(mariadb-client)
    command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
    command -v chromium >/dev/null || need_apt+=(chromium)  # the e2e UI screenshots
    [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
  fi
  if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing system packages: ${need_apt[*]}" >&2
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
  fi
}

python_env() {
  local stamp="$VENV/.installed"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
    "$VENV/bin/python" -c "import prefect, zstandard, gnupg" && touch "$stamp"
  fi
}

start_services() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  if ! mariadb-admin -h 127.0.0.1 -uroot status >/dev/null 2>&1; then
    echo "starting MariaDB" >&2
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql || true
  fi
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && mariadb-admin -h 127.0.0.1 -uroot status >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "PostgreSQL or MariaDB did not come up; the integration tests will fail" >&2
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    system_tools demo; python_env
    exec "$VENV/bin/erp-backup" demo "$@"
    ;;
  test)
    system_tools test; python_env; start_services
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy"
    "$VENV/bin/shellcheck" -x scripts/*.sh
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
