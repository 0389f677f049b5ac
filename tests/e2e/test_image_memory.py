"""End to end: image uploads cannot exhaust the API's memory, however many arrive at once.

A 137 KB PNG (4096x4096 RGBA at 16 bits, deflated) used to cost the API about 600 MB while
it decoded, and eight at once several GB. The real `tapefit serve` is measured by its peak
resident memory (VmHWM in /proc/<pid>/status) around bursts of such uploads.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from benchmarks.server import start_serve
from tests.helpers.cluster import Cluster
from tests.helpers.images import rgba_png
from tests.helpers.settings import SAMPLE, TINY_SPEC

BURST = 8
MAX_RISE = 500 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[httpx.Client, int]]:
    """`tapefit serve --workers 0` on a data dir holding one trained model; its client and pid.

    The model matters: an upload is read in full only for a model that can answer it.
    """
    cluster = Cluster(tmp_path)
    try:
        job_id = cluster.submit(TINY_SPEC)
        cluster.start_worker()
        assert cluster.wait_final(job_id).state == "succeeded"
    finally:
        cluster.close()
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(cluster.settings.data_dir),
           "TAPEFIT_MNIST_PATH": str(SAMPLE)}
    env.pop("TAPEFIT_DATABASE_URL", None)
    process, url = start_serve("--workers", "0", env=env, log_path=tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, process.pid
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=40)


def burst(client: httpx.Client, data: bytes) -> list[httpx.Response]:
    """`BURST` uploads of `data` sent together, each on its own connection."""
    ready = threading.Barrier(BURST)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=client.base_url, timeout=60) as own:
            ready.wait()
            return own.post("/jobs/best/predict", files={"file": ("d.png", data, "image/png")})

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(send, range(BURST)))


def test_bursts_of_huge_decodes_stay_within_bounds(api: tuple[httpx.Client, int]) -> None:
    client, pid = api
    # A first small upload loads the model: its memory is not the decodes'.
    first = client.post("/jobs/best/predict",
                        files={"file": ("d.png", rgba_png(256, bits=8, ink=True), "image/png")})
    assert first.status_code == 200, first.text
    before = peak_rss(pid)

    # 128 MiB decoded each, over the default limit: refused before decoding.
    for response in burst(client, rgba_png(4096, bits=16)):
        assert response.status_code == 413, response.text
        assert "TAPEFIT_MAX_DECODED_IMAGE_BYTES" in response.json()["detail"]

    # 64 MiB decoded each, the most allowed: read two at a time, the others wait their turn
    # or are told to retry.
    answers = burst(client, rgba_png(4096, bits=8, ink=True))
    for response in answers:
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert "TAPEFIT_MAX_CONCURRENT_DECODES" in response.json()["detail"]
    assert any(response.status_code == 200 for response in answers)

    rise = peak_rss(pid) - before
    assert rise < MAX_RISE, f"the API's peak memory rose by {rise / 2**20:.0f} MiB"
