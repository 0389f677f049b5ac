"""A job's training as a resumable stream of Server-Sent Events: what the events are, how a
read of the database becomes them, and how one client's position in them advances.

Event types, in the order a client meets them:

    state     the job's JSON (as GET /jobs/{id}): first the state it is in when the stream
              opens, then each change (and a cancel being asked); a final state is the last
              event, sent once every row before it has been sent, and the stream ends.
    batch     one training step {step, epoch, batch, loss, accuracy, time}; `id:` its step.
    epoch     one finished epoch's figures, right after its last batch; `id:` "<that step>e".
    progress  {epoch, epochs, step, total_steps, fraction, loss, samples_per_second,
              eta_seconds} after each group of new batches while the job runs: a snapshot.

An event's id is a cursor: "N" means "I have every batch up to step N", "Ne" also the epoch
that ends at step N. A client that reconnects with that id as Last-Event-ID gets exactly what
comes after it: no batch or epoch twice, none missed. `state` and `progress` events carry no
id (they are snapshots): a reconnecting client gets the current state once.

Cursors are ordered as the events are: every batch and epoch event has a cursor (its id), and
the events after a cursor are those whose cursor is greater. So a read of the rows after one
cursor (an `Update`) can serve any client whose cursor is at or past that one: it takes the
events past its own (`Follower.apply`). service/queue/event_hub.py builds the live streams on that.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import Database
from service.models import EpochSummary, Metric
from service.queue import jobs
from service.schemas import EpochRead, JobRead, JobState, MetricRead

BATCH, EPOCH, STATE, PROGRESS = "batch", "epoch", "state", "progress"

POLL_INTERVAL_S = 0.3
HEARTBEAT_INTERVAL_S = 15.0
# Rows per read: a long backlog goes out in pages of this many, without waiting between
# them; small enough that many clients catching up at once hold little memory each.
PAGE_ROWS = 500
# How long a client that lost the stream waits before reconnecting (the SSE `retry:` field).
RETRY_MS = 2_000

# An event id: a step (-1 before the first), and "e" for the epoch that ends at that step;
# empty means from the start.
# ASCII digits only: \d would take "١" (Arabic-Indic one) for 1.
CURSOR_PATTERN = r"^\s*((-1|[0-9]{1,18})e?)?\s*$"
_CURSOR = re.compile(r"(-1|[0-9]{1,18})(e?)")
MAX_STEP = 2**31 - 1


@dataclass(frozen=True, order=True)
class Cursor:
    """How far a client has read: every batch up to `step`, and the epoch ending there when
    `epoch_seen`. Its text form is the event id. Ordered as the events are: the epoch ending
    at step N comes after batch N and before batch N + 1."""

    step: int = -1
    epoch_seen: bool = False

    @property
    def id(self) -> str:
        return f"{self.step}e" if self.epoch_seen else str(self.step)


def parse_cursor(value: str | None) -> Cursor:
    """The cursor a Last-Event-ID names; an empty one is the beginning. ValueError if bad."""
    if value is None or not value.strip():
        return Cursor()
    match = _CURSOR.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"'{value[:40]}' is not an event id of this stream: a step number, "
            "optionally followed by 'e' (e.g. 41 or 41e)"
        )
    step, epoch = match.groups()
    # Steps are 32-bit in the database (PostgreSQL refuses a larger bound): a cursor past any
    # step there can be is the same as one at the last.
    return Cursor(min(int(step), MAX_STEP), epoch == "e" and step != "-1")


@dataclass(frozen=True)
class Snapshot:
    """One read: the job, and the history after a cursor (at most one page of batches)."""

    job: JobRead
    batches: Sequence[MetricRead]
    epochs: Sequence[tuple[int, EpochRead]]  # (its last step, its figures), in order
    more: bool  # the page was full: more batches are waiting
    run: int  # the job's lease epoch: a new run (a resumed job) may rewrite rows


_METRIC_COLUMNS = (Metric.step, Metric.epoch, Metric.batch, Metric.loss, Metric.accuracy,
                   Metric.time)
_METRIC_FIELDS = tuple(column.key for column in _METRIC_COLUMNS)
# Plain rows validated as one list: several times cheaper than ORM objects one by one, which
# matters when many clients read their backlog at once.
_METRICS = TypeAdapter(list[MetricRead])


def read_events(*, session: Session, job_id: int, cursor: Cursor, limit: int) -> Snapshot:
    """The job and its batches and epochs after `cursor`, in one read.

    The job is read first. On PostgreSQL each statement sees its own snapshot, and a job seen
    in a final state had all its rows committed with that state, so the reads that follow
    see them all: the stream never ends with rows missing.
    """
    job = jobs.get_job(session=session, job_id=job_id)
    view = jobs.describe(job)
    rows = session.execute(
        select(*_METRIC_COLUMNS)
        .where(Metric.job_id == job_id, Metric.step > cursor.step)
        .order_by(Metric.step)
        .limit(limit + 1)
    ).all()
    batches = _METRICS.validate_python(
        [dict(zip(_METRIC_FIELDS, row, strict=True)) for row in rows[:limit]]
    )
    upto = batches[-1].step if batches else cursor.step
    per_epoch = _batches_per_epoch(view)
    epochs: list[tuple[int, EpochRead]] = []
    if per_epoch:
        # Epoch e ends at step (e + 1) * per_epoch - 1. Wanted: those ending after what the
        # client has (or at it, if it has not seen that epoch) and not after what it gets now.
        first_step = cursor.step + 1 if cursor.epoch_seen else cursor.step
        first = max(0, math.ceil((first_step + 1) / per_epoch) - 1)
        last = (upto + 1) // per_epoch - 1
        summaries = session.scalars(
            select(EpochSummary)
            .where(
                EpochSummary.job_id == job_id,
                EpochSummary.epoch >= first,
                EpochSummary.epoch <= last,
            )
            .order_by(EpochSummary.epoch)
        ).all()
        epochs = [
            ((row.epoch + 1) * per_epoch - 1, EpochRead.model_validate(row, from_attributes=True))
            for row in summaries
        ]
    return Snapshot(job=view, batches=batches, epochs=epochs, more=len(rows) > limit,
                    run=job.lease_epoch)


def _batches_per_epoch(job: JobRead) -> int | None:
    # The worker numbers steps epoch * batches + batch, and total_steps = epochs * batches.
    total = job.progress.total_steps
    return total // job.spec.epochs if total else None


def load(database: Database, *, job_id: int, cursor: Cursor, limit: int = PAGE_ROWS) -> Snapshot:
    """`read_events` in its own short read transaction (JobNotFound for an unknown job)."""
    with database.session() as session:
        return read_events(session=session, job_id=job_id, cursor=cursor, limit=limit)


def format_event(event: str, data: str, event_id: str | None = None) -> str:
    """One SSE message; `data` is one line of JSON."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {data}\n\n"


@dataclass(frozen=True)
class Update:
    """One read, ready to send: the job as it was, and the batch and epoch messages after
    `start` in order, each with its cursor. Shared by every client it is handed to, so each
    message is rendered once however many clients get it."""

    start: Cursor
    end: Cursor  # the last message's cursor; `start` when there is none
    job: JobRead
    items: tuple[tuple[Cursor, str], ...]
    more: bool  # a full page: more rows are waiting after `end`
    read_at: float  # time.monotonic() as the read began: orders the job views of reads
    run: int  # the job's lease epoch when read

    @cached_property
    def messages(self) -> str:
        """Every batch and epoch message, as one text."""
        return "".join(message for _, message in self.items)

    @cached_property
    def state_event(self) -> str:
        return format_event(STATE, self.job.model_dump_json())

    @cached_property
    def progress_event(self) -> str:
        job = self.job
        data = {
            **job.progress.model_dump(),
            "loss": job.loss,
            "samples_per_second": job.samples_per_second,
            "eta_seconds": job.eta_seconds,
        }
        return format_event(PROGRESS, json.dumps(data, separators=(",", ":")))


def read_update(
    database: Database, *, job_id: int, cursor: Cursor, limit: int = PAGE_ROWS
) -> Update:
    """`load` after `cursor`, rendered (blocking: run it in a thread)."""
    read_at = time.monotonic()
    snapshot = load(database, job_id=job_id, cursor=cursor, limit=limit)
    items, end = _history(snapshot, cursor)
    return Update(start=cursor, end=end, job=snapshot.job, items=tuple(items),
                  more=snapshot.more, read_at=read_at, run=snapshot.run)


def read_job(database: Database, *, job_id: int, cursor: Cursor) -> Update:
    """The job alone, as an Update with its history still to read (JobNotFound if unknown)."""
    read_at = time.monotonic()
    with database.session() as session:
        job = jobs.get_job(session=session, job_id=job_id)
        view, run = jobs.describe(job), job.lease_epoch
    return Update(start=cursor, end=cursor, job=view, items=(), more=True, read_at=read_at,
                  run=run)


def _history(snapshot: Snapshot, cursor: Cursor) -> tuple[list[tuple[Cursor, str]], Cursor]:
    """The batch and epoch messages of a snapshot, in step order with their cursors, and the
    cursor after them."""
    out: list[tuple[Cursor, str]] = []
    pending = list(snapshot.epochs)

    def epochs_through(step: int) -> None:
        nonlocal cursor
        while pending and pending[0][0] <= step:
            last_step, summary = pending.pop(0)
            cursor = Cursor(last_step, epoch_seen=True)
            out.append((cursor, format_event(EPOCH, summary.model_dump_json(), cursor.id)))

    epochs_through(cursor.step)  # the epoch ending at the client's step, if it lacks it
    for batch in snapshot.batches:
        cursor = Cursor(batch.step)
        out.append((cursor, format_event(BATCH, batch.model_dump_json(), cursor.id)))
        epochs_through(batch.step)
    return out, cursor


class Follower:
    """One client's place in a job's events: its cursor and the snapshots it was last sent.

    `apply` takes an Update whose `start` is at or before the cursor (an Update that starts
    past it would skip events: the caller reads from the cursor instead) and returns what to
    send: the state if it changed, the messages past the cursor, a progress snapshot after
    new batches, and the final state once the job has ended and every row was sent.
    """

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self._state: tuple[JobState, bool] | None = None
        self._progress: tuple[int, int | None] | None = None
        self._read_at = -math.inf

    def apply(self, update: Update) -> tuple[str, bool]:
        """The text to send for `update`, and whether the stream ends after it."""
        job = update.job
        # Reads overlap (a client's own and its job's hub's), so an update can carry an older
        # view of the job than one already applied: its rows still count, its state must not
        # undo a newer one. A final state is never old: nothing leaves it.
        fresh = update.read_at >= self._read_at or job.state.is_final
        out: list[str] = []
        if fresh:
            self._read_at = update.read_at
            state = (job.state, job.cancel_requested)
            if state != self._state and not job.state.is_final:
                out.append(update.state_event)
                self._state = state
        sent = False
        if update.start == self.cursor and update.items:  # the usual case: it wants them all
            out.append(update.messages)
            self.cursor, sent = update.end, True
        else:
            for cursor, message in update.items:
                if cursor > self.cursor:
                    out.append(message)
                    self.cursor, sent = cursor, True
        if fresh and sent and job.state == JobState.running:
            progress = (job.progress.step, job.progress.total_steps)
            if progress != self._progress:
                out.append(update.progress_event)
                self._progress = progress
        final = fresh and job.state.is_final and not update.more
        if final:
            out.append(update.state_event)
        return "".join(out), final
