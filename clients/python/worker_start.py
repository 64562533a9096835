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


def start_worker(spawn, write_config, provider: str, attempts: int = 3, timeout: float = 180.0):
    """`write_config(port)` writes the worker's config for `port`; `spawn()` starts the worker
    and returns its `subprocess.Popen`. Returns the port the worker serves on."""
    for _ in range(attempts):
        port = free_port()
        write_config(port)
        worker = spawn()
        deadline = time.monotonic() + timeout
        while worker.poll() is None and time.monotonic() < deadline:
            if healthy(port, provider):
                return port
            time.sleep(0.5)
        if worker.poll() is None:
            raise AssertionError(f"the worker on port {port} did not answer /health in time")
    raise AssertionError(f"the worker exited {attempts} times on start")
