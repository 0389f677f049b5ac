"""Small jobs, what searches are made of: a burst of one-epoch jobs on 2,000 images through
the real server and its workers. Each job's wall (`started_at` to `finished_at`), the burst's
wall (the first POST to the last job's end), and where a job's time goes, phase by phase, as
its worker logs it ("job N: phases ...").

    python -m benchmarks.small_jobs [--mnist PATH] [--jobs 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from benchmarks.server import start_serve, wait_for_workers

SPEC = {"epochs": 1, "dataset": {"train_limit": 2000}}
# The worker's line at a job's end: "job 7: phases data 0.010 s, build 0.020 s, ...".
PHASES = re.compile(r"job (\d+): phases (.*)")
PHASE = re.compile(r"(\w+) ([\d.]+) s")


@dataclass
class SmallJobFigures:
    jobs: int
    workers: int
    burst_s: float  # the first POST to the last job's end
    wall_p50_s: float  # one job, started_at to finished_at
    wall_p90_s: float
    phases_p50_s: dict[str, float]  # the median of each phase across the jobs

    def phases_text(self) -> str:
        return ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in
                         self.phases_p50_s.items()) + " ms"


def _seconds(started: str, finished: str) -> float:
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


def _phases(log_text: str, job_ids: set[int]) -> dict[str, float]:
    """Each phase's median across `job_ids`, from the workers' log lines (JSON format)."""
    seen: dict[str, list[float]] = {}
    for line in log_text.splitlines():
        try:
            message = json.loads(line).get("message", "")
        except (json.JSONDecodeError, AttributeError):
            continue
        found = PHASES.search(message)
        if found and int(found.group(1)) in job_ids:
            for name, seconds in PHASE.findall(found.group(2)):
                seen.setdefault(name, []).append(float(seconds))
    return {name: statistics.median(values) for name, values in seen.items()}


def bench_small_jobs(mnist_path: Path, data_dir: Path, *, jobs: int = 40,
                     workers: int = 2, timeout: float = 600) -> SmallJobFigures:
    """`jobs` one-epoch jobs on 2,000 images, submitted at once to `tapefit serve --workers
    N` once its workers are ready (TensorFlow loaded, no job run yet)."""
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(data_dir.resolve()),
           "TAPEFIT_MNIST_PATH": str(Path(mnist_path).resolve()),
           "TAPEFIT_LOG_FORMAT": "json"}
    env.pop("TAPEFIT_DATABASE_URL", None)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "bench-small-jobs.log"
    process, url = start_serve("--workers", str(workers), env=env, log_path=log_path)
    client = httpx.Client(base_url=url, timeout=30)
    try:
        wait_for_workers(client, workers)
        started = time.perf_counter()
        ids = [client.post("/jobs", json=SPEC).json()["id"] for _ in range(jobs)]
        deadline = time.monotonic() + timeout
        while True:
            listed = [client.get(f"/jobs/{job_id}").json() for job_id in ids]
            if all(job["state"] in ("succeeded", "failed", "cancelled") for job in listed):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {jobs} jobs did not end within {timeout} s")
            time.sleep(0.05)
        burst = time.perf_counter() - started
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    failed = [job for job in listed if job["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[0]}")
    walls = sorted(_seconds(job["started_at"], job["finished_at"]) for job in listed)
    return SmallJobFigures(
        jobs=jobs, workers=workers, burst_s=burst,
        wall_p50_s=statistics.median(walls),
        wall_p90_s=statistics.quantiles(walls, n=10)[8],
        phases_p50_s=_phases(log_path.read_text(), set(ids)),
    )


def rows(figures: SmallJobFigures, row) -> list[str]:  # noqa: ANN001 (the table's row maker)
    """The bench table's small-job rows."""
    where = f"{figures.jobs} one-epoch jobs on 2,000 images, {figures.workers} workers"
    return [
        row(f"small jobs ({where}): a job's wall, p50 (p90)",
            f"{figures.wall_p50_s:.2f} s ({figures.wall_p90_s:.2f} s)", "p50 ≤ 0.4 s",
            figures.wall_p50_s <= 0.4),
        row("small jobs: the burst, first POST to last end", f"{figures.burst_s:.1f} s",
            "≤ 12 s", figures.burst_s <= 12),
        row("small jobs: a job's phases, p50 each", figures.phases_text(), "", None),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.small_jobs", description=__doc__)
    parser.add_argument("--mnist", type=Path, default=os.environ.get("TAPEFIT_MNIST_PATH"))
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.mnist is None:
        print("set TAPEFIT_MNIST_PATH or pass --mnist", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        figures = bench_small_jobs(args.mnist, Path(folder), jobs=args.jobs,
                                   workers=args.workers)
    print(f"{figures.jobs} jobs through {figures.workers} workers: burst {figures.burst_s:.1f} s,"
          f" a job's wall p50 {figures.wall_p50_s:.2f} s, p90 {figures.wall_p90_s:.2f} s")
    print(f"phases, p50 each: {figures.phases_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
