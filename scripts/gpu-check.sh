#!/usr/bin/env bash
# The CUDA check, run on a GPU machine with the CUDA 13 libraries and a driver: the worker's
# model code on the GPU against the CPU (tiny generated model: logits of prefill, decode and a
# batch; the real SmolLM2 model: greedy text, decode speed, 1/4/16 concurrent streams; the
# embedding model: vectors against the CPU's, speed).
#
# Built elsewhere by scripts/build-cuda.sh; the test binary travels xz-compressed as
# .gpu/tiny_gguf.xz. The chat model travels beside it as .gpu/model.gguf, or in parts
# .gpu/model.part* that are joined here; the embedding model as the directory .gpu/minilm (its
# weights may be an f16 copy, so that it fits in one call: both devices then load the same
# rounded weights).
set -uo pipefail
cd "$(dirname "$0")/.."
G=${GPU_DIR:-.gpu}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The CUDA libraries candle was linked against, wherever this machine keeps them.
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
    found=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt -name "$lib" 2>/dev/null | head -1)
    [ -n "$found" ] || { echo "missing $lib"; exit 1; }
    LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
model=${COMPUTE_MODEL:-/tmp/compute-model.gguf}
if [ ! -s "$model" ]; then
    # Parts may have come over several calls (each call carries at most 64 MiB): earlier ones
    # were copied to /tmp/compute-model.partN, the last is in $G. Join them in name order.
    if [ -f "$G/model.gguf" ]; then
        model="$G/model.gguf"
    else
        for p in $(ls "$G"/model.part* /tmp/compute-model.part* 2>/dev/null | awk -F/ '{print $NF" "$0}' | sort | cut -d" " -f2); do
            cat "$p"
        done >"$model"
    fi
fi
ls -l "$model"
export COMPUTE_MODEL=$model
want_bytes=${COMPUTE_MODEL_BYTES:-98362432} # SmolLM2-135M-Instruct.Q4_1.gguf
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$G/tiny_gguf.xz" /tmp/tiny_gguf
chmod +x /tmp/tiny_gguf
/tmp/tiny_gguf --test-threads 1 --nocapture cuda_forward_matches_cpu || exit 1
if [ -d "$G/minilm" ]; then
    COMPUTE_EMBEDDING_MODEL="$G/minilm" /tmp/tiny_gguf --test-threads 1 --nocapture \
        cuda_embeds_like_the_cpu || exit 1
else
    echo "no $G/minilm: embeddings check skipped"
fi
if [ "$(stat -c %s "$model")" != "$want_bytes" ]; then
    echo "model incomplete ($(stat -c %s "$model") of $want_bytes bytes): real-model check skipped"
    exit 2
fi
/tmp/tiny_gguf --test-threads 1 --nocapture cuda_serves_the_real_model
