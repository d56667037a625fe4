#!/usr/bin/env bash
# The tracked tree travels with every device call and must fit 64 MiB with what a call carries; data/ and models/
# alone are larger. For the length of a device session they leave git's index (untracked and ignored, files kept
# on disk) and come back after, by this script, never by hand:
#   bash device/session.sh detach   # before the first call: refuses with anything staged or changed in them
#   bash device/session.sh size     # what a call would send without carry (tracked + untracked-not-ignored)
#   bash device/session.sh attach   # after the last call (and give_back): the index as it was; idempotent
# Commit nothing between detach and attach: git would record data/ and models/ as deleted.
set -euo pipefail
cd "$(dirname "$0")/.."
PATHS=(data models)
EXCLUDE=.git/info/exclude
MARK="# fpn-geo device session (device/session.sh attach removes these)"
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
travels() {
  local t u
  t=$(git ls-files -z | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
  u=$(git ls-files -z -o --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
  echo $(( ${t:-0} + ${u:-0} ))
}
case "${1:-}" in
  detach)
    if grep -qxF "$MARK" "$EXCLUDE" 2>/dev/null; then echo "already detached"; exit 0; fi
    if ! git diff --cached --quiet; then echo "device/session.sh: staged changes: commit or unstage them first" >&2; exit 1; fi
    if [ -n "$(git status --porcelain -- "${PATHS[@]}")" ]; then
      echo "device/session.sh: data/ or models/ have uncommitted changes: commit them first" >&2; exit 1
    fi
    git rm -r -q --cached -- "${PATHS[@]}"
    { echo "$MARK"; for p in "${PATHS[@]}"; do echo "/$p/"; done; } >> "$EXCLUDE"
    echo "detached ${PATHS[*]}: a call now sends $(mib "$(travels)") before carry; run 'bash device/session.sh attach' after"
    ;;
  attach)
    git reset -q -- "${PATHS[@]}"
    if [ -f "$EXCLUDE" ]; then
      awk -v m="$MARK" 'BEGIN {skip = 0} $0 == m {skip = 3} skip > 0 {skip--; next} {print}' "$EXCLUDE" > "$EXCLUDE.tmp"
      mv "$EXCLUDE.tmp" "$EXCLUDE"
    fi
    if [ -n "$(git status --porcelain -- "${PATHS[@]}")" ]; then
      echo "device/session.sh: data/ or models/ differ from HEAD after attach: check git status" >&2; exit 1
    fi
    echo "attached ${PATHS[*]}: the index is as before"
    ;;
  size) echo "a call sends $(mib "$(travels)") before carry" ;;
  *) echo "usage: bash device/session.sh detach|size|attach" >&2; exit 2 ;;
esac
