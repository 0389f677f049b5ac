"""Service figures through the real server: how soon a submitted job shows its first loss
row, and how fast the API answers while a job trains on the same machine."""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.server import start_serve

WARM_UP = {"epochs": 1, "dataset": {"train_limit": 1000, "test_limit": 100}}


@dataclass
class ServiceFigures:
    first_row_cold_s: float  # a fresh worker's first job: it loads TensorFlow's graphs
    first_row_warm_s: float  # an idle worker that has run a job before
    status_p50_ms: float  # GET /jobs/{id} while the default job trains
    status_p99_ms: float
    status_requests: int
    trained_job: int  # the warm-up job: a trained model the serving figures can use


@contextmanager
def running_server(mnist_path: Path, data_dir: Path) -> Iterator[httpx.Client]:
    """`tapefit serve --workers 1`, stopped with SIGINT afterwards."""
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(data_dir.resolve()),
           "TAPEFIT_MNIST_PATH": str(mnist_path.resolve())}
    env.pop("TAPEFIT_DATABASE_URL", None)
    data_dir.mkdir(parents=True, exist_ok=True)
    process, url = start_serve("--workers", "1", env=env, log_path=data_dir / "bench-serve.log")
    client = httpx.Client(base_url=url, timeout=30)
    try:
        yield client  # uvicorn announces its address once the app has started
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def _first_row_seconds(client: httpx.Client, spec: dict) -> tuple[int, float]:
    started = time.perf_counter()
    job_id = client.post("/jobs", json=spec).json()["id"]
    polls = 0
    while not client.get(f"/jobs/{job_id}/metrics", params={"limit": 1}).json()["items"]:
        polls += 1
        if polls % 50 == 0:  # now and then, not to blur the figure: did the job fail?
            job = client.get(f"/jobs/{job_id}").json()
            if job["state"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} {job['state']}: {job['error']}")
        time.sleep(0.005)
    return job_id, time.perf_counter() - started


def _wait_final(client: httpx.Client, job_id: int) -> None:
    while client.get(f"/jobs/{job_id}").json()["state"] not in ("succeeded", "failed",
                                                                 "cancelled"):
        time.sleep(0.1)


def bench_service(mnist_path: Path, data_dir: Path, *, requests: int = 500) -> ServiceFigures:
    """The figures, with `data_dir` as the server's (it keeps the warm-up job's model)."""
    with running_server(mnist_path, data_dir) as api:
        time.sleep(1.0)  # let the worker start and go idle
        warm_up, cold = _first_row_seconds(api, WARM_UP)
        _wait_final(api, warm_up)
        time.sleep(0.5)
        job_id, warm = _first_row_seconds(api, {})  # the book's default job
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            assert api.get(f"/jobs/{job_id}").status_code == 200
            latencies.append((time.perf_counter() - started) * 1000)
        still_training = api.get(f"/jobs/{job_id}").json()["state"] == "running"
        api.post(f"/jobs/{job_id}/cancel")
        _wait_final(api, job_id)
    if not still_training:
        print("note: the job finished before the latency sample ended", file=sys.stderr)
    quantiles = statistics.quantiles(latencies, n=100)
    return ServiceFigures(
        first_row_cold_s=cold,
        first_row_warm_s=warm,
        status_p50_ms=statistics.median(latencies),
        status_p99_ms=quantiles[98],
        status_requests=requests,
        trained_job=warm_up,
    )
