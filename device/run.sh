#!/usr/bin/env bash
# On the device machine (see device/prepare.sh for the calls):
#   bash device/run.sh stage   # carry .device/whl: install the wheels into .device/site (kept while the machine is warm)
#   bash device/run.sh         # carry .device/assets: the CUDA tests, then device/gpu.sh with the bundled model
# Results: $OUT/gpu.jsonl (one JSON line per measurement) and $OUT/tests.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ "${1:-}" = "stage" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .device/site \
    .device/whl/*.whl && echo "staged: $(ls .device/site | wc -l) entries in .device/site" || exit 1
  exit 0
fi
[ -d .device/site ] || { echo ".device/site is missing: run 'bash device/run.sh stage' first, on this warm machine" >&2; exit 1; }
[ -f .device/assets/default.safetensors ] || { echo ".device/assets is missing: carry it (bash device/prepare.sh)" >&2; exit 1; }
export PYTHONPATH="$PWD:$PWD/.device/site"
export FPN_GEO_BENCH_MOSAIC="$PWD/.device/assets/mosaic.tif"
OUT=${OUT:-/tmp}
mkdir -p models
[ -f models/default.safetensors ] || cp .device/assets/default.safetensors .device/assets/default.json models/
timeout 120 python3 -m pytest -q -p no:cacheprovider --noconftest -k cuda \
  tests/test_trace_torch.py tests/test_resample_torch.py tests/test_instances.py 2>&1 | tee "$OUT/tests.txt"
PYTHON=python3 bash device/gpu.sh --checkpoint .device/assets/default.safetensors "$@"
