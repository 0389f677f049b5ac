"""`tapefit serve` as a child process, on a port the system picks as uvicorn binds it.

Choosing a free port first and passing it on leaves a window in which another process can
take it; `--port 0` has none, and uvicorn's log line says which port it got.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

TAPEFIT = str(Path(sys.executable).parent / "tapefit")
ANNOUNCED = re.compile(r"Uvicorn running on (http://\S+)")


class ServerExited(RuntimeError):
    """The server stopped before it announced its address."""


def start_serve(
    *args: str, env: Mapping[str, str], log_path: Path, timeout: float = 60.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `tapefit serve --port 0 ARGS`, logging to `log_path`; the process and its URL."""
    with log_path.open("w") as log:
        # The child keeps its own copy of the descriptor; ours can close at once.
        process = subprocess.Popen([TAPEFIT, "serve", "--port", "0", *args], env=dict(env),
                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ANNOUNCED.search(log_path.read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            raise ServerExited(f"tapefit serve exited with {process.returncode}:\n"
                               + log_path.read_text())
        time.sleep(0.02)
    process.kill()
    raise TimeoutError(f"tapefit serve did not start within {timeout} s:\n"
                       + log_path.read_text())


def wait_for_workers(client: httpx.Client, workers: int, timeout: float = 120.0) -> None:
    """Until `workers` workers are alive (TensorFlow and the data loaded, `/readyz` counts
    them), so that what is measured next is the jobs, not the workers' start."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").json().get("workers_alive", 0) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers did not start within {timeout} s")
        time.sleep(0.2)
