#!/usr/bin/env bash
# Build the provider worker's examples and tests with the `cuda` feature on a machine without a
# GPU or a CUDA installation, for running on a GPU machine that has CUDA 13 (see
# docs/benchmarks.md, "CUDA"). nvcc and the CUDA headers come from NVIDIA's PyPI wheels; the
# libraries candle links against (driver, cuBLAS, cuRAND, NVRTC) are replaced at link time by
# empty stubs with the real sonames, generated from cudarc's bindings, so the binaries load the GPU
# machine's own libraries at run time. The compute capability is fixed by CUDA_COMPUTE_CAP
# (default 90, Hopper).
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=${CUDA_HOME:-$HOME/.cache/compute-marketplace/cuda13}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
    echo "==> fetching nvcc 13.0 and the CUDA headers from PyPI into $CUDA_HOME"
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*"
    for w in "$tmp"/*.whl; do unzip -q -o "$w" -d "$tmp/x"; done
    mkdir -p "$CUDA_HOME"
    cp -a "$tmp"/x/nvidia/cu13/. "$CUDA_HOME"/
    rm -rf "$tmp"
fi
stubs="$CUDA_HOME/stubs"
if [ ! -e "$stubs/libcuda.so" ]; then
    echo "==> generating link stubs from cudarc's bindings"
    mkdir -p "$stubs"
    cudarc=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* | head -1)
    for spec in driver:cuda:libcuda.so.1 cublas:cublas:libcublas.so.13 \
        cublaslt:cublasLt:libcublasLt.so.13 curand:curand:libcurand.so.10 \
        nvrtc:nvrtc:libnvrtc.so.13; do
        IFS=: read -r dir lib soname <<<"$spec"
        sed -n 's/^pub unsafe fn \([A-Za-z0-9_]*\)(.*/void \1(void) {}/p' \
            "$cudarc/src/$dir/sys/mod.rs" | sort -u >"$stubs/$lib.c"
        cc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/lib$lib.so" "$stubs/$lib.c"
    done
    ln -sf "$CUDA_HOME/lib/libcudart.so.13" "$stubs/libcudart.so"
fi
export PATH="$CUDA_HOME/bin:$PATH" CUDA_ROOT="$CUDA_HOME" CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "==> building compute-inference with --features cuda (sm_$CUDA_COMPUTE_CAP)"
cargo build -p compute-inference --features cuda --examples --tests "$@"
