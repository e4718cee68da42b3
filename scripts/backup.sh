#!/usr/bin/env bash
# backup.sh {full|incremental|differential|monthly}
#
# Runs one backup with erp-backup and exits with its status (0: the new set is committed and
# verified; non-zero: nothing new was committed, the error line says why). For cron:
#   0 2 * * *  root  /opt/erp-backup/scripts/backup.sh full
#   0 * * * *  root  /opt/erp-backup/scripts/backup.sh incremental
# The config comes from $ERP_BACKUP_CONFIG or /etc/erp-backup/config.toml.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  echo "usage: $PROG {full|incremental|differential|monthly}" >&2
  exit 2
}

[ $# -eq 1 ] || usage
case "$1" in
  full|incremental|differential|monthly) ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) usage ;;
esac
require_root
require_cli
exec "$ERP_BACKUP_BIN" backup "$1"
