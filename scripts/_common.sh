# shellcheck shell=bash
# Shared by backup.sh, verify_backup.sh and restore.sh: find the CLI, insist on root.
# The scripts are thin wrappers of `erp-backup`; every decision is the CLI's.

ERP_BACKUP_BIN=${ERP_BACKUP_BIN:-erp-backup}
PROG=$(basename "$0")

die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (the backups and the live ERP are root-only): run it with sudo"
  fi
}

require_cli() {
  command -v "$ERP_BACKUP_BIN" >/dev/null 2>&1 \
    || die "'$ERP_BACKUP_BIN' not found — install erp-backup or set ERP_BACKUP_BIN to its path"
}

erp() {
  "$ERP_BACKUP_BIN" "$@"
}
