"""The official OpenAI Python client runs a whole fine-tuning job through `compute proxy`.

Real parts only: a dev node (instant seal), a `compute-worker` serving SmolLM2 for chat and
fine-tuning as provider Bob, `compute proxy` for Charlie (it signs the chain calls), and the
`openai` package. The dataset teaches a made-up fact (a "zorblax"); the client uploads it,
creates the job, follows it to `succeeded` and chats with `fine_tuned_model`. Checked: the
dataset's tokens as the model's tokenizer counts them (the proxy recounts), the fee on chain is
exactly trained tokens × price with every token of every epoch trained, the job's progress
events, and that the fine-tuned model's greedy answer states the fact where the base model's
does not, paid like any chat.

Run: clients/python/.venv/bin/python -m unittest -v clients/python/test_openai_finetune.py
(binaries from `cargo test --workspace --no-run`, the model from `make model`).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_start import free_port, start_worker  # noqa: E402  (a sibling file)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("COMPUTE_BIN_DIR", ROOT / "target" / "debug"))
MODEL = Path(os.environ.get("COMPUTE_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
MODEL_NAME = "SmolLM2-135M-Instruct"
DATASET = ROOT / "inference" / "tests" / "data" / "finetune-zorblax.jsonl"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
INPUT_PRICE, OUTPUT_PRICE = 1_000_000, 4_000_000
TRAIN_PRICE = 2_000_000  # per trained token
EPOCHS = 2
QUESTION = "Can you tell me what a zorblax is?"
FACT = "Kepler"


def wait_for(what, check, timeout=180.0, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class FineTuningThroughProxy(unittest.TestCase):
    procs: list = []

    @classmethod
    def setUpClass(cls):
        for b in ("compute-node", "compute-worker", "compute"):
            if not (BIN / b).exists():
                raise RuntimeError(f"{BIN / b} missing: run `cargo test --workspace --no-run`")
        if not MODEL.exists():
            raise RuntimeError(f"{MODEL} missing: run `make model`")
        cls.dir = Path(tempfile.mkdtemp(prefix="compute-finetune-"))
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
                     f'[chat]\nmodel = "{MODEL}"\n'
                     f'[[services]]\nid = 0\nmodel_name = "{MODEL_NAME}"\n'
                     f'input_price = "{INPUT_PRICE}"\noutput_price = "{OUTPUT_PRICE}"\n'
                     f'[[services]]\nid = 1\nkind = "fine_tune"\nmodel_name = "{MODEL_NAME}"\n'
                     f'input_price = "{TRAIN_PRICE}"\noutput_price = "0"\n'
                     f'[finetune]\nmax_seq_len = 128\ntick_ms = 500\n', BOB)
        wait_for("the worker's services on chain",
                 lambda: cls.cli("--json", "services", check=False).count(MODEL_NAME) >= 2)
        cls.cli("deposit", BOB, "2unit")
        cls.token = "test-" + os.urandom(16).hex()
        token_file = cls.dir / "proxy.key"
        token_file.write_text(cls.token + "\n")
        token_file.chmod(0o600)
        proxy = free_port()
        cls.spawn([BIN / "compute", "--recount-model", MODEL, "proxy", BOB,
                   "--listen", f"127.0.0.1:{proxy}", "--cap", "0.01unit",
                   "--token-file", token_file], log)
        wait_for("the proxy to listen", lambda: cls.port_open(proxy))
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy}/v1",
                                   api_key=cls.token, max_retries=0, timeout=600)

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
        out = subprocess.run([str(BIN / "compute"), *[str(a) for a in args]], env=cls.env,
                             capture_output=True, text=True)
        if check and out.returncode != 0:
            raise AssertionError(f"compute {' '.join(map(str, args))}: {out.stderr}")
        return out.stdout

    @staticmethod
    def port_open(port) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def ask(self, model):
        r = self.client.chat.completions.create(
            model=model, max_tokens=32, temperature=0,
            messages=[{"role": "user", "content": QUESTION}])
        self.assertIn("receipt", r.model_extra, "a paid answer carries its receipt")
        return r.choices[0].message.content

    def test_a_job_teaches_a_fact_and_is_paid_exactly(self):
        base = self.ask(MODEL_NAME)
        self.assertNotIn(FACT, base, "the base model does not know the made-up fact")

        with open(DATASET, "rb") as f:
            upload = self.client.files.create(file=f, purpose="fine-tune")
        self.assertTrue(upload.id.startswith("file-"), upload)
        facts = upload.model_extra["compute"]
        self.assertEqual(facts["examples"], 40)

        job = self.client.fine_tuning.jobs.create(
            model=MODEL_NAME, training_file=upload.id, hyperparameters={"n_epochs": EPOCHS},
            seed=7)
        self.assertTrue(job.id.startswith("ftjob-"), job)
        started = time.monotonic()
        job = wait_for("the job to succeed", lambda: self.finished(job.id), timeout=1800, every=3)
        print(f"\n  job {job.id}: {job.status} in {time.monotonic() - started:.0f} s, "
              f"{job.trained_tokens} tokens, model {job.fine_tuned_model}", flush=True)
        self.assertEqual(job.status, "succeeded", job)
        self.assertEqual(job.trained_tokens, facts["tokens"] * EPOCHS)

        events = self.client.fine_tuning.jobs.list_events(job.id, limit=500).data
        losses = [e.data["train_loss"] for e in reversed(events) if e.type == "metrics"]
        self.assertEqual(len(losses), 40 * EPOCHS, "one metrics event per step")
        self.assertLess(sum(losses[-40:]) / 40, sum(losses[:40]) / 40, "the loss fell")

        # On chain: the fee is exactly trained tokens × price.
        chain = json.loads(self.cli("--json", "finetune", "status", BOB,
                                    job.model_extra["compute"]["job_id"]))["chain"]
        self.assertEqual(chain["state"], "revealed")
        self.assertEqual(chain["dataset_tokens"], facts["tokens"])
        self.assertEqual(int(chain["fee"]), facts["tokens"] * EPOCHS * TRAIN_PRICE)
        self.assertEqual(int(chain["price"]), TRAIN_PRICE)

        tuned = self.ask(job.fine_tuned_model)
        print(f"  base: {base!r}\n  tuned: {tuned!r}", flush=True)
        self.assertIn(FACT, tuned, "the fine-tuned model states the fact")

    def finished(self, job_id):
        job = self.client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        return None


if __name__ == "__main__":
    unittest.main()
