#!/usr/bin/env bash
# GPU checks for the `device` tool (one CUDA GPU):
#   1. gpu_bench.py: the model alone (tiles/s at 512², eager and torch.compile, bf16, channels_last, batch 64), then
#      `segment` end to end on an 8192² scene at 0.30 m built there from the bundled Kampala mosaic (a 16384² model
#      grid), with labels made on the GPU (labelling: device) and on the CPU, with and without the probability COG,
#      windows resampled on the GPU (resampling: device) and by GDAL as they are read;
#      the ratio of each to model-only, and the seconds of every stage;
#   2. gpu_dask.py, where dask_cuda is installed: the flows' worker path on a LocalCUDACluster against `segment`.
#
# A device call: `bash device/prepare.sh` here builds .device/ and prints the two calls (device/run.sh runs this).
# Without the checkpoint (no `models/default.safetensors`) gpu_bench uses random weights in its architecture:
# their noisy output makes post-processing slower than a trained model's.
# Usage:  bash device/gpu.sh            # on the GPU machine, from device/run.sh (results also in $OUT/gpu.jsonl)
#         bash device/gpu.sh --cpu      # smoke test here: tiny sizes, meaningless numbers
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp}/gpu.jsonl
if [ "${1:-}" = "--cpu" ]; then
  shift
  timeout 600 "$PY" device/gpu_bench.py --cpu "$@" | tee "$LOG"
  timeout 300 "$PY" device/gpu_dask.py --cpu | tee -a "$LOG"
else
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
  ckpt=()
  [ -f models/default.safetensors ] && ckpt=(--checkpoint models/default.safetensors)
  timeout 450 "$PY" device/gpu_bench.py --batch 64 --tile 512 --iters 20 --scene-side 8192 \
    --workdir /tmp/fpn-geo-gpu "${ckpt[@]}" "$@" | tee "$LOG" || echo "gpu_bench failed: $?"
  if "$PY" -c "import dask_cuda" 2>/dev/null; then
    timeout 120 "$PY" device/gpu_dask.py --batch 64 --tile 512 --scene-side 8192 --workdir /tmp/fpn-geo-gpu \
      | tee -a "$LOG"
  else
    echo "no dask_cuda here: gpu_dask.py skipped"
  fi
fi
