#!/usr/bin/env bash
# Set up a CUDA 13.0 toolchain from PyPI for `cargo build --features cuda`, on a machine without a
# GPU or a system CUDA install. Installs into a separate folder (default ~/.cache/cu13, or $1)
# with `pip install --target`, so no Python environment is touched.
#
#   .ci/cuda-toolchain.sh [DIR]
#   export CUDA_HOME=DIR/nvidia/cu13 PATH=DIR/nvidia/cu13/bin:$PATH CUDA_COMPUTE_CAP=90
#   cargo build --features cuda
#
# All parts are pinned to the 13.0 line: an unpinned pip mixes in newer parts (13.4's PTX is too
# new for a 580 driver). libcuda comes with the driver, so the link uses a stub with the driver
# functions candle's cudarc declares; the real libcuda.so.1 is loaded where the binary runs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$HOME/.cache/cu13}
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)
[ -x "$DIR/nvidia/cu13/bin/nvcc" ] || python3 -m pip install --quiet --no-deps --target "$DIR" \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
CU=$DIR/nvidia/cu13
cd "$CU/lib"
for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done
ln -sf libcurand.so.10 libcurand.so

# The link-time stub libcuda: every cu* function that cudarc's driver bindings declare.
cd "$REPO"
CUDARC=$(cargo metadata --format-version 1 --features cuda |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
mkdir -p "$CU/lib/stubs"
grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$(dirname "$CUDARC")/src/driver/sys/mod.rs" |
  sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/int \1(void) { return 999; }/' | sort -u >"$CU/lib/stubs/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/libcuda_stub.c"
echo "stub libcuda: $(wc -l <"$CU/lib/stubs/libcuda_stub.c") symbols"
"$CU/bin/nvcc" --version | tail -2
echo "export CUDA_HOME=$CU PATH=$CU/bin:\$PATH CUDA_COMPUTE_CAP=90"
