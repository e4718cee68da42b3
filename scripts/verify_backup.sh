#!/usr/bin/env bash
# verify_backup.sh [--quick] [ID…]
#
# The strategy's §5.3 check: verify the sets (all of them by default; --quick: checksums only),
# show what the verification log gained, and say whether the backups are usable.
# Every verification appends one line per set to the verification log ([verify] log in the config,
# /var/log/erp-backup/verify.log by default). Exit status: 0 every set passed, 1 a set failed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

args=()
for a in "$@"; do
  case "$a" in
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    --quick) args+=(--quick) ;;
    -*) echo "usage: $PROG [--quick] [ID…]" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
require_root
require_cli

log=$(erp verify-log --path)
before=0
[ -f "$log" ] && before=$(wc -l <"$log")

status=0
erp verify "${args[@]}" || status=$?

echo
echo "verification log ($log), this run:"
if [ -f "$log" ]; then
  after=$(wc -l <"$log")
  if [ "$after" -ge "$before" ]; then
    tail -n "$((after - before))" "$log"
  else  # rotated while we ran: show the newest lines
    tail -n 20 "$log"
  fi
fi
echo
if [ "$status" -eq 0 ]; then
  echo "$PROG: every verified set is usable"
else
  echo "$PROG: a set FAILED verification — do not restore from it; see the lines above" >&2
fi
exit "$status"
