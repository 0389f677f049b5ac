"""Serving figures for a data dir with a trained model: the API's start-up time and memory,
LiteRT's single-image latency in-process, and requests per second through the real server.

    python -m benchmarks.serving --data-dir tapefit-data [--model latest] [--seconds 5]

`bench_serving(...)` returns the figures, for a `tapefit bench` command to print. The server
is a real `tapefit serve --workers 0` process (uvicorn) on a port of its own; the load comes from
plain keep-alive sockets in this process, light enough that the server is the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.server import start_serve
from service.config import Settings
from service.db import Database
from service.serving import catalog as serving
from service.serving.store import ModelStore

START_TIMEOUT_S = 30.0
# Rounds of the load, each over every endpoint (seconds / ROUNDS per endpoint each).
ROUNDS = 8


@dataclass(frozen=True)
class ServingFigures:
    model: str
    job_id: int
    startup_s: float  # process start to the first 200 from /healthz
    rss_mb: float  # resident memory after loading the model and serving the load below
    peak_rss_mb: float
    latency_p50_us: float  # one image through ModelStore.predict, in-process
    latency_p99_us: float
    requests_per_s: dict[str, float]  # per endpoint, through the HTTP server (the median)
    # Each endpoint's requests per second over /healthz's, as the median of the rounds'
    # ratios: each round measures every endpoint back to back, so the load of other
    # processes on a shared machine cancels out better than in totals.
    vs_bare: dict[str, float]
    predict_vs_bare: float  # native predict by job id
    predict_by_alias_vs_bare: float  # native predict by `latest`


def bench_serving(
    *, data_dir: Path, model: str = "latest", seconds: float = 5.0, connections: int = 4,
    runs: int = 5_000,
) -> ServingFigures:
    """Measure the serving path for `model` (a job id, latest or best) in `data_dir` and its
    own SQLite database (whatever TAPEFIT_DATABASE_URL says: `tapefit bench` sets it for the
    queue's figures, on a database of their own)."""
    settings = Settings(data_dir=data_dir, database_url=None)
    database = Database(settings.sqlalchemy_url)
    store = ModelStore(settings.models_dir, capacity=1)
    try:
        catalog = serving.Catalog(database=database, store=store)
        job_id = catalog.resolve(model).job_id
        sha256 = catalog.cache(job_id)
    finally:
        database.dispose()
    image = _image()
    p50, p99 = _latency(store, sha256, image, runs)
    # The server reads the same environment: with TAPEFIT_API_TOKEN set, it wants the token.
    token = settings.api_token.get_secret_value() if settings.api_token else None
    requests = _requests(job_id, image, token)
    logs = tempfile.TemporaryDirectory(prefix="tapefit-bench-")  # not the user's data dir
    server, port, startup = _start_server(settings.data_dir, Path(logs.name) / "serve.log")
    try:
        rounds: list[dict[str, float]] = []
        for _ in range(ROUNDS):  # interleaved, so drift hits every endpoint alike
            rounds.append({name: _load(port, request, seconds / ROUNDS, connections)
                           for name, request in requests.items()})
        rates = {name: float(np.median([r[name] for r in rounds])) for name in requests}
        ratios = {name: round(float(np.median([r[name] / r["healthz"] for r in rounds])), 3)
                  for name in requests if name != "healthz"}
        rss, peak = _memory_mb(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        logs.cleanup()
    return ServingFigures(
        model=model, job_id=job_id, startup_s=round(startup, 3), rss_mb=rss, peak_rss_mb=peak,
        latency_p50_us=round(p50, 1), latency_p99_us=round(p99, 1),
        requests_per_s={k: round(v) for k, v in rates.items()},
        vs_bare=ratios, predict_vs_bare=ratios["predict"],
        predict_by_alias_vs_bare=ratios["predict_by_alias"],
    )


def _image() -> np.ndarray:
    # Digit-like: mostly background, a fifth of the pixels inked with full-precision floats.
    rng = np.random.default_rng(0)
    return (rng.random(784) * (rng.random(784) < 0.2)).astype(np.float32).reshape(1, 784)


def _latency(store: ModelStore, sha256: str, image: np.ndarray, runs: int) -> tuple[float, float]:
    for _ in range(200):  # load the model, warm the caches
        store.predict(sha256, image)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        store.predict(sha256, image)
        times[i] = time.perf_counter_ns() - start
    return float(np.percentile(times, 50)) / 1e3, float(np.percentile(times, 99)) / 1e3


def _requests(job_id: int, image: np.ndarray, token: str | None) -> dict[str, bytes]:
    pixels = image.ravel().tolist()
    row = {"instances": [pixels]}
    v2 = {"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": pixels}]}
    return {
        "healthz": _http("GET", "/healthz"),
        "predict": _http("POST", f"/jobs/{job_id}/predict", row, token),
        "predict_by_alias": _http("POST", "/jobs/latest/predict", row, token),
        "tfserving_predict": _http("POST", f"/v1/models/{job_id}:predict", row, token),
        "v2_infer": _http("POST", f"/v2/models/{job_id}/infer", v2, token),
    }


def _http(method: str, path: str, body: object = None, token: str | None = None) -> bytes:
    content = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(content)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    return head.encode() + b"\r\n" + content


def _start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int, float]:
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(data_dir)}
    env.pop("TAPEFIT_DATABASE_URL", None)
    started = time.perf_counter()
    server, url = start_serve("--workers", "0", env=env, log_path=log_path,
                              timeout=START_TIMEOUT_S)
    port = int(url.rsplit(":", 1)[1])
    while time.perf_counter() - started < START_TIMEOUT_S:
        try:
            if _once(port, _http("GET", "/healthz")) == 200:
                return server, port, time.perf_counter() - started
        except OSError:
            time.sleep(0.01)
    server.kill()
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT_S} s")


def _once(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return _read_response(sock.makefile("rb"))


def _read_response(reader) -> int:  # noqa: ANN001 (a socket file)
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    reader.read(length)
    return int(status_line.split()[1])


def _load(port: int, request: bytes, seconds: float, connections: int) -> float:
    """Requests per second over `connections` keep-alive connections, each one at a time."""
    counts = [0] * connections
    failures: list[str] = []
    deadline = time.perf_counter() + seconds

    def run(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = sock.makefile("rb")
            while True:  # at least one request each, however slow the start
                sock.sendall(request)
                status = _read_response(reader)
                if status != 200:
                    failures.append(f"HTTP {status}")
                    return
                counts[i] += 1
                if time.perf_counter() >= deadline:
                    return

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"the load failed: {failures[0]}")
    return sum(counts) / (time.perf_counter() - started)


def _memory_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="latest")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    figures = bench_serving(data_dir=args.data_dir, model=args.model, seconds=args.seconds,
                            connections=args.connections)
    print(json.dumps(asdict(figures), indent=2))


if __name__ == "__main__":
    main()
