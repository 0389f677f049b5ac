"""`tapefit bench` (`python -m benchmarks`): measure everything in one run, print a table.

    tapefit bench [--mnist PATH] [--epochs 3] [--skip-serving] [--skip-queue] ...
    tapefit bench queue --simulated-workers N --seconds S [--json]   (benchmarks/queue.py)
    tapefit bench tenancy [--queued N] [--owners N]   (fair claims and keys: benchmarks/tenancy.py)

Ratios are measured in one process run against each other, so they hold on a noisy machine
better than the absolute seconds do.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads


def _row(what: str, figure: str, target: str, met: bool | None) -> str:
    verdict = "" if met is None else ("yes" if met else "**no**")
    return f"| {what} | {figure} | {target} | {verdict} |"


def _queue_rows() -> list[str]:
    """The queue under 100 simulated workers, on a scratch database of the configured kind
    (TAPEFIT_DATABASE_URL: PostgreSQL is what the aim is for). Each is paced at 250 steps/s,
    a little above the aim's 200: the aim's 20,000 rows/s counts the claims, starts and ends
    of jobs and the run's wind-down, which a pace of exactly 200 would leave no room for."""
    from benchmarks.queue import bench_queue

    queue = bench_queue(workers=100, seconds=10, processes=2, step_seconds=0.004)
    where = f"{queue.database}, {queue.workers} simulated workers paced at 250 steps/s each"
    return [
        _row(f"queue ({where}): loss rows written per second", f"{queue.rows_per_second:,}",
             "≥ 20,000", queue.rows_per_second >= 20_000),
        _row("queue: a claim, p50 / p99", f"{queue.claim_p50_ms:.0f} / {queue.claim_p99_ms:.0f} ms",
             "p99 < 100 ms", queue.claim_p99_ms < 100),
        _row("queue: a heartbeat, p99 / a group of rows, p50", f"{queue.heartbeat_p99_ms:.0f} / "
             f"{queue.flush_p50_ms:.0f} ms", "", None),
        _row("queue: rows read back twice / lost", f"{queue.duplicates} / {queue.lost}", "0 / 0",
             queue.duplicates == queue.lost == 0),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["queue"]:  # the queue alone: no TensorFlow, no MNIST
        from benchmarks.queue import main as bench_queue_main

        return bench_queue_main(argv[1:])
    if argv[:1] == ["tenancy"]:  # fair claims and keys alone: no TensorFlow, no MNIST
        from benchmarks.tenancy import main as bench_tenancy_main

        return bench_tenancy_main(argv[1:])
    parser = argparse.ArgumentParser(prog="tapefit bench", description=__doc__)
    parser.add_argument("--mnist", type=Path, default=os.environ.get("TAPEFIT_MNIST_PATH"),
                        help="the full MNIST (.npz or IDX folder); default TAPEFIT_MNIST_PATH")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training figure")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved runs of each compared loop (the fastest counts)")
    parser.add_argument("--skip-serving", action="store_true", help="training figures only")
    parser.add_argument("--convnet-epochs", type=int, default=3,
                        help="epochs of the chapter-8 convnet figure, the first tracing (one "
                        "epoch measured alone was too noisy); 0 leaves it out (an epoch of the "
                        "full MNIST takes 10-20 s on two cores)")
    parser.add_argument("--skip-queue", action="store_true",
                        help="leave out the queue under 100 simulated workers (`tapefit bench "
                        "queue` runs it alone)")
    parser.add_argument("--skip-small-jobs", action="store_true",
                        help="leave out the burst of 40 small jobs through 2 workers (`python "
                        "-m benchmarks.small_jobs` runs it alone)")
    parser.add_argument("--skip-study", action="store_true",
                        help="leave out the 12-trial study with and without ASHA (`python -m "
                        "benchmarks.study` runs it alone; about two minutes on the full MNIST)")
    args = parser.parse_args(argv)
    if args.mnist is None:
        print("tapefit bench: set TAPEFIT_MNIST_PATH or pass --mnist", file=sys.stderr)
        return 2

    from benchmarks.service import bench_service
    from benchmarks.serving import bench_serving
    from benchmarks.streams import bench_streams
    from benchmarks.training import bench_convnet, bench_training
    from worker.data import DataError, load_mnist

    try:
        data = load_mnist(args.mnist)
    except DataError as exc:
        print(f"tapefit bench: {exc}", file=sys.stderr)
        return 2
    print(f"measuring on {len(data.x_train):,} training images, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()} ...", file=sys.stderr)
    training = bench_training(data, epochs=args.epochs, rounds=args.rounds)
    rows = [
        _row("service loop, s/epoch (writes every loss to SQLite)",
             f"{training.service_epoch_s:.2f}", "", None),
        _row("model.fit, s/epoch (same model, data, batch, evaluation)",
             f"{training.model_fit_epoch_s:.2f}", "", None),
        _row("service loop / model.fit", f"{training.fit_ratio:.2f}", "≤ 0.50",
             training.fit_ratio <= 0.5),
        _row("the same loop, no writes: under XLA / the plain graph",
             f"{training.xla_ratio:.2f} ({training.no_writes_epoch_s:.2f} s vs "
             f"{training.plain_graph_epoch_s:.2f} s)", "", None),
        _row("cost of the metric writes: time in them / training time",
             f"{training.writing_share:.1%}", "≤ 3%", training.writing_share <= 0.03),
        _row("the same, A/B: with writes / without − 1", f"{training.write_overhead:+.1%}",
             "", None),
        _row("naive + manual_sgd: compiled / eager step",
             f"{training.eager_ratio:.2f} ({training.naive_compiled_epoch_s:.2f} s vs "
             f"{training.naive_eager_epoch_s:.2f} s)", "", None),
    ]
    if args.convnet_epochs:
        convnet = bench_convnet(data, epochs=args.convnet_epochs)
        rows += [
            _row("chapter-8 convnet, batch 64: service loop, s/epoch (every loss written)",
                 f"{convnet.service_epoch_s:.2f}", "", None),
            _row("the same convnet: model.fit, s/epoch", f"{convnet.model_fit_epoch_s:.2f}",
                 "", None),
            _row("convnet: service loop / model.fit", f"{convnet.fit_ratio:.2f}", "≤ 0.90",
                 convnet.fit_ratio <= 0.9),
        ]
    if not args.skip_serving:
        with tempfile.TemporaryDirectory() as folder:
            service = bench_service(args.mnist, Path(folder))
            serving = bench_serving(data_dir=Path(folder), model=str(service.trained_job))
        with tempfile.TemporaryDirectory() as folder:
            streams = bench_streams(args.mnist, Path(folder))
        rows += [
            _row("POST /jobs → first loss row, idle warm worker",
                 f"{service.first_row_warm_s * 1000:.0f} ms", "< 1 s",
                 service.first_row_warm_s < 1),
            _row("POST /jobs → first loss row, a fresh worker's first job",
                 f"{service.first_row_cold_s * 1000:.0f} ms", "", None),
            _row(f"GET /jobs/{{id}} while training, p50 / p99 ({service.status_requests} req)",
                 f"{service.status_p50_ms:.1f} / {service.status_p99_ms:.1f} ms",
                 "p99 < 50 ms", service.status_p99_ms < 50),
            _row("API start-up (to the first /healthz 200)", f"{serving.startup_s:.2f} s",
                 "< 2 s", serving.startup_s < 2),
            _row("API memory after serving (RSS / peak)",
                 f"{serving.rss_mb:.0f} / {serving.peak_rss_mb:.0f} MB", "< 300 MB",
                 serving.peak_rss_mb < 300),
            _row("one prediction in-process (LiteRT), p50 / p99",
                 f"{serving.latency_p50_us / 1000:.2f} / {serving.latency_p99_us / 1000:.2f} ms",
                 "p50 < 1 ms", serving.latency_p50_us < 1000),
            _row("HTTP predict by job id / bare endpoint (/healthz), requests per second",
                 f"{serving.predict_vs_bare:.2f} ({serving.requests_per_s})", "≥ 0.85",
                 serving.predict_vs_bare >= 0.85),
            _row("HTTP predict by alias (`latest`) / bare endpoint",
                 f"{serving.predict_by_alias_vs_bare:.2f} (TF Serving "
                 f"{serving.vs_bare['tfserving_predict']:.2f}, KServe V2 "
                 f"{serving.vs_bare['v2_infer']:.2f})", "≥ 0.85",
                 serving.predict_by_alias_vs_bare >= 0.85),
            _row(f"{streams.streams} event streams × {streams.seconds:.0f} s on a training job: "
                 "first event, max (p50)",
                 f"{streams.first_event_max_s:.2f} s ({streams.first_event_p50_s:.2f} s), "
                 f"{streams.refused} refused, {streams.failed} failed",
                 "< 5 s", streams.first_event_max_s < 5 and not streams.failed),
            _row(f"GET /jobs while they run, p50 / p99 ({streams.list_requests} req)",
                 f"{streams.list_p50_ms:.0f} / {streams.list_p99_ms:.0f} ms", "p99 < 500 ms",
                 streams.list_p99_ms < 500),
            _row("API memory with them (peak)", f"{streams.api_peak_rss_mb:.0f} MB", "< 600 MB",
                 streams.api_peak_rss_mb < 600),
        ]
    if not args.skip_serving and not args.skip_small_jobs:
        from benchmarks.small_jobs import bench_small_jobs
        from benchmarks.small_jobs import rows as small_job_rows

        with tempfile.TemporaryDirectory() as folder:
            rows += small_job_rows(bench_small_jobs(args.mnist, Path(folder)), _row)
    if not args.skip_queue:
        rows += _queue_rows()
    if not args.skip_serving and not args.skip_study:
        from benchmarks.study import bench_study
        from benchmarks.study import rows as study_rows

        with tempfile.TemporaryDirectory() as folder:
            rows += study_rows(bench_study(args.mnist, Path(folder)), _row)
    print("| figure | measured | target | met |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
