#!/usr/bin/env bash
# Continue the shipped satellite model on one CUDA GPU: a warm start (--init) from models/satellite.safetensors on
# the satellite cache, for MINUTES (default 9.5) of the session's 15 device minutes, so each session that is lent a
# device adds a run to the model's ledger instead of starting over. Needs only python3 with torch, torchvision,
# numpy and safetensors there (the GPU image has them); no wheels.
#
# Here:    bash device/train_gpu.sh prepare     # .device/train/: the cache + the model (~31 MiB), then the steps
#          bash device/session.sh detach        # data/ and models/ leave the index for the call (the tree must fit)
# Device:  run(carry=[".device/train"], timeout_s=600, command="bash device/train_gpu.sh")   then give_back
# Here:    bash device/session.sh attach
#          .venv/bin/python -m fpn_geo.train.join_parts --from <files_at> --out runs/gpu      # sha256 checked
#          .venv/bin/python -m fpn_geo.train.eval_places --checkpoint runs/gpu/fpn_r18_gsd030.safetensors \
#              --config configs/train_satellite.yaml --sheet runs/gpu/sheet.png --json runs/gpu/heldout.json
#          # better on the held-out places: copy it over models/satellite.* (its ledger says what it had)
# Smoke:   bash device/train_gpu.sh --cpu       # here: 3 tiny steps of the same command, then join_parts
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STAGE=.device/train
DEST=${OUT:-/tmp/fpn-geo-train-gpu}
HERE_PY=$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )
case "${1:-}" in
  prepare)
    mkdir -p "$STAGE"
    # Always rebuilt: a cache left from an earlier session would train on that day's config.
    "$HERE_PY" -m fpn_geo.train.cache --config configs/train_satellite.yaml --out "$STAGE/sat_cache.npz"
    cp -f models/satellite.safetensors models/satellite.json "$STAGE/"
    du -sh "$STAGE"
    sed -n '8,15p' "$0"
    ;;
  --cpu)
    [ -f "$STAGE/sat_cache.npz" ] || bash "$0" prepare >/dev/null
    mkdir -p "$DEST"
    timeout 300 "$HERE_PY" -m fpn_geo.train.gpu --cache "$STAGE/sat_cache.npz" --init "$STAGE/satellite.safetensors" \
      --gsd 0.3 --device cpu --batch 2 --chip 64 --max-steps 3 --out-dir "$DEST"
    "$HERE_PY" -m fpn_geo.train.join_parts --from "$DEST" --out "$DEST/joined"
    ;;
  "")
    [ -f "$STAGE/sat_cache.npz" ] || { echo "no $STAGE: run 'bash device/train_gpu.sh prepare' here and carry $STAGE" >&2; exit 2; }
    mkdir -p "$DEST"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    MIN=${MINUTES:-9.5}
    timeout $(( ${MIN%.*} * 60 + 90 )) python3 -m fpn_geo.train.gpu --cache "$STAGE/sat_cache.npz" \
      --init "$STAGE/satellite.safetensors" --gsd 0.3 --device cuda --lr 1e-3 --warmup 50 --deadline-minutes "$MIN" \
      --out-dir "$DEST"
    timeout 45 python3 -m pytest -q --noconftest -p no:cacheprovider tests/test_train_gpu.py -k cuda \
      || echo "CUDA test failed: $?"
    ;;
  *) echo "usage: bash device/train_gpu.sh [prepare|--cpu]" >&2; exit 2 ;;
esac
