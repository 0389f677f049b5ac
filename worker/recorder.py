"""Everything a running job writes to the database: batch rows in groups, epoch rows, state
changes, and a heartbeat. Each write is its own short transaction, made in the eager loop
around the compiled step (or the heartbeat thread), never held across a training step."""

from __future__ import annotations

import contextvars
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from service.db import Database
from service.queue import leases, workers
from service.queue.leases import Lease, LeaseLost
from service.schemas import EpochRead

log = logging.getLogger("tapefit.worker")


class Presence:
    """This worker process's row in the `workers` table, which tells the API that a worker is
    alive to run jobs: refreshed by the idle loop and, while a job runs, by its Heartbeat
    thread; removed when the worker stops cleanly (a dead worker's row expires)."""

    def __init__(self, database: Database, worker_id: str, lease_timeout: float) -> None:
        self.database, self.worker_id, self.lease_timeout = database, worker_id, lease_timeout
        self.hostname, self.pid = socket.gethostname(), os.getpid()

    def beat(self, session: Session | None = None) -> None:
        """Refresh the row, in `session` or in a short transaction of its own."""
        if session is None:
            with self.database.session(write=True) as own:
                self.beat(own)
            return
        workers.beat(session=session, worker_id=self.worker_id, hostname=self.hostname,
                     pid=self.pid, lease_timeout=self.lease_timeout)

    def leave(self) -> None:
        """Remove the row; if the database does not answer, the row expires on its own."""
        try:
            with self.database.session(write=True) as session:
                workers.leave(session=session, worker_id=self.worker_id)
        except SQLAlchemyError as exc:
            log.warning("worker %s: could not remove its heartbeat row: %s", self.worker_id, exc)


class Heartbeat:
    """A thread that renews the lease every `interval` seconds while a job runs, so data
    loading, evaluation and export (which write no rows) keep the job too; it keeps the
    worker's `presence` fresh as well."""

    def __init__(
        self, database: Database, lease: Lease, interval: float, presence: Presence | None = None
    ) -> None:
        self.database, self.lease, self.interval = database, lease, interval
        self.presence = presence
        self.lost = threading.Event()
        self._done = threading.Event()
        # In a copy of the job's context: its log lines carry the job id too.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                        name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                with self.database.session(write=True) as session:
                    if self.presence is not None:
                        self.presence.beat(session)
                    leases.heartbeat(session=session, lease=self.lease)
            except LeaseLost:
                log.warning("job %s: lease lost; stopping", self.lease.job_id)
                self.lost.set()
                return
            except OperationalError as exc:  # a busy or unreachable database: beat again
                log.warning("job %s: heartbeat failed: %s", self.lease.job_id, exc)


class JobRecorder:
    """The fit loop's callback and the job's only writer of rows and states.

    Batch rows are written in groups, when a group holds `flush_rows` rows or its oldest
    has waited `flush_interval` seconds: someone polling sees progress within about a
    second while a fast loop still writes one INSERT per many batches. Each write also
    reads whether a cancel was asked, which is how a running job learns of it.
    """

    def __init__(
        self,
        database: Database,
        lease: Lease,
        *,
        flush_rows: int,
        flush_interval: float,
        stop: threading.Event,
        heartbeat: Heartbeat,
        after_epoch: Callable[[], None] = lambda: None,
    ) -> None:
        self.database, self.lease = database, lease
        self.flush_rows, self.flush_interval = flush_rows, flush_interval
        self.stop, self.heartbeat = stop, heartbeat
        self.cancel_requested = False
        self.seconds_writing = 0.0  # time the training loop spent in database writes
        # Runs after an epoch's rows are committed: the worker checkpoints there.
        self.after_epoch = after_epoch
        self._rows: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self._last_flush = -math.inf
        self._last_row_time: float | None = None  # of the last row written; None: none yet

    def on_batch(self, *, step: int, epoch: int, batch: int, loss: float, accuracy: float) -> None:
        now = time.monotonic()
        row = {"step": step, "epoch": epoch, "batch": batch, "loss": loss,
               "accuracy": accuracy, "time": now - self._started}
        self._rows.append(row)
        # The run's first row is written at once (someone watching sees the job has started
        # training, whatever the start's own writes and the next call's compile take).
        if (self._last_row_time is None or len(self._rows) >= self.flush_rows
                or now - self._last_flush >= self.flush_interval):
            self.flush()

    def on_epoch_end(self, **figures: float | int) -> None:
        self.record(leases.record_epoch, summary=EpochRead(**figures))
        self.after_epoch()

    def should_stop(self) -> bool:
        return self.cancel_requested or self.stop.is_set() or self.heartbeat.lost.is_set()

    def flush(self) -> None:
        """Write the rows held so far (and learn whether a cancel was asked)."""
        self.record(None)

    def record(self, change: Callable[..., None] | None, **values: Any) -> None:
        """Write the rows held so far and then `change` (a service.queue.leases transition), if any,
        in one transaction: a job's last rows and its end state commit together."""
        started = time.perf_counter()
        rows, self._rows = self._rows, []
        speed = self._speed(rows)
        with self.database.session(write=True) as session:
            cancel = leases.record_progress(
                session=session, lease=self.lease, rows=rows, steps_per_second=speed
            )
            if change is not None:
                change(session=session, lease=self.lease, **values)
        self.cancel_requested = self.cancel_requested or cancel
        self._last_flush = time.monotonic()
        self.seconds_writing += time.perf_counter() - started

    def _speed(self, rows: list[dict[str, Any]]) -> float | None:
        """Steps per second over this group of rows, measured from the group before's end."""
        if not rows:
            return None
        previous, self._last_row_time = self._last_row_time, rows[-1]["time"]
        if previous is None or rows[-1]["time"] <= previous:
            return None
        return len(rows) / (rows[-1]["time"] - previous)
