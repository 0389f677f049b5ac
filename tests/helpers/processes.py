"""Real `tapefit` processes for end-to-end tests: the executable, a server on a port of its
own, and waiting on a condition without timing assertions."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.server import TAPEFIT, start_serve
from tests.helpers.settings import SAMPLE

__all__ = ["TAPEFIT", "run_server", "wait_until"]


def wait_until(predicate, timeout: float, what: str):  # noqa: ANN001, ANN201
    """The predicate's first truthy value, polled every 0.2 s; AssertionError past `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def run_server(
    tmp_path: Path, *, workers: int, env: dict[str, str] | None = None
) -> Iterator[httpx.Client]:
    """`tapefit serve` on a port of its own with `workers` workers (and settings `env`),
    stopped with Ctrl-C after."""
    env = {
        **os.environ,
        "TAPEFIT_DATA_DIR": str(tmp_path / "data"),
        "TAPEFIT_MNIST_PATH": str(SAMPLE),
        "TAPEFIT_DATABASE_URL": "",
        **(env or {}),
    }
    env.pop("TAPEFIT_DATABASE_URL")
    process, url = start_serve("--workers", str(workers), env=env,
                               log_path=tmp_path / "serve.log")
    client = httpx.Client(base_url=url, timeout=10)

    def healthy() -> bool:
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            return False

    try:
        wait_until(healthy, 30, "the API to answer")
        yield client
    finally:
        client.close()
        # Ctrl-C: the API stops and takes its workers with it.
        process.send_signal(signal.SIGINT)
        exit_code = process.wait(timeout=40)
    assert exit_code == 0, (tmp_path / "serve.log").read_text()
    assert "worker" in (tmp_path / "serve.log").read_text()
