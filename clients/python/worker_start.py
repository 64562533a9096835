"""Start a `compute-worker` for a test and wait until it serves.

A port from `free_port()` may be taken by another socket before the worker binds it: the worker
then exits, and a probe of the bare port would find the other socket. So a worker counts as up
only when its own `/health` names the expected provider, and one that exited is started again
on another port.
"""

import json
import socket
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int, provider: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.load(r).get("provider") == provider
    except (OSError, ValueError):
        return False


def start_worker(spawn, config, rpc: int, data_dir, body: str, provider: str,
                 attempts: int = 3, timeout: float = 180.0) -> int:
    """Write the config of a worker run by //Bob (`provider` is its address) to `config`: the
    node at `rpc`, the store in `data_dir`, a free port, then `body` (its models and services).
    Then `spawn()` it (`spawn` returns the `subprocess.Popen`). Returns the worker's port."""
    for _ in range(attempts):
        port = free_port()
        config.write_text(
            f'node_url = "ws://127.0.0.1:{rpc}"\nlisten = "127.0.0.1:{port}"\n'
            f'provider_key = "//Bob"\n[store]\ndata_dir = "{data_dir}"\n{body}'
            f'[settlement]\nmax_age_secs = 1\ntick_ms = 500\n')
        worker = spawn()
        deadline = time.monotonic() + timeout
        while worker.poll() is None and time.monotonic() < deadline:
            if healthy(port, provider):
                return port
            time.sleep(0.5)
        if worker.poll() is None:
            raise AssertionError(f"the worker on port {port} did not answer /health in time")
    raise AssertionError(f"the worker exited {attempts} times on start")
