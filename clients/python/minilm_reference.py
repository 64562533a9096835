"""An independent reference for the worker's embeddings: BERT (sentence-transformers layout)
written out in numpy from the model card's definition, read straight from model.safetensors,
tokenized by the `tokenizers` package. Mean pooling over the tokens, then unit length.

Used by test_openai_proxy.py to check the vectors the worker serves; also runnable alone:
  clients/python/.venv/bin/python clients/python/minilm_reference.py "some text" ...
"""

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / "models" / "all-MiniLM-L6-v2"


def read_safetensors(path: Path) -> dict:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue  # metadata, and integer buffers such as position_ids
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(raw[base + start:base + end], dtype="<f4").reshape(info["shape"])
    return tensors


_erf = np.vectorize(math.erf)


class MiniLM:
    def __init__(self, directory: Path = DEFAULT_DIR):
        self.config = json.loads((directory / "config.json").read_text())
        self.w = {k.removeprefix("bert."): v.astype(np.float64)
                  for k, v in read_safetensors(directory / "model.safetensors").items()}
        self.tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()

    def ids(self, text: str) -> list:
        return self.tok.encode(text).ids

    def _ln(self, x, prefix):
        eps = self.config["layer_norm_eps"]
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    def _dense(self, x, prefix):
        return x @ self.w[prefix + ".weight"].T + self.w[prefix + ".bias"]

    def embed(self, text: str) -> np.ndarray:
        ids = self.ids(text)
        n = len(ids)
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        heads = self.config["num_attention_heads"]
        d = x.shape[1] // heads
        for layer in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{layer}"
            q, k, v = (self._dense(x, f"{p}.attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(1, 0, 2).reshape(n, heads * d)
            x = self._ln(x + self._dense(ctx, f"{p}.attention.output.dense"),
                         f"{p}.attention.output.LayerNorm")
            h = self._dense(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
            x = self._ln(x + self._dense(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        pooled = x.mean(0)
        return pooled / np.linalg.norm(pooled)


if __name__ == "__main__":
    model = MiniLM()
    for text in sys.argv[1:] or ["Hello, World!"]:
        v = model.embed(text)
        print(json.dumps({"text": text, "ids": model.ids(text),
                          "first": [round(float(x), 6) for x in v[:8]]}))
