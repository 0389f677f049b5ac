"""The job queue under load: N simulated workers on the real queue code, no TensorFlow.

    tapefit bench queue --simulated-workers 100 --seconds 20 --json

Each simulated worker is a thread doing what `tapefit worker` does around its fit loop, with
the same functions: it claims the oldest queued job (`service.queue.leases.claim_job`), starts
it, hands one row per step to a real `worker.recorder.JobRecorder` (which writes them in
lease-fenced groups of TAPEFIT_FLUSH_ROWS, or sooner after TAPEFIT_FLUSH_INTERVAL), writes an
epoch row at each epoch's end, heartbeats (its presence row and its lease, in one
transaction, as the worker's heartbeat thread does), and finishes the job with a small model
through `worker.outcomes.persist`. It trains nothing: a step costs no time unless
`--step-ms` says so, so the figures are what the queue can take, not what training asks of it.
Beside them, a sweeper pass runs every heartbeat interval, as the API's does, and a feeder
keeps the queue stocked with the rows `POST /jobs` makes (in one statement per round).

When the time is up every worker hands its job back (`release_job`, as on SIGTERM), and every
row is read back: a step acknowledged (its transaction committed) but missing is `lost`; a row
twice, or one written under a lease other than the job's last (a stale worker's write that the
fencing should have refused), is a `duplicate`.

The run uses a scratch database on the configured server, never the configured database
itself: PostgreSQL gets a new database (created, migrated, dropped after), SQLite a temporary
file. The simulated workers share one pool of `--connections` connections (default: one per
worker, up to 48), as workers behind a pooler would: PostgreSQL's default max_connections is
100, fewer than 100 workers holding one each, with the API's on top. The simulator shares
the machine's cores (and one Python's GIL) with the database it measures; see the README.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from service.config import Settings
from service.db import Database
from service.migrate import upgrade
from service.models import Job, Metric, utcnow
from service.queue import leases
from service.queue.leases import Lease, LeaseLost
from service.queue.sweeper import sweep_once
from service.schemas import JobSpec, JobState
from worker.outcomes import HandedBack, Succeeded, persist
from worker.recorder import JobRecorder, Presence

# One epoch of MNIST at batch 128: the default job's epoch.
STEPS_PER_EPOCH = 469
# Steps per compiled call of the fit loop: their rows reach the recorder together.
CALL_STEPS = 16
# What a simulated job "exports": small, so the figures are about the queue, not blobs.
MODEL = b"\0" * 4096
# Connections the workers share when --connections is not given: one each, up to this.
DEFAULT_MAX_CONNECTIONS = 48
# Queued jobs the feeder keeps per worker, so a claim never finds the queue empty.
QUEUE_DEPTH_PER_WORKER = 2


@dataclass(frozen=True)
class QueueFigures:
    workers: int
    jobs: int  # jobs finished (succeeded) within the run
    rows_per_second: float  # loss rows committed per second, all workers together
    claim_p50_ms: float  # a claim's transaction, begin to commit, for claims that got a job
    claim_p99_ms: float
    heartbeat_p99_ms: float  # presence and lease, one transaction
    duplicates: int  # rows twice, or written under a lease other than the job's last
    lost: int  # acknowledged rows missing
    # Beyond the headline figures:
    claim_p99_after_first_ms: float = 0.0  # each worker's first claim left out (all at once)
    database: str = ""
    processes: int = 1  # the simulator's processes, its threads split among them
    connections: int = 0
    seconds: float = 0.0
    rows: int = 0
    claims: int = 0
    flush_p50_ms: float = 0.0  # one group of rows (and the job's progress), one transaction
    flush_p99_ms: float = 0.0
    sweep_p99_ms: float = 0.0
    errors: int = 0  # database errors a worker met (its job handed back or left)
    leases_lost: int = 0
    # Cores in use over the run: the simulator's processes, the database server (PostgreSQL
    # on this machine; None otherwise), and the machine's busy fraction (1.0: every core).
    simulator_cpu: float = 0.0
    database_cpu: float | None = None
    machine_busy: float | None = None
    first_error: str | None = None
    # The same rows per second of the run alone (--seconds): every row is made before the
    # workers are told to stop, while `seconds`, and so `rows_per_second`, also count the
    # wind-down after it (the last groups committed, every job handed back). Paced
    # (--step-ms), what the workers asked: each of them training all the time. That leaves
    # out each job's claim, start and end, so no queue reaches the asked rate.
    rows_per_second_in_run: float = 0.0
    asked_rows_per_second: float | None = None


@dataclass
class _Tally:
    """What one simulated worker measured; merged at the end (no lock on the hot path)."""

    claim_s: list[float] = field(default_factory=list)  # the worker's first claim first
    heartbeat_s: list[float] = field(default_factory=list)
    flush_s: list[float] = field(default_factory=list)
    rows: int = 0
    jobs: int = 0
    errors: int = 0
    leases_lost: int = 0
    last_beat: float = 0.0  # monotonic time of this worker's last heartbeat
    # job id -> (lease token, steps acknowledged) for each job this worker wrote to: every
    # step below the count is committed, each under this token.
    acknowledged: dict[int, tuple[int, int]] = field(default_factory=dict)


class _Beat:
    """What JobRecorder reads from the worker's heartbeat thread: whether the lease was lost.
    The simulated worker heartbeats inline (see `_heartbeat`), timing each beat."""

    def __init__(self) -> None:
        self.lost = threading.Event()


class _TimedRecorder(JobRecorder):
    """The worker's recorder, timing each of its transactions and noting, once each commits,
    how many of the job's steps are in (every row handed over before it)."""

    def __init__(self, *args: object, tally: _Tally, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tally = tally
        self.given = 0  # steps handed to on_batch
        self.committed = 0

    def on_batch(self, *, step: int, **figures: float | int) -> None:  # type: ignore[override]
        self.given = step + 1
        super().on_batch(step=step, **figures)  # type: ignore[arg-type]

    def record(self, change, **values) -> None:  # noqa: ANN001 (as JobRecorder.record)
        given, started = self.given, time.perf_counter()
        super().record(change, **values)
        self.tally.flush_s.append(time.perf_counter() - started)
        self.tally.rows += given - self.committed
        self.committed = given
        self.tally.acknowledged[self.lease.job_id] = (self.lease.token, given)


def job_steps(job_id: int, mean: int) -> int:
    """A job's length: from half the mean to one and a half times it, fixed by its id. Jobs
    of one length would end together and claim together, every round, as real ones do not."""
    return max(1, mean // 2 + (job_id * 7919) % (mean + 1))


@dataclass(frozen=True)
class _Plan:
    """What every simulated worker is told: picklable, for the worker processes."""

    url: str
    settings: Settings
    steps_per_job: int
    step_seconds: float
    start_at: float  # time.time() at which the workers start
    stop_at: float  # ... and after which they hand their jobs back


@dataclass
class _Share:
    """One process's simulated workers, measured."""

    tallies: list[_Tally]
    cpu_seconds: float
    finished_at: float  # time.time() when its last worker stopped
    first_error: str | None


class _Workers:
    """Simulated workers as threads of one process, sharing one pool of connections."""

    def __init__(self, plan: _Plan, indexes: range, connections: int) -> None:
        self.plan, self.indexes = plan, indexes
        self.settings = plan.settings
        self.database = Database(plan.url, busy_timeout=self.settings.sqlite_busy_timeout,
                                 pool_size=connections)
        self.done = threading.Event()
        self.tallies = {i: _Tally() for i in indexes}
        self.first_error: str | None = None
        self._lock = threading.Lock()

    def run(self) -> _Share:
        threads = [threading.Thread(target=self._work, args=(i,), name=f"worker-{i}")
                   for i in self.indexes]
        time.sleep(max(0.0, self.plan.start_at - time.time()))
        cpu = time.process_time()
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, self.plan.stop_at - time.time()))
        self.done.set()
        for thread in threads:  # each hands its job back first: its rows are committed
            thread.join()
        finished_at = time.time()
        self.database.dispose()
        return _Share(list(self.tallies.values()), time.process_time() - cpu, finished_at,
                      self.first_error)

    # The simulated worker: claim, run, persist, as worker/main.py and worker/run.py do.

    def _work(self, index: int) -> None:
        tally = self.tallies[index]
        worker_id = f"bench-{os.getpid()}-{index}"
        presence = Presence(self.database, worker_id, self.settings.lease_timeout)
        try:
            presence.beat()
            tally.last_beat = time.monotonic()
            while not self.done.is_set():
                started = time.perf_counter()
                with self.database.session(write=True) as session:
                    lease = leases.claim_job(session=session, worker_id=worker_id)
                if lease is None:  # the feeder fell behind: wait as an idle worker does
                    self.done.wait(self.settings.poll_interval)
                    continue
                tally.claim_s.append(time.perf_counter() - started)
                self._run_job(lease, presence, tally)
        except Exception as exc:  # counted and shown once; the other workers go on
            self._failed(tally, exc)
        finally:
            presence.leave()

    def _run_job(self, lease: Lease, presence: Presence, tally: _Tally) -> None:
        beat, steps_per_job = _Beat(), job_steps(lease.job_id, self.plan.steps_per_job)
        recorder = _TimedRecorder(
            self.database, lease, flush_rows=self.settings.flush_rows,
            flush_interval=self.settings.flush_interval, stop=self.done, heartbeat=beat,
            tally=tally,
        )
        steps, pace = 0, self.plan.step_seconds
        try:
            recorder.record(leases.start_job, total_steps=steps_per_job)
            started = time.monotonic()
            while steps < steps_per_job and not self.done.is_set():
                if pace and steps % CALL_STEPS == 0:
                    # The fit loop runs 16 steps per compiled call, then hands their rows
                    # over at once: "train" them, on a schedule (no drift from the writes).
                    time.sleep(max(0.0, started + (steps + CALL_STEPS) * pace - time.monotonic()))
                # Every interval of the worker's life, across jobs, as its thread beats.
                if time.monotonic() - tally.last_beat >= self.settings.heartbeat_interval:
                    self._heartbeat(lease, presence, tally)
                epoch, batch = divmod(steps, STEPS_PER_EPOCH)
                # The loss says which lease wrote it, for the read-back.
                recorder.on_batch(step=steps, epoch=epoch, batch=batch,
                                  loss=lease.token + steps * 1e-7, accuracy=0.5)
                steps += 1
                if batch == STEPS_PER_EPOCH - 1 or steps == steps_per_job:
                    recorder.on_epoch_end(epoch=epoch, train_loss=0.3, train_accuracy=0.9,
                                          test_loss=0.3, test_accuracy=0.9, seconds=1.0)
            finished = steps == steps_per_job
            outcome = Succeeded(0.3, 0.9, MODEL) if finished else HandedBack("bench over")
            persist(outcome, recorder)
        except LeaseLost:
            tally.leases_lost += 1
            return
        except Exception as exc:  # a database error: the job is left to the sweeper
            self._failed(tally, exc)
            return
        tally.jobs += finished

    def _failed(self, tally: _Tally, exc: Exception) -> None:
        tally.errors += 1
        with self._lock:
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"

    def _heartbeat(self, lease: Lease, presence: Presence, tally: _Tally) -> None:
        # What worker.recorder.Heartbeat does each interval, timed.
        started = time.perf_counter()
        with self.database.session(write=True) as session:
            presence.beat(session)
            leases.heartbeat(session=session, lease=lease)
        tally.heartbeat_s.append(time.perf_counter() - started)
        tally.last_beat = time.monotonic()


def _run_share(plan: _Plan, indexes: range, connections: int) -> _Share:
    """A worker process's part (a top-level function, for the process pool)."""
    return _Workers(plan, indexes, connections).run()


class QueueBench:
    """N simulated workers, a sweeper and a feeder on one database, for `seconds`.

    The workers run as threads of `processes` processes (1: this one), so that one Python's
    GIL does not serialise a hundred of them; the connections are split among them."""

    def __init__(
        self, url: str, *, workers: int, seconds: float, connections: int | None = None,
        processes: int = 1, steps_per_job: int = STEPS_PER_EPOCH, step_seconds: float = 0.0,
        heartbeat_interval: float = 1.0, settings: Settings | None = None,
    ) -> None:
        base = settings or Settings()
        # The lease timeout stays the configured one: the sweeper must not take jobs from
        # workers that are merely slow under this load.
        self.settings = base.model_copy(update={"heartbeat_interval": heartbeat_interval})
        self.url, self.workers, self.seconds = url, workers, seconds
        self.processes = max(1, min(processes, workers))
        self.connections = max(connections or min(workers, DEFAULT_MAX_CONNECTIONS),
                               self.processes)
        self.steps_per_job, self.step_seconds = steps_per_job, step_seconds
        # The feeder's and the sweeper's own connections, beside the workers'.
        self.database = Database(url, busy_timeout=self.settings.sqlite_busy_timeout,
                                 pool_size=2)
        self.spec = JobSpec().model_dump(mode="json")
        self.done = threading.Event()
        self.sweep_s: list[float] = []

    def run(self) -> QueueFigures:
        self._feed()  # a full queue before the first claim
        helpers = [threading.Thread(target=self._feed_forever, name="feeder"),
                   threading.Thread(target=self._sweep_forever, name="sweeper")]
        # Spawned processes take a moment to import; everyone starts at once after that.
        start_at = time.time() + (2.0 if self.processes > 1 else 0.0)
        plan = _Plan(self.url, self.settings, self.steps_per_job, self.step_seconds,
                     start_at, start_at + self.seconds)
        parts = [range(i, self.workers, self.processes) for i in range(self.processes)]
        pools = [len(part) * self.connections // self.workers or 1 for part in parts]
        meter = _CpuMeter(self.url)
        for thread in helpers:
            thread.start()
        try:
            if self.processes == 1:
                meter.start(start_at)
                shares = [_run_share(plan, parts[0], pools[0])]
            else:
                context = multiprocessing.get_context("spawn")  # no threads or engines forked
                with ProcessPoolExecutor(self.processes, mp_context=context) as pool:
                    futures = [pool.submit(_run_share, plan, part, size)
                               for part, size in zip(parts, pools, strict=True)]
                    meter.start(start_at)
                    shares = [future.result() for future in futures]
            usage = meter.stop()
        finally:
            self.done.set()
            for thread in helpers:
                thread.join()
        elapsed = max(share.finished_at for share in shares) - start_at
        tallies = [tally for share in shares for tally in share.tallies]
        try:
            duplicates, lost = self._read_back(tallies)
        finally:
            self.database.dispose()
        return self._figures(shares, tallies, elapsed, usage, duplicates, lost)

    # The API's side: the queue's feeder and the sweeper.

    def _feed(self) -> None:
        want = QUEUE_DEPTH_PER_WORKER * self.workers
        with self.database.session(write=True) as session:
            queued = session.scalar(
                select(func.count()).select_from(Job).where(Job.state == JobState.queued)
            ) or 0
            if queued < want:  # the rows submit_job makes, in one statement
                session.execute(insert(Job), [
                    {"state": JobState.queued, "spec": self.spec, "created_at": utcnow()}
                    for _ in range(want - queued)
                ])

    def _feed_forever(self) -> None:
        while not self.done.wait(0.2):
            try:
                self._feed()
            except OperationalError:
                pass  # a busy SQLite: the next round will do

    def _sweep_forever(self) -> None:
        while not self.done.wait(self.settings.heartbeat_interval):
            started = time.perf_counter()
            try:
                sweep_once(self.database, self.settings)
            except OperationalError:
                continue
            self.sweep_s.append(time.perf_counter() - started)

    # The read-back and the figures.

    def _read_back(self, tallies: list[_Tally]) -> tuple[int, int]:
        """(duplicates, lost) over every row in the database."""
        expected: dict[int, tuple[int, int]] = {}
        for tally in tallies:
            for job_id, (token, steps) in tally.acknowledged.items():
                # The job's last holder (the highest token) wrote last: a job handed back
                # as the run ended and claimed again starts over (no checkpoint here).
                if token > expected.get(job_id, (-1, 0))[0]:
                    expected[job_id] = (token, steps)
        seen: dict[tuple[int, int], int] = defaultdict(int)
        good: set[tuple[int, int]] = set()  # rows an acknowledged write explains
        duplicates = 0
        with self.database.session() as session:
            rows = session.execute(select(Metric.job_id, Metric.step, Metric.loss))
            for job_id, step, loss in rows:
                seen[job_id, step] += 1
                token, steps = expected.get(job_id, (None, 0))
                if token is not None and step < steps and round(loss - step * 1e-7) == token:
                    good.add((job_id, step))
                else:
                    duplicates += 1  # a row that no acknowledged write explains
            finished = dict(session.execute(
                select(Job.id, Job.steps_done).where(Job.state == JobState.succeeded)
            ).all())
        duplicates += sum(count - 1 for count in seen.values() if count > 1)
        lost = sum(
            1 for job_id, (_, steps) in expected.items() for step in range(steps)
            if (job_id, step) not in good
        )
        # A finished job says it did every step.
        lost += sum(max(0, job_steps(job_id, self.steps_per_job) - done)
                    for job_id, done in finished.items())
        return duplicates, lost

    def _figures(
        self, shares: list[_Share], tallies: list[_Tally], elapsed: float,
        usage: dict[str, float | None], duplicates: int, lost: int,
    ) -> QueueFigures:
        def merged(name: str) -> np.ndarray:
            return np.array([t for tally in tallies for t in getattr(tally, name)] or [0.0])

        def ms(values: np.ndarray, q: float) -> float:
            return round(float(np.percentile(values, q)) * 1000, 2)

        claims, beats, flushes = merged("claim_s"), merged("heartbeat_s"), merged("flush_s")
        # Every worker's first claim comes at once, at the start: the rest are the steady state.
        later = np.array([t for tally in tallies for t in tally.claim_s[1:]] or [0.0])
        rows = sum(tally.rows for tally in tallies)
        return QueueFigures(
            workers=self.workers,
            jobs=sum(tally.jobs for tally in tallies),
            rows_per_second=round(rows / elapsed),
            claim_p50_ms=ms(claims, 50), claim_p99_ms=ms(claims, 99),
            claim_p99_after_first_ms=ms(later, 99),
            heartbeat_p99_ms=ms(beats, 99),
            duplicates=duplicates, lost=lost,
            database=self.database.engine.dialect.name,
            processes=self.processes, connections=self.connections,
            seconds=round(elapsed, 2), rows=rows,
            claims=sum(len(tally.claim_s) for tally in tallies),
            flush_p50_ms=ms(flushes, 50), flush_p99_ms=ms(flushes, 99),
            sweep_p99_ms=ms(np.array(self.sweep_s or [0.0]), 99),
            errors=sum(tally.errors for tally in tallies),
            leases_lost=sum(tally.leases_lost for tally in tallies),
            simulator_cpu=round(sum(share.cpu_seconds for share in shares) / elapsed, 2),
            database_cpu=usage["database"], machine_busy=usage["machine"],
            first_error=next((share.first_error for share in shares if share.first_error),
                             None),
            rows_per_second_in_run=round(rows / self.seconds),
            asked_rows_per_second=round(self.workers / self.step_seconds)
            if self.step_seconds else None,
        )


class _CpuMeter:
    """Cores the database server used over the run (when it runs on this machine, read from
    /proc) and the fraction of the machine that was busy: who the bottleneck was."""

    def __init__(self, url: str) -> None:
        host = make_url(url).host
        self.local_server = not url.startswith("sqlite") and host in (None, "", "localhost",
                                                                      "127.0.0.1", "::1")
        self.started: tuple[float, float, float, float] | None = None

    def start(self, at: float) -> None:
        time.sleep(max(0.0, at - time.time()))
        self.started = (time.perf_counter(), *self._read())

    def stop(self) -> dict[str, float | None]:
        if self.started is None:
            return {"database": None, "machine": None}
        wall, server, busy, total = self.started
        now_server, now_busy, now_total = self._read()
        elapsed = time.perf_counter() - wall
        return {
            "database": round((now_server - server) / elapsed, 2) if self.local_server else None,
            "machine": round((now_busy - busy) / (now_total - total), 2)
            if now_total > total else None,
        }

    def _read(self) -> tuple[float, float, float]:
        """(the server's CPU seconds, the machine's busy and total jiffies)."""
        proc = Path("/proc")
        if not (proc / "stat").exists():
            return 0.0, 0.0, 0.0
        fields = [int(x) for x in (proc / "stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle and iowait
        server = 0.0
        if self.local_server:
            tick = os.sysconf("SC_CLK_TCK")
            for entry in proc.iterdir():
                if not entry.name.isdecimal():
                    continue
                try:
                    if (entry / "comm").read_text().strip() != "postgres":
                        continue
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:  # gone meanwhile
                    continue
                # utime, stime, and the reaped children's: the postmaster collects the CPU
                # time of the backends that ended (a connection closed) in its cutime, cstime.
                server += sum(int(value) for value in stat[11:15]) / tick
        return server, float(sum(fields) - idle), float(sum(fields))


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A migrated database of the same kind as `url`, never `url`'s own: PostgreSQL makes a
    new database on the same server (dropped afterwards), SQLite a temporary file."""
    if url.startswith("sqlite"):
        with tempfile.TemporaryDirectory(prefix="tapefit-bench-queue-") as folder:
            scratch = f"sqlite:///{Path(folder) / 'queue.db'}"
            upgrade(scratch)
            yield scratch
        return
    server = make_url(url)
    name = f"tapefit_bench_queue_{os.getpid()}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        scratch = server.set(database=name).render_as_string(hide_password=False)
        upgrade(scratch)
        yield scratch
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_queue(
    *, workers: int, seconds: float, url: str | None = None, **options: object
) -> QueueFigures:
    """Run the queue benchmark on a scratch copy of `url`'s kind (default: the configured
    database, TAPEFIT_DATABASE_URL)."""
    settings = Settings()
    with scratch_database(url or settings.sqlalchemy_url) as scratch:
        return QueueBench(scratch, workers=workers, seconds=seconds, settings=settings,
                          **options).run()  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tapefit bench queue", description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--simulated-workers", type=int, default=100, metavar="N")
    parser.add_argument("--seconds", type=float, default=20.0, metavar="S")
    parser.add_argument("--connections", type=int, default=None, metavar="K",
                        help="database connections the workers share "
                        f"(default: one each, up to {DEFAULT_MAX_CONNECTIONS})")
    parser.add_argument("--processes", type=int, default=1, metavar="P",
                        help="processes the simulated workers are split among (each with its "
                        "own GIL; default 1)")
    parser.add_argument("--steps-per-job", type=int, default=STEPS_PER_EPOCH,
                        help="the mean length of a job, in steps (each is 0.5 to 1.5 times it)")
    parser.add_argument("--step-ms", type=float, default=0.0,
                        help="time a simulated training step takes (default 0: as fast as "
                        "the queue takes rows)")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0,
                        help="seconds between heartbeats and sweeps (the service's default "
                        "is 5; shorter here, for more samples and more load)")
    parser.add_argument("--database-url", default=None,
                        help="a server (or SQLite file) to make the scratch database beside; "
                        "default TAPEFIT_DATABASE_URL")
    parser.add_argument("--json", action="store_true", help="one JSON line, nothing else")
    args = parser.parse_args(argv)
    if min(args.simulated_workers, args.processes, args.steps_per_job) < 1 or args.seconds <= 0:
        parser.error("--simulated-workers, --processes, --seconds and --steps-per-job must be "
                     "positive")
    figures = bench_queue(
        workers=args.simulated_workers, seconds=args.seconds, url=args.database_url,
        connections=args.connections, processes=args.processes, steps_per_job=args.steps_per_job,
        step_seconds=args.step_ms / 1000, heartbeat_interval=args.heartbeat_interval,
    )
    if args.json:
        print(json.dumps(asdict(figures)))
    else:
        for name, value in asdict(figures).items():
            print(f"{name:>18}: {value}")
    if figures.first_error:
        print(f"tapefit bench queue: {figures.errors} errors, the first: {figures.first_error}",
              file=sys.stderr)
    return 0 if figures.duplicates == figures.lost == figures.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
