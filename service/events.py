"""A job's training as a resumable stream of Server-Sent Events.

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

The stream polls the database with a fresh, short read session each time, in a thread; it
never holds a transaction between polls and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import jobs
from service.db import Database
from service.models import EpochSummary, Metric
from service.schemas import EpochRead, JobRead, MetricRead

BATCH, EPOCH, STATE, PROGRESS = "batch", "epoch", "state", "progress"

POLL_INTERVAL_S = 0.3
HEARTBEAT_INTERVAL_S = 15.0
# Rows per poll: a long backlog goes out in pages, without waiting between them.
PAGE_ROWS = 2_000
# How long a client that lost the stream waits before reconnecting (the SSE `retry:` field).
RETRY_MS = 2_000

# An event id: a step (-1 before the first), and "e" for the epoch that ends at that step;
# empty means from the start.
CURSOR_PATTERN = r"^\s*((-1|\d{1,18})e?)?\s*$"
_CURSOR = re.compile(r"(-1|\d{1,18})(e?)")


@dataclass(frozen=True)
class Cursor:
    """How far a client has read: every batch up to `step`, and the epoch ending there when
    `epoch_seen`. Its text form is the event id."""

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
    return Cursor(int(step), epoch == "e" and step != "-1")


@dataclass(frozen=True)
class Snapshot:
    """One poll: the job, and the history after a cursor (at most one page of batches)."""

    job: JobRead
    batches: Sequence[MetricRead]
    epochs: Sequence[tuple[int, EpochRead]]  # (its last step, its figures), in order
    more: bool  # the page was full: more batches are waiting


def read_events(*, session: Session, job_id: int, cursor: Cursor, limit: int) -> Snapshot:
    """The job and its batches and epochs after `cursor`, in one read.

    The job is read first. On PostgreSQL each statement sees its own snapshot, and a job seen
    in a final state had all its rows committed with that state, so the reads that follow
    see them all: the stream never ends with rows missing.
    """
    job = jobs.get_job(session=session, job_id=job_id)
    view = jobs.describe(job)
    rows = session.scalars(
        select(Metric)
        .where(Metric.job_id == job_id, Metric.step > cursor.step)
        .order_by(Metric.step)
        .limit(limit + 1)
    ).all()
    batches = [MetricRead.model_validate(row, from_attributes=True) for row in rows[:limit]]
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
    return Snapshot(job=view, batches=batches, epochs=epochs, more=len(rows) > limit)


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


def _history(snapshot: Snapshot, cursor: Cursor) -> tuple[list[str], Cursor]:
    """The batch and epoch messages of a snapshot, in step order, and the cursor after them."""
    out: list[str] = []
    pending = list(snapshot.epochs)

    def epochs_through(step: int) -> None:
        nonlocal cursor
        while pending and pending[0][0] <= step:
            last_step, summary = pending.pop(0)
            cursor = Cursor(last_step, epoch_seen=True)
            out.append(format_event(EPOCH, summary.model_dump_json(), cursor.id))

    epochs_through(cursor.step)  # the epoch ending at the client's step, if it lacks it
    for batch in snapshot.batches:
        cursor = Cursor(batch.step)
        out.append(format_event(BATCH, batch.model_dump_json(), cursor.id))
        epochs_through(batch.step)
    return out, cursor


def _progress(job: JobRead) -> str:
    data = {
        **job.progress.model_dump(),
        "loss": job.loss,
        "samples_per_second": job.samples_per_second,
        "eta_seconds": job.eta_seconds,
    }
    return format_event(PROGRESS, json.dumps(data, separators=(",", ":")))


async def stream(
    database: Database,
    *,
    job_id: int,
    cursor: Cursor,
    first: Snapshot,
    poll_interval: float = POLL_INTERVAL_S,
    heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
    limit: int = PAGE_ROWS,
) -> AsyncIterator[str]:
    """The job's events after `cursor`, starting from the snapshot `first`, until the job
    reaches a final state; a comment line whenever nothing was sent for a heartbeat."""
    yield f"retry: {RETRY_MS}\n\n"
    snapshot, state_sent, progress_sent = first, None, None
    last_sent = time.monotonic()
    while True:
        job, out = snapshot.job, []
        state = (job.state, job.cancel_requested)
        final = job.state.is_final and not snapshot.more
        if state != state_sent and not job.state.is_final:
            out.append(format_event(STATE, job.model_dump_json()))
            state_sent = state
        history, cursor = _history(snapshot, cursor)
        out += history
        progress = (job.progress.step, job.progress.total_steps)
        if history and job.state == "running" and progress != progress_sent:
            out.append(_progress(job))
            progress_sent = progress
        if final:
            out.append(format_event(STATE, job.model_dump_json()))
        if out:
            yield "".join(out)
            last_sent = time.monotonic()
        if final:
            return
        if not snapshot.more:
            await asyncio.sleep(poll_interval)
            if time.monotonic() - last_sent >= heartbeat_interval:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
        snapshot = await asyncio.to_thread(
            load, database, job_id=job_id, cursor=cursor, limit=limit
        )
