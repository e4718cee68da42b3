#!/usr/bin/env bash
# restore.sh [--yes] [--backup ID | --at TIME] [--files-only | --database-only] [--verify quick|full] [--allow-old]
#
# The strategy's emergency procedure (§6.1), step by step:
#   1. confirm the failure (the current state of the backups is shown);
#   2. choose the latest valid set (the candidates are listed with their age and verification);
#   3. restore in place: erp-backup stops the services ([restore] stop), takes a safety copy of what
#      it will overwrite, restores files and database, starts the services ([restore] start) and
#      runs the smoke check ([restore] smoke); if anything fails it puts the safety copy back and
#      starts the services again.
# Each destructive step asks for confirmation; --yes answers yes (for runbooks). --verify full checks
# the candidates deeply; --allow-old accepts a newest valid set older than [restore] max_age (when the
# backups stopped days before the failure). All the logic is `erp-backup restore --in-place`'s; this
# script only walks an operator through it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

yes=0
pick=()
scope=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --yes|-y) yes=1 ;;
    --backup|--at)
      [ $# -ge 2 ] || die "$1 needs a value"
      pick=("$1" "$2"); shift ;;
    --files-only|--database-only) scope=("$1") ;;
    --verify)
      [ $# -ge 2 ] || die "$1 needs a value (quick or full)"
      extra+=("$1" "$2"); shift ;;
    --allow-old) extra+=("$1") ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "usage: $PROG [--yes] [--backup ID | --at TIME] [--files-only | --database-only]" \
         "[--verify quick|full] [--allow-old]" >&2; exit 2 ;;
  esac
  shift
done
require_root
require_cli

confirm() {  # confirm "question": 0 for yes
  if [ "$yes" -eq 1 ]; then
    echo "$1 [y/N] yes (--yes)"
    return 0
  fi
  local answer=""
  read -r -p "$1 [y/N] " answer || true
  case "$answer" in
    y|Y|yes|YES) return 0 ;;
    *) return 1 ;;
  esac
}

echo "== step 1/3: confirm the failure"
erp status || true
confirm "Is the ERP really broken, and do you want to restore it from a backup?" \
  || { echo "$PROG: nothing changed"; exit 1; }

echo
echo "== step 2/3: the candidates (newest last; a set whose verification failed is never chosen)"
erp list
if [ ${#pick[@]} -eq 0 ]; then
  echo "the newest set whose whole chain verifies will be restored"
else
  echo "requested: ${pick[*]}"
fi

echo
echo "== step 3/3: restore in place (stop services, safety copy, restore, start services, smoke check)"
confirm "Overwrite the live files and database now?" || { echo "$PROG: nothing changed"; exit 1; }
exec "$ERP_BACKUP_BIN" restore --in-place "${pick[@]}" "${scope[@]}" "${extra[@]}" --yes
