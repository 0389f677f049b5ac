"""Event streams under load: `streams` clients read GET /jobs/{id}/events from step 0 on a
job training with the default model and batch, each for `seconds`, all opened at once; while
they run GET /jobs is timed, and the API process's memory is read from /proc.

    python -m benchmarks.streams --mnist PATH [--streams 200] [--seconds 12] [--batch-size 128]

The server is a real `tapefit serve --workers 1`. The streams are read by a child process
(plain sockets and asyncio, reading bytes and noting when the first event arrives), so their
reading does not slow the GET /jobs timing in this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from benchmarks.server import start_serve
from benchmarks.serving import _memory_mb

# The default job's model and batch, with epochs enough to outlast the measurement.
SPEC = {"epochs": 30}
BACKLOG_STEPS = 1_000  # history the streams find when they open: two pages each


@dataclass(frozen=True)
class StreamFigures:
    streams: int
    seconds: float
    refused: int  # answered 503 (TAPEFIT_MAX_STREAMS)
    failed: int  # anything else but a 200 that streamed until the end or `seconds`
    first_event_p50_s: float  # request sent -> its first event, over the streams let in
    first_event_max_s: float
    first_batch_max_s: float  # ... -> its first batch event (history)
    megabytes_received: float
    list_p50_ms: float  # GET /jobs while the streams run
    list_p99_ms: float
    list_max_ms: float
    list_requests: int
    api_rss_max_mb: float  # sampled every 0.1 s while the streams run
    api_peak_rss_mb: float  # VmHWM: the process's peak over its whole life


def bench_streams(
    mnist_path: Path, data_dir: Path, *, streams: int = 200, seconds: float = 12.0,
    batch_size: int | None = None,
) -> StreamFigures:
    """The figures, with a fresh server whose data dir is `data_dir`."""
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(data_dir.resolve()),
           "TAPEFIT_MNIST_PATH": str(mnist_path.resolve())}
    env.pop("TAPEFIT_DATABASE_URL", None)
    data_dir.mkdir(parents=True, exist_ok=True)
    server, url = start_serve("--workers", "1", env=env, log_path=data_dir / "streams-serve.log")
    token = env.get("TAPEFIT_API_TOKEN") or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=url, timeout=60, headers=headers) as api:
            spec = SPEC if batch_size is None else {**SPEC, "batch_size": batch_size}
            job_id = api.post("/jobs", json=spec).raise_for_status().json()["id"]
            _wait_for(api, job_id, BACKLOG_STEPS)
            rss = _RssSampler(server.pid)
            # Results go through a file: a pipe could fill up before this reads it.
            output = data_dir / "streams.json"
            readers = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.streams", "--read", url, str(job_id),
                 str(streams), str(seconds), str(output)], env=env,
            )
            latencies = _time_listing(api, until=readers)
            rss.stop()
            if readers.wait() != 0:
                raise RuntimeError(f"the stream readers failed ({readers.returncode})")
            still_running = api.get(f"/jobs/{job_id}").json()["state"] == "running"
            api.post(f"/jobs/{job_id}/cancel")
        if not still_running:
            print("note: the job ended before the streams did", file=sys.stderr)
        _, peak = _memory_mb(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    results = json.loads(output.read_text())
    let_in = [r for r in results if r["status"] == 200]
    first = [r["first_event_s"] for r in let_in if r["first_event_s"] is not None]
    batches = [r["first_batch_s"] for r in let_in if r["first_batch_s"] is not None]
    # Inclusive: with few samples (a starved server answers few) p99 stays within them.
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return StreamFigures(
        streams=streams,
        seconds=seconds,
        refused=sum(r["status"] == 503 for r in results),
        failed=sum(r["error"] is not None or r["status"] not in (200, 503)
                   or (r["status"] == 200 and r["first_event_s"] is None) for r in results),
        first_event_p50_s=round(statistics.median(first), 3) if first else float("nan"),
        first_event_max_s=round(max(first), 3) if first else float("nan"),
        first_batch_max_s=round(max(batches), 3) if batches else float("nan"),
        megabytes_received=round(sum(r["bytes"] for r in results) / 1e6, 1),
        list_p50_ms=round(statistics.median(latencies), 1),
        list_p99_ms=round(quantiles[98], 1),
        list_max_ms=round(max(latencies), 1),
        list_requests=len(latencies),
        api_rss_max_mb=round(rss.max_mb, 1),
        api_peak_rss_mb=round(peak, 1),
    )


def _wait_for(api: httpx.Client, job_id: int, steps: int) -> None:
    while True:
        job = api.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            raise RuntimeError(f"job {job_id} ended before the streams opened: {job['error']}")
        progress = job["progress"]
        if progress["total_steps"] and progress["step"] >= min(steps, progress["total_steps"] // 3):
            return
        time.sleep(0.05)


def _time_listing(api: httpx.Client, *, until: subprocess.Popen[bytes]) -> list[float]:
    """GET /jobs, one after another, until the readers exit; each one's milliseconds."""
    latencies = []
    while until.poll() is None:
        started = time.perf_counter()
        api.get("/jobs").raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)
    return latencies


class _RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.max_mb = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.max_mb = max(self.max_mb, _memory_mb(self.pid)[0])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# The child process: open every stream at once, read each for `seconds`.

async def _read_one(url: str, job_id: int, seconds: float, token: str | None) -> dict:
    parts = urlsplit(url)
    result: dict = {"status": None, "first_event_s": None, "first_batch_s": None, "bytes": 0,
                    "error": None}
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except OSError as exc:
        result["error"] = repr(exc)
        return result
    try:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        writer.write(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Accept: text/event-stream\r\n{auth}\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), seconds)
        result["status"] = int(status_line.split()[1])
        if result["status"] != 200:
            return result
        seen = b""
        while (left := started + seconds - time.perf_counter()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                break  # the server ended the stream (the job ended, or a refusal)
            result["bytes"] += len(chunk)
            if result["first_batch_s"] is None:
                seen = seen[-32:] + chunk  # a marker may straddle two reads
                now = time.perf_counter() - started
                if result["first_event_s"] is None and b"\nevent: " in seen:
                    result["first_event_s"] = now
                if b"\nevent: batch" in seen:
                    result["first_batch_s"] = now
    except (OSError, ValueError, IndexError, TimeoutError) as exc:
        result["error"] = repr(exc)
    finally:
        writer.close()
    return result


async def _read_all(url: str, job_id: int, streams: int, seconds: float) -> list[dict]:
    token = os.environ.get("TAPEFIT_API_TOKEN") or None
    return await asyncio.gather(*(_read_one(url, job_id, seconds, token) for _ in range(streams)))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--read"]:  # the child process
        url, job_id, streams, seconds, output = argv[1:6]
        results = asyncio.run(_read_all(url, int(job_id), int(streams), float(seconds)))
        Path(output).write_text(json.dumps(results))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=os.environ.get("TAPEFIT_MNIST_PATH"),
                        required="TAPEFIT_MNIST_PATH" not in os.environ)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tapefit-streams-") as folder:
        figures = bench_streams(args.mnist, Path(folder), streams=args.streams,
                                seconds=args.seconds, batch_size=args.batch_size)
    print(json.dumps(asdict(figures), indent=2))


if __name__ == "__main__":
    main()
