#!/usr/bin/env bash
# Here, before a device call: build .device/ (git-ignored), everything a GPU check needs beside the code, and print
# the calls. Nothing in git's index is touched.
#   .device/whl/     the cp312 wheels the GPU image lacks (device/wheels.sh), about 61 MB
#   .device/assets/  the bundled model and the Kampala mosaic the 8192² bench scene is built from, about 40 MB
# The two do not fit one 64 MiB call, so a check is two calls to one warm machine (it stays warm 30 s after a call
# and keeps ignored files between calls): `bash device/run.sh stage` installs the wheels into .device/site, then
# `bash device/run.sh` runs the CUDA tests and device/gpu.sh with the bundled model.
# Every call also sends the tracked tree: this script measures it and says when a call cannot travel.
# Usage: bash device/prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=$((64 * 1024 * 1024))
[ -n "$(ls .device/whl/*.whl 2>/dev/null)" ] || bash device/wheels.sh
mkdir -p .device/assets
cp -f models/default.safetensors models/default.json .device/assets/
cp -f data/kampala_oam/mosaic_z21_12x8_3072x2048.tif .device/assets/mosaic.tif
size() { du -sb "$@" | awk '{s += $1} END {print s + 0}'; }
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=${untracked:-0}
whl=$(size .device/whl) assets=$(size .device/assets)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "tracked $(mib "$tracked"), untracked not ignored $(mib "$untracked"), .device/whl $(mib "$whl"), .device/assets $(mib "$assets")"
ok=1
for carry in whl assets; do
  c=$([ $carry = whl ] && echo "$whl" || echo "$assets")
  total=$((tracked + untracked + c))
  if [ "$total" -gt "$LIMIT" ]; then
    echo "a call carrying .device/$carry would send $(mib "$total"), over the device tool's 64 MiB" >&2
    ok=0
  fi
done
cat <<CALLS
device calls (one warm machine, the second within 30 s of the first; give_back after):
  1. run(carry=[".device/whl"], timeout_s=120, command="bash device/run.sh stage")
  2. run(carry=[".device/assets"], timeout_s=540, command="bash device/run.sh")
CALLS
if [ $ok = 0 ]; then
  echo "the tracked tree is too large to travel: data/ and models/ ($(mib "$(size data models)")) are tracked; see device/README.md" >&2
  exit 1
fi
