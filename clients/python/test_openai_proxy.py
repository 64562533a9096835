"""The official OpenAI Python client pays for inference through `compute proxy`.

Real parts only: a dev node (instant seal), a `compute-worker` serving SmolLM2 (chat) and
all-MiniLM-L6-v2 (embeddings) as provider Bob, `compute proxy` signing vouchers for Charlie, and
the `openai` package talking to the proxy as it would to api.openai.com. After a plain and a
streamed chat and two embeddings requests, the chain must show exactly the fees of the receipts
the client received as settled (read through the node's `compute_escrow` RPC). The vectors are
checked against an independent numpy implementation of the model (minilm_reference.py).

Run: clients/python/.venv/bin/python -m unittest -v clients/python/test_openai_proxy.py
(binaries from `cargo test --workspace --no-run`, the model from `make model`).
"""

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_reference import MiniLM  # noqa: E402  (a sibling file, found through the line above)
from worker_start import free_port, start_worker  # noqa: E402  (the same)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("COMPUTE_BIN_DIR", ROOT / "target" / "debug"))
MODEL = Path(os.environ.get("COMPUTE_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
MODEL_NAME = "SmolLM2-135M-Instruct"
EMBED_DIR = Path(os.environ.get("COMPUTE_EMBEDDING_MODEL", ROOT / "models" / "all-MiniLM-L6-v2"))
EMBED_NAME = "all-MiniLM-L6-v2"
EMBED_PRICE = 500_000
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
CHARLIE = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"
INPUT_PRICE, OUTPUT_PRICE = 1_000_000, 4_000_000
DEPOSIT = 500_000_000_000  # 0.5 unit


def wait_for(what, check, timeout=180.0, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class OpenAIThroughProxy(unittest.TestCase):
    procs: list = []
    fees: list = []

    @classmethod
    def setUpClass(cls):
        for b in ("compute-node", "compute-worker", "compute"):
            if not (BIN / b).exists():
                raise RuntimeError(f"{BIN / b} missing: run `cargo test --workspace --no-run`")
        if not MODEL.exists() or not (EMBED_DIR / "model.safetensors").exists():
            raise RuntimeError(f"{MODEL} or {EMBED_DIR} missing: run `make model`")
        cls.dir = Path(tempfile.mkdtemp(prefix="compute-openai-"))
        cls.rpc = free_port()
        cls.env = dict(os.environ, COMPUTE_NODE=f"ws://127.0.0.1:{cls.rpc}",
                       COMPUTE_KEY="//Charlie", COMPUTE_STATE=str(cls.dir / "state.json"))
        cls.log = log = open(cls.dir / "processes.log", "wb")
        cls.spawn([BIN / "compute-node", "--dev", "--sealing", "instant", "--base-path",
                   cls.dir / "chain", "--rpc-port", cls.rpc, "--port", free_port(),
                   "--no-prometheus", "--no-telemetry", "--no-mdns"], log)
        start_worker(lambda: cls.spawn([BIN / "compute-worker", "--config",
                                        cls.dir / "worker.toml"], log),
                     cls.dir / "worker.toml", cls.rpc, cls.dir / "worker",
                     f'[chat]\nmodel = "{MODEL}"\n[embeddings]\nmodel = "{EMBED_DIR}"\n'
                     f'[[services]]\nid = 0\nmodel_name = "{MODEL_NAME}"\n'
                     f'input_price = "{INPUT_PRICE}"\noutput_price = "{OUTPUT_PRICE}"\n'
                     f'[[services]]\nid = 1\nkind = "embedding"\nmodel_name = "{EMBED_NAME}"\n'
                     f'input_price = "{EMBED_PRICE}"\noutput_price = "0"\n', BOB)
        wait_for("the worker's service on chain",
                 lambda: EMBED_NAME in cls.cli("--json", "services", check=False))
        cls.cli("deposit", BOB, str(DEPOSIT))
        # The proxy's API key: ours, in a file only we can read (without --token-file the proxy
        # would write a fresh one to proxy-token beside the state file).
        cls.token = "test-" + os.urandom(16).hex()
        token_file = cls.dir / "proxy.key"
        token_file.write_text(cls.token + "\n")
        token_file.chmod(0o600)
        proxy = free_port()
        cls.spawn([BIN / "compute", "proxy", BOB, "--listen", f"127.0.0.1:{proxy}",
                   "--cap", "0.01unit", "--token-file", token_file], log)
        wait_for("the proxy to listen", lambda: cls.port_open(proxy))
        cls.base = f"http://127.0.0.1:{proxy}/v1"
        cls.client = openai.OpenAI(base_url=cls.base, api_key=cls.token, max_retries=0)

    @classmethod
    def tearDownClass(cls):
        for p in reversed(cls.procs):
            p.kill()
            p.wait()
        cls.log.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def spawn(cls, args, log):
        proc = subprocess.Popen([str(a) for a in args], env=cls.env,
                                stdout=log, stderr=subprocess.STDOUT)
        cls.procs.append(proc)
        return proc

    @classmethod
    def cli(cls, *args, check=True) -> str:
        out = subprocess.run([str(BIN / "compute"), *args], env=cls.env,
                             capture_output=True, text=True)
        if check and out.returncode != 0:
            raise AssertionError(f"compute {' '.join(args)}: {out.stderr}")
        return out.stdout

    @staticmethod
    def port_open(port) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def node_rpc(self, method, params):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.rpc}",
            data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = json.load(r)
        self.assertNotIn("error", answer)
        return answer["result"]

    def check_receipt(self, receipt, usage, prices=(INPUT_PRICE, OUTPUT_PRICE)):
        """The receipt the provider signed matches the usage reported and the prices on chain."""
        self.assertEqual(receipt["user"], CHARLIE)
        self.assertEqual(receipt["provider"], BOB)
        self.assertEqual(receipt["input_tokens"], usage["prompt_tokens"])
        self.assertEqual(receipt["output_tokens"], usage.get("completion_tokens", 0))
        fee = int(receipt["fee"])
        self.assertEqual(fee, usage["prompt_tokens"] * prices[0]
                         + usage.get("completion_tokens", 0) * prices[1])
        self.assertEqual(int(receipt["total"]), sum(self.fees) + fee)
        self.fees.append(fee)
        # A chat response carries its activation proof: version 1, one entry per billed token,
        # and the hash the signed receipt commits to.
        if receipt["output_tokens"]:
            proof = bytes.fromhex(receipt["proof"][2:])
            self.assertEqual(receipt["proof_hash"],
                             "0x" + hashlib.blake2b(proof, digest_size=32).hexdigest())
            self.assertEqual(proof[0], 1)
            self.assertEqual(int.from_bytes(proof[1:5], "little"), receipt["output_tokens"])

    def test_1_models(self):
        ids = [m.id for m in self.client.models.list()]
        self.assertEqual(ids, [MODEL_NAME, EMBED_NAME])

    def test_1b_only_with_the_key(self):
        stranger = openai.OpenAI(base_url=self.base, api_key="not-the-key", max_retries=0)
        with self.assertRaises(openai.AuthenticationError) as e:
            stranger.models.list()
        self.assertEqual(e.exception.code, "invalid_api_key")
        # A web page posting a "simple" cross-site request is refused before anything is paid.
        req = urllib.request.Request(
            f"{self.base}/chat/completions", data=b'{"model":"x","messages":[]}',
            headers={"content-type": "text/plain", "origin": "https://evil.example",
                     "authorization": f"Bearer {self.token}"})
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        self.assertEqual(e.exception.code, 403)
        self.assertEqual(json.load(e.exception)["error"]["code"], "origin_not_allowed")

    def test_2_chat(self):
        r = self.client.chat.completions.create(
            model=MODEL_NAME, max_tokens=12, temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        text = r.choices[0].message.content
        self.assertTrue(text.strip(), r)
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertLessEqual(r.usage.completion_tokens, 12)
        self.check_receipt(r.model_extra["receipt"], r.usage.model_dump())

    def test_3_stream(self):
        pieces, receipt, usage = [], None, None
        stream = self.client.chat.completions.create(
            model=MODEL_NAME, max_tokens=16, stream=True,
            messages=[{"role": "user", "content": "Count from one to five."}])
        chunks = 0
        for chunk in stream:
            chunks += 1
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage.model_dump()
            if (chunk.model_extra or {}).get("receipt"):
                receipt = chunk.model_extra["receipt"]
        self.assertGreater(chunks, 3, "streamed in several chunks")
        self.assertTrue("".join(pieces).strip())
        self.assertIsNotNone(receipt, "the final chunk carries the receipt")
        self.check_receipt(receipt, usage)

    def test_3b_embeddings(self):
        texts = ["The quick brown fox jumps over the lazy dog.", "A man is eating food.",
                 "Stocks fell sharply after the central bank raised rates."]
        reference = MiniLM(EMBED_DIR)
        # Left unset, the client asks for base64 and decodes it; then plain JSON numbers.
        for fmt, extra in (("base64", {}), ("float", {"encoding_format": "float"})):
            r = self.client.embeddings.create(model=EMBED_NAME, input=texts, **extra)
            vectors = [d.embedding for d in sorted(r.data, key=lambda d: d.index)]
            self.assertEqual([len(v) for v in vectors], [384] * 3)
            for text, got in zip(texts, vectors):
                want = reference.embed(text)
                worst = max(abs(a - b) for a, b in zip(got, want))
                self.assertLess(worst, 1e-4, f"{fmt}: {text!r} differs from the reference by {worst}")
            tokens = sum(len(reference.ids(t)) for t in texts)
            self.assertEqual(r.usage.prompt_tokens, tokens)
            receipt = r.model_extra["receipt"]
            self.check_receipt(receipt, {"prompt_tokens": tokens}, prices=(EMBED_PRICE, 0))
            # The receipt covers exactly these vectors: their little-endian f32 bytes, in order.
            raw = b"".join(struct.pack(f"<{len(v)}f", *v) for v in vectors)
            self.assertEqual(receipt["response_hash"],
                             "0x" + hashlib.blake2b(raw, digest_size=32).hexdigest())
        # An input longer than the model takes is refused, with a fee-0 receipt for the nonce.
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.embeddings.create(model=EMBED_NAME, input="word " * 300)
        self.assertEqual(e.exception.code, "context_length_exceeded")
        self.assertEqual(int(e.exception.body["receipt"]["fee"]), 0)

    def test_4_bad_input(self):
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        self.assertIn("serves no model", str(e.exception))
        req = urllib.request.Request(f"{self.base}/chat/completions", data=b"{not json",
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {self.token}"})
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        self.assertEqual(e.exception.code, 400)
        self.assertEqual(json.load(e.exception)["error"]["code"], "invalid_json")
        # The worker refuses an empty conversation: the error passes through, nothing is charged.
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model=MODEL_NAME, messages=[])
        self.assertEqual(e.exception.code, "invalid_messages")

    def test_5_settled_on_chain(self):
        self.assertEqual(len(self.fees), 4, "the chats and embeddings ran first")
        total = sum(self.fees)

        def settled():
            e = self.node_rpc("compute_escrow", [CHARLIE, BOB, None])
            return e if e and int(e["settledTotal"]) == total else None

        e = wait_for("the worker's settlement", settled, timeout=60)
        self.assertEqual(int(e["balance"]), DEPOSIT - total)
        # The proxy kept the sequence in the user's state file.
        state = json.loads((self.dir / "state.json").read_text())
        entry = state["providers"][f"{CHARLIE}/{BOB}"]
        self.assertEqual(int(entry["total"]), total)
        self.assertEqual(entry["nonce"], 6,
                         "four paid requests and two refused with fee-0 receipts")
        self.assertGreaterEqual(e["settledNonce"], 4)


if __name__ == "__main__":
    unittest.main(verbosity=2)
