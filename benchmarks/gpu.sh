#!/usr/bin/env bash
# GPU checks for the `device` tool (one CUDA GPU, < 7 minutes):
#   1. gpu_bench.py: ResNet-50 FPN model-only tiles/s at 512², eager vs torch.compile (bf16, channels_last,
#      batch 64), then `segment` end to end on an 8192² scene built there from the bundled Kampala mosaic (16384² did not
#      finish in 280 s on an H100 host: CPU vectorization dominates; try --scene-side 16384 there again);
#   2. gpu_dask.py: the flows' worker path (predict_batch on a dask_cuda.LocalCUDACluster) against `segment`
#      in-process on an 8192² scene: same buildings, and the time ratio.
# Usage:  bash benchmarks/gpu.sh            # on the GPU machine (results also in $OUT/gpu.jsonl if OUT is set)
#         bash benchmarks/gpu.sh --cpu      # smoke test here: tiny sizes, meaningless numbers
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp}/gpu.jsonl
if [ "${1:-}" = "--cpu" ]; then
  shift
  timeout 600 "$PY" benchmarks/gpu_bench.py --cpu "$@" | tee "$LOG"
  timeout 300 "$PY" benchmarks/gpu_dask.py --cpu | tee -a "$LOG"
else
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
  timeout 280 "$PY" benchmarks/gpu_bench.py --batch 64 --tile 512 --iters 20 --scene-side 8192 --workdir /tmp/fpn-geo-gpu "$@" | tee "$LOG" || echo "gpu_bench failed: $?"
  timeout 150 "$PY" benchmarks/gpu_dask.py --batch 64 --tile 512 --scene-side 8192 --workdir /tmp/fpn-geo-gpu | tee -a "$LOG"
fi
