"""Live event streams that share the database, the event loop and memory fairly.

However many clients watch a job, one poller reads its new rows: the job's hub, a task made
for its first live subscriber and gone after its last leaves or the job ends. It starts at
the job's last row and, every POLL_INTERVAL_S, reads the rows after its cursor once, renders
them once (an `events.Update`) and hands that same Update to every subscriber; each Update
starts where the one before ended.

A stream first sends the job's state (from the hub's last read when there is a hub: no read
at all), then catches up: it reads its backlog after its cursor itself, in pages of
PAGE_ROWS, until it reaches the last row or the Updates queued for it go on from where it is,
and then follows the hub, taking from each Update the events past its cursor. It subscribes
*before* each read, so once a read of its reaches the last row, the Updates queued since
start at or before where it is (each began from an earlier read, and the database only gains
rows): nothing falls between its reads and the hub's. Should an Update start past its cursor
all the same, it reads from its cursor again; nothing is ever skipped or sent twice.

Backpressure: each subscriber holds at most QUEUE_UPDATES Updates. One that falls further
behind (a slow client: uvicorn waits for its socket to drain) is dropped from the hub, its
queue freed, and it catches up from its own cursor as a new stream does, losing nothing. So
the Updates queued anywhere are among the hub's last QUEUE_UPDATES.

All database work runs in this module's own small thread pool, so streams can never take
the threads the other routes need; and `max_streams` bounds how many are open at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from sqlalchemy.exc import OperationalError

from service.db import Database, is_transient
from service.queue import events
from service.queue.events import Cursor, Follower, Update
from service.schemas import JobRead

log = logging.getLogger("tapefit.events")

T = TypeVar("T")

# Reads at once: the engine's pool (5 connections, 10 more on demand) keeps the rest for the
# other routes, and on two cores more threads would only queue for the GIL.
READ_THREADS = 2
# Updates a subscriber may have waiting: about 5 s of a job's life at one poll per 0.3 s.
QUEUE_UPDATES = 16
# Full pages kept for streams catching up (about 100 KB each at 500 rows).
PAGE_CACHE = 32
RETRY_AFTER_S = 5


class StreamsFull(RuntimeError):
    """As many event streams are open as the setting allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} event streams are open, the most this server allows "
            f"(TAPEFIT_MAX_STREAMS); retry in a few seconds"
        )


class _Subscriber:
    """One stream's mailbox at its job's hub: a bounded queue of Updates."""

    def __init__(self) -> None:
        self.updates: deque[Update] = deque()
        self.wake = asyncio.Event()
        self.dropped = False  # fell behind: the hub let it go, it must read for itself
        self.failed = False  # the hub stopped on an error

    def offer(self, update: Update) -> bool:
        """Queue `update`; False (and the queue emptied) when it is full."""
        if len(self.updates) >= QUEUE_UPDATES:
            self.updates.clear()
            self.dropped = True
        else:
            self.updates.append(update)
        self.wake.set()
        return not self.dropped

    async def next(self, timeout: float) -> Update | None:
        """The next Update, or None after `timeout` seconds or once dropped or failed."""
        if not self.updates and not (self.dropped or self.failed):
            self.wake.clear()
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self.wake.wait()
            except TimeoutError:
                return None
        return self.updates.popleft() if self.updates else None

    def can_follow(self, cursor: Cursor) -> bool:
        """Whether what is queued goes on from `cursor` (so reading for itself can stop)."""
        return bool(self.updates) and self.updates[0].start <= cursor


class _Hub:
    """One job's poller and its subscribers."""

    def __init__(self, job_id: int, cursor: Cursor) -> None:
        self.job_id = job_id
        self.subscribers: set[_Subscriber] = set()
        self.cursor = cursor  # where it reads from next: the end of its last Update
        self.latest: Update | None = None
        self.task: asyncio.Task[None] | None = None


class EventHubs:
    """The app's event streams: their hubs, their thread pool, and the cap on their number."""

    def __init__(
        self,
        database: Database,
        *,
        max_streams: int,
        poll_interval: float = events.POLL_INTERVAL_S,
        heartbeat_interval: float = events.HEARTBEAT_INTERVAL_S,
        page_rows: int = events.PAGE_ROWS,
    ) -> None:
        self.database = database
        self.max_streams = max_streams
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.page_rows = page_rows
        self.open_streams = 0
        # What was done, for tests and operators: hubs started, their polls, the streams' own
        # reads, the pages they shared instead of reading, and slow subscribers let go.
        self.stats = {"hubs": 0, "polls": 0, "reads": 0, "shared": 0, "drops": 0}
        self._hubs: dict[int, _Hub] = {}
        # Streams catching up on one job read the same pages: each page is read once while
        # they wait for it (a flight), and a full page, which no later write changes, is kept
        # for the streams behind.
        self._flights: dict[tuple[int, Cursor], asyncio.Future[Update]] = {}
        self._pages: OrderedDict[tuple[int, Cursor], Update] = OrderedDict()
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="tapefit-events")

    @property
    def running_hubs(self) -> int:
        """Jobs with a hub polling for their streams now."""
        return len(self._hubs)

    def admit(self) -> None:
        """Count a new stream in; StreamsFull when `max_streams` are open. Pair with `release`."""
        if self.open_streams >= self.max_streams:
            raise StreamsFull(self.max_streams)
        self.open_streams += 1

    def release(self) -> None:
        self.open_streams -= 1

    async def opening(self, *, job_id: int, cursor: Cursor) -> Update:
        """The job as a stream after `cursor` starts from: its hub's latest view when it has
        one (no read at all), else one short read (JobNotFound for an unknown job)."""
        hub = self._hubs.get(job_id)
        if hub is not None and hub.latest is not None:
            return dataclasses.replace(hub.latest, start=cursor, end=cursor, items=(), more=True)
        return await self._run(events.read_job, self.database, job_id=job_id, cursor=cursor)

    async def stream(self, *, job_id: int, first: Update) -> AsyncGenerator[str, None]:
        """The job's events after `first.start`, until it reaches a final state; a comment
        line whenever nothing was sent for a heartbeat interval."""
        yield f"retry: {events.RETRY_MS}\n\n"
        follower = Follower(first.start)
        text, _ = follower.apply(first)  # the state it is in (its history is still to read)
        if text:
            yield text
        # A job that has ended has nothing live to follow: its history, then its end.
        live = not first.job.state.is_final
        subscriber = _Subscriber()
        job, catching_up, last_sent = first.job, True, time.monotonic()
        try:
            while True:
                if catching_up:
                    if live:
                        self._subscribe(job_id, subscriber, job)
                    try:
                        update = await self._read_page(job_id, follower.cursor)
                    except OperationalError as exc:
                        if not is_transient(exc):
                            raise
                        await asyncio.sleep(self.poll_interval)  # a database hiccup: wait
                        continue
                    job = update.job
                else:
                    wait = self.heartbeat_interval - (time.monotonic() - last_sent)
                    update = await subscriber.next(wait)
                    if update is None:
                        if subscriber.failed:
                            return  # logged by the hub; the client reconnects with its id
                        if subscriber.dropped:
                            catching_up = True
                            continue
                        yield ": keep-alive\n\n"
                        last_sent = time.monotonic()
                        continue
                    if update.start > follower.cursor:  # it would skip events: read them
                        catching_up = True
                        continue
                text, final = follower.apply(update)
                if text:
                    yield text
                    last_sent = time.monotonic()
                if final:
                    return
                # Done reading for itself at the end of the rows, or as soon as the hub's
                # Updates go on from where it is (a job that writes fast is never "done").
                if catching_up:
                    catching_up = update.more and not subscriber.can_follow(follower.cursor)
        finally:
            self._unsubscribe(job_id, subscriber)

    async def close(self) -> None:
        """Stop every hub and the thread pool (the app is shutting down)."""
        hubs = list(self._hubs.values())
        for hub in hubs:
            self._stop(hub)
        for hub in hubs:
            if hub.task is not None:
                await asyncio.gather(hub.task, return_exceptions=True)
        self._pages.clear()
        # Wait for the reads under way, so none is left holding a connection of a database
        # that is about to be disposed.
        await asyncio.to_thread(partial(self._pool.shutdown, wait=True, cancel_futures=True))

    async def _run(self, function: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(function, *args, **kwargs))

    async def _read_page(self, job_id: int, cursor: Cursor) -> Update:
        """The page after `cursor`: kept, being read, or read now."""
        key = (job_id, cursor)
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
            self.stats["shared"] += 1
            return page
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._run(events.read_update, self.database,
                                                     job_id=job_id, cursor=cursor,
                                                     limit=self.page_rows))
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
            self.stats["reads"] += 1
        else:
            self.stats["shared"] += 1
        # Shielded: a stream that goes away must not cancel the read the others wait for.
        return await asyncio.shield(flight)

    def _landed(self, key: tuple[int, Cursor], flight: asyncio.Future[Update]) -> None:
        del self._flights[key]
        if flight.cancelled() or flight.exception() is not None:
            return  # raised to the streams that waited for it
        page = flight.result()
        self._note_run(key[0], page.run)
        if page.more:
            self._pages[key] = page
            while len(self._pages) > PAGE_CACHE:
                self._pages.popitem(last=False)

    def _note_run(self, job_id: int, run: int) -> None:
        # A job claimed again (resumed after its worker was lost) rewrites the rows after its
        # checkpoint: the pages kept from an earlier run go.
        for key in [key for key, page in self._pages.items()
                    if key[0] == job_id and page.run != run]:
            del self._pages[key]

    def _subscribe(self, job_id: int, subscriber: _Subscriber, job: JobRead) -> None:
        hub = self._hubs.get(job_id)
        if hub is None:
            # A new hub starts at the last row the subscriber's view of the job counts (the
            # worker commits a row and the job's step count together), not at the start.
            head = Cursor(max(job.progress.step - 1, -1))
            hub = self._hubs[job_id] = _Hub(job_id, head)
            hub.task = asyncio.create_task(self._poll(hub), name=f"tapefit-events-{job_id}")
            self.stats["hubs"] += 1
        subscriber.dropped = False
        hub.subscribers.add(subscriber)

    def _unsubscribe(self, job_id: int, subscriber: _Subscriber) -> None:
        hub = self._hubs.get(job_id)
        if hub is not None:
            hub.subscribers.discard(subscriber)
            if not hub.subscribers:
                self._stop(hub)

    def _stop(self, hub: _Hub) -> None:
        if self._hubs.get(hub.job_id) is hub:
            del self._hubs[hub.job_id]
        if hub.task is not None:
            hub.task.cancel()

    async def _poll(self, hub: _Hub) -> None:
        """The hub's loop: read what is new, hand it to every subscriber, wait, again."""
        try:
            published: tuple[object, ...] | None = None
            while hub.subscribers:
                try:
                    update = await self._run(events.read_update, self.database,
                                             job_id=hub.job_id, cursor=hub.cursor,
                                             limit=self.page_rows)
                except OperationalError as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("job %s: events wait for the database: %s", hub.job_id, exc)
                    await asyncio.sleep(self.poll_interval)
                    continue
                self.stats["polls"] += 1
                self._note_run(hub.job_id, update.run)
                hub.cursor, hub.latest = update.end, update
                job = update.job
                final = job.state.is_final and not update.more
                state = (job.state, job.cancel_requested)
                if update.items or state != published or final:
                    published = state
                    for subscriber in list(hub.subscribers):
                        if not subscriber.offer(update):
                            hub.subscribers.discard(subscriber)
                            self.stats["drops"] += 1
                if final:
                    return
                if not update.more:
                    await asyncio.sleep(self.poll_interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: the event hub stopped", hub.job_id)
            for subscriber in hub.subscribers:
                subscriber.failed = True
                subscriber.wake.set()
        finally:
            if self._hubs.get(hub.job_id) is hub:
                del self._hubs[hub.job_id]
