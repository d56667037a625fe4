#!/usr/bin/env bash
# The cp312 wheels the GPU image lacks (it has torch, numpy, scipy, scikit-image, pandas, safetensors, pyyaml), saved
# to .device/whl/ (git-ignored): about 61 MB. rasterio 1.4.0 and pyogrio 0.9.0 are older than ours on purpose: their
# wheels are 22 and 23 MB against 35 and 33, and a device call carries 64 MiB.  Usage: bash device/wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do plat+=(--platform "$p"); done
mkdir -p .device/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .device/whl \
  rasterio==1.4.0 pyogrio==0.9.0 pyproj==3.7.2 shapely==2.2.0 geopandas==1.2.0 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated_types typing_inspection==0.4.5 affine cligj click_plugins
du -sh .device/whl
