#!/usr/bin/env bash
# Train the default segmenter on one CUDA GPU from the prepared cache: a 0.30 m and a 0.15 m model, one after
# the other, in <= 7 minutes wall in all (the trainer splits --deadline-minutes between them by wall clock),
# then the CUDA test. Needs only python3 with torch + torchvision + numpy on the device (no rasterio, pydantic, yaml).
#
# Here, once:  python -m fpn_geo.train.cache --config configs/train_default.yaml --out runs/cache.npz   (~15 MB)
# Device:      bash device/train_gpu.sh            # writes <= 6 files to $OUT: 4 checkpoint parts, SHA256SUMS, train_gpu.json
# Here, after: python -m fpn_geo.train.join_parts --from <files_at> --out models/gpu
#              python -m fpn_geo.train.eval_places --checkpoint models/gpu/fpn_r18_gsd030.safetensors   (and gsd015)
# Smoke test:  bash device/train_gpu.sh --cpu      # here, < 3 minutes: tiny steps, meaningless numbers
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CACHE=${CACHE:-runs/cache.npz}
DEST=${OUT:-/tmp/fpn-geo-train-gpu}
mkdir -p "$DEST"
if [ "${1:-}" = "--cpu" ]; then
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  [ -f "$CACHE" ] || "$PY" -m fpn_geo.train.cache --config configs/train_default.yaml --out "$CACHE"
  timeout 150 "$PY" -m fpn_geo.train.gpu --cache "$CACHE" --out-dir "$DEST" --gsd 0.3 0.15 --device cpu \
    --batch 2 --chip 64 --max-steps 3 --deadline-minutes 2
  "$PY" -m fpn_geo.train.join_parts --from "$DEST" --out "$DEST/joined"
  "$PY" -m pytest -q --noconftest -p no:cacheprovider tests/test_train_gpu.py
else
  PY=${PYTHON:-python3}
  [ -f "$CACHE" ] || { echo "no $CACHE: build it where rasterio is (python -m fpn_geo.train.cache ...) and carry it"; exit 2; }
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  # 5.7 min for both models (start-up, cache decode and checkpoint writes included), then ~30 s for the CUDA test
  timeout 380 "$PY" -m fpn_geo.train.gpu --cache "$CACHE" --out-dir "$DEST" --gsd 0.3 0.15 --deadline-minutes "${MINUTES:-5.7}"
  timeout 45 "$PY" -m pytest -q --noconftest -p no:cacheprovider tests/test_train_gpu.py -k cuda || echo "CUDA test failed: $?"
fi
