"""The live event stream, GET /jobs/{id}/events, against a real HTTP server in this process.

A stand-in worker writes a job's history with the worker's own service.queue.leases calls, in groups
as the real one does, so the stream is tested on exactly the rows and transactions it polls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.api.app import create_app
from service.cli.client import Event, parse_sse
from service.config import Settings
from service.db import Database
from service.queue import event_hub, events, jobs, leases, sweeper
from service.queue.event_hub import EventHubs
from service.schemas import EpochRead, JobRead, JobSpec, JobState

EPOCHS, BATCHES = 3, 4  # 12 steps; epoch e ends at step 4e + 3
STEPS = EPOCHS * BATCHES


@contextmanager
def live_server(app: FastAPI) -> Iterator[httpx.Client]:
    """`app` under uvicorn on a port the system picks, in a thread; an httpx client of it."""
    # Uvicorn binds the port itself: a socket handed to it would lack TCP_NODELAY, and every
    # keep-alive request would wait out a delayed ACK.
    config = uvicorn.Config(app, port=0, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]  # port 0: the system's pick
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class FakeWorker:
    """Writes a job's history as the worker does: rows in groups, epochs, an end state."""

    def __init__(self, database: Database, job_id: int | None = None) -> None:
        self.database = database
        if job_id is None:
            with database.session(write=True) as session:
                spec = JobSpec(epochs=EPOCHS, batch_size=10)
                job_id = jobs.submit_job(session=session, spec=spec).id
        self.job_id = job_id
        self.lease: leases.Lease | None = None

    def claim(self) -> None:
        with self.database.session(write=True) as session:
            self.lease = leases.claim_job(session=session, worker_id="fake")
            assert self.lease is not None and self.lease.job_id == self.job_id
            leases.start_job(session=session, lease=self.lease, total_steps=STEPS)

    def rows(self, first: int, last: int) -> None:
        """Batches first..last in one write."""
        rows = [
            {"step": s, "epoch": s // BATCHES, "batch": s % BATCHES, "loss": 2.0 / (s + 1),
             "accuracy": 0.5, "time": s * 0.01}
            for s in range(first, last + 1)
        ]
        with self.database.session(write=True) as session:
            leases.record_progress(session=session, lease=self.lease, rows=rows,
                                   steps_per_second=50)

    def epoch(self, epoch: int) -> None:
        summary = EpochRead(epoch=epoch, train_loss=0.5, train_accuracy=0.8, test_loss=0.4,
                            test_accuracy=0.9 + epoch / 100, seconds=1.0)
        with self.database.session(write=True) as session:
            leases.record_epoch(session=session, lease=self.lease, summary=summary)

    def finish(self) -> None:
        with self.database.session(write=True) as session:
            leases.finish_job(session=session, lease=self.lease, test_loss=0.3, test_accuracy=0.93,
                            model=b"tflite")

    def run(
        self,
        *,
        group: int = 3,
        pause: float = 0.0,
        pace: threading.Semaphore | None = None,
        before_finish: threading.Event | None = None,
    ) -> None:
        """The whole job: each epoch's rows in groups of `group`, then its summary. Each group
        waits `pause` seconds, or for `pace` to be released; the end waits for `before_finish`."""
        self.claim()
        for epoch in range(EPOCHS):
            end = (epoch + 1) * BATCHES
            for first in range(epoch * BATCHES, end, group):
                time.sleep(pause)
                if pace is not None:
                    assert pace.acquire(timeout=30)
                self.rows(first, min(first + group, end) - 1)
            self.epoch(epoch)
        if before_finish is not None:
            assert before_finish.wait(timeout=30)
        self.finish()


def read_stream(
    client: httpx.Client,
    job_id: int,
    last_event_id: str | None = None,
    *,
    stop_after: int | None = None,
) -> tuple[list[Event], bool]:
    """The events of one connection, and whether the server ended the stream (False when
    we hung up after `stop_after` batch events)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    seen: list[Event] = []
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse_sse(response.iter_lines()):
            seen.append(event)
            batches = sum(e.type == "batch" for e in seen)
            if stop_after is not None and batches >= stop_after:
                return seen, False
    return seen, True


def history(events_: list[Event]) -> list[tuple[str, int]]:
    """The batch and epoch events as (type, step or epoch number)."""
    return [
        (e.type, e.data["step"] if e.type == "batch" else e.data["epoch"])
        for e in events_
        if e.type in ("batch", "epoch")
    ]


FULL = [
    item
    for epoch in range(EPOCHS)
    for item in [("batch", s) for s in range(epoch * BATCHES, (epoch + 1) * BATCHES)]
    + [("epoch", epoch)]
]


@pytest.fixture
def app(settings: Settings, database: Database) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def server(app: FastAPI) -> Iterator[httpx.Client]:
    with live_server(app) as client:
        yield client


def test_a_finished_job_sends_its_backlog_then_the_final_state_and_ends(
    server: httpx.Client, database: Database
) -> None:
    worker = FakeWorker(database)
    worker.run()
    seen, ended = read_stream(server, worker.job_id)
    assert ended
    assert history(seen) == FULL
    assert [e.type for e in seen].count("state") == 1
    assert seen[-1].type == "state" and seen[-1].data["state"] == "succeeded"
    assert seen[-1].data["test_accuracy"] == 0.93
    # Batch ids are steps; an epoch's id is its last step and "e".
    assert [e.id for e in seen if e.type == "epoch"] == ["3e", "7e", "11e"]
    assert seen[0].data == {"step": 0, "epoch": 0, "batch": 0, "loss": 2.0, "accuracy": 0.5,
                            "time": 0.0}


def test_a_reconnect_after_any_event_misses_nothing_and_repeats_nothing(
    server: httpx.Client, database: Database
) -> None:
    worker = FakeWorker(database)
    worker.run()
    full, _ = read_stream(server, worker.job_id)
    with_ids = [e for e in full if e.type in ("batch", "epoch")]
    for cut in range(len(with_ids)):
        before = with_ids[: cut + 1]
        after, ended = read_stream(server, worker.job_id, before[-1].id)
        assert ended
        assert history(before) + history(after) == FULL, f"resumed after {before[-1].id}"
        assert after[-1].data["state"] == "succeeded"


def test_the_query_parameter_resumes_too(server: httpx.Client, database: Database) -> None:
    worker = FakeWorker(database)
    worker.run()
    response = server.get(f"/jobs/{worker.job_id}/events", params={"last_event_id": "9"})
    assert history(list(parse_sse(response.text.splitlines()))) == FULL[-3:]


def test_live_points_arrive_in_order_across_a_reconnect(
    server: httpx.Client, database: Database
) -> None:
    worker = FakeWorker(database)
    # However slow the first connection, the job cannot end before it has hung up.
    first_done = threading.Event()
    writer = threading.Thread(target=worker.run, kwargs={"group": 2, "pause": 0.15,
                                                         "before_finish": first_done})
    writer.start()
    try:
        first, ended = read_stream(server, worker.job_id, stop_after=5)
        first_done.set()
        assert not ended
        assert first[0].type == "state" and first[0].data["state"] in ("queued", "running")
        last_id = [e.id for e in first if e.id][-1]
        second, ended = read_stream(server, worker.job_id, last_id)
    finally:
        first_done.set()
        writer.join()
    assert ended
    assert history(first) + history(second) == FULL
    assert second[-1].type == "state" and second[-1].data["state"] == "succeeded"
    # The reconnect sends the current state once, then what comes after the id, then the end.
    assert [e.data["state"] for e in second if e.type == "state"][-1] == "succeeded"
    progress = [e.data for e in first + second if e.type == "progress"]
    assert progress and progress[-1]["total_steps"] == STEPS
    assert all(p["samples_per_second"] == 500 for p in progress)


def test_other_requests_stay_fast_while_streams_are_open(
    server: httpx.Client, database: Database
) -> None:
    worker = FakeWorker(database)
    results: list[list[tuple[str, int]]] = []
    all_open = threading.Barrier(7)  # six streams and this test

    def watch() -> None:
        seen: list[Event] = []
        with httpx.Client(base_url=server.base_url, timeout=20) as own:
            with own.stream("GET", f"/jobs/{worker.job_id}/events") as response:
                for event in parse_sse(response.iter_lines()):
                    if not seen:
                        all_open.wait(timeout=20)  # its first event: this stream is open
                    seen.append(event)
        results.append(history(seen))

    watchers = [threading.Thread(target=watch) for _ in range(6)]
    for thread in watchers:
        thread.start()
    all_open.wait(timeout=20)
    # The job writes a group only after each round of other requests is answered, so this
    # is not a timing threshold (the machine is shared): the requests must be answered while
    # all six streams are open and the job is training, not after.
    pace = threading.Semaphore(0)
    writer = threading.Thread(target=worker.run, kwargs={"group": 1, "pace": pace})
    writer.start()
    answered_meanwhile = 0
    try:
        while writer.is_alive():
            assert server.get(f"/jobs/{worker.job_id}").status_code == 200
            assert server.get("/jobs").status_code == 200
            if writer.is_alive() and all(thread.is_alive() for thread in watchers):
                answered_meanwhile += 1
            pace.release()
            time.sleep(0.05)
    finally:
        for _ in range(STEPS):
            pace.release()
        writer.join()
        for thread in watchers:
            thread.join(timeout=20)
    assert results == [FULL] * 6
    assert answered_meanwhile >= 5, f"only {answered_meanwhile} answered while streams were open"


def test_streams_hold_no_connection_between_polls(
    server: httpx.Client, database: Database, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting stream keeps no transaction (nor pooled connection) open: it reads in short
    sessions. Sampled on the API's own engine, between reads, while four streams wait."""
    worker = FakeWorker(database)
    app_pool = app.state.database.engine.pool
    reading, reads = threading.Lock(), [0]
    original_load = events.load

    def counted_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with reading:
            reads[0] += 1
            return original_load(*args, **kwargs)

    monkeypatch.setattr(events, "load", counted_load)
    original_sweep = sweeper.sweep_once

    def locked_sweep(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with reading:  # the API's own sweeper uses a connection too, now and then
            return original_sweep(*args, **kwargs)

    monkeypatch.setattr(sweeper, "sweep_once", locked_sweep)
    stop = threading.Event()
    opened = threading.Barrier(5)

    def watch() -> None:
        with httpx.Client(base_url=server.base_url, timeout=20) as own:
            with own.stream("GET", f"/jobs/{worker.job_id}/events") as response:
                lines = response.iter_lines()
                next(lines)  # the stream is open
                opened.wait()
                for _ in lines:
                    if stop.is_set():
                        return

    watchers = [threading.Thread(target=watch) for _ in range(4)]
    for thread in watchers:
        thread.start()
    opened.wait()
    samples, reads_at_start = [], reads[0]
    for _ in range(40):
        with reading:  # no read in progress: nothing may be checked out
            samples.append(app_pool.checkedout())
        time.sleep(0.02)
    polls = reads[0] - reads_at_start
    stop.set()
    worker.claim()  # wakes the streams with a state change, so they return
    for thread in watchers:
        thread.join(timeout=10)
    assert samples == [0] * 40
    assert polls > 0  # the streams kept polling while they were sampled


def test_a_job_cancelled_while_queued_ends_the_stream(
    server: httpx.Client, database: Database
) -> None:
    worker = FakeWorker(database)
    with database.session(write=True) as session:
        jobs.cancel_job(session=session, job_id=worker.job_id)
    seen, ended = read_stream(server, worker.job_id)
    assert ended
    assert [(e.type, e.data["state"]) for e in seen] == [("state", "cancelled")]


def test_an_unknown_job_is_404_and_a_bad_event_id_is_422(
    server: httpx.Client, database: Database
) -> None:
    assert server.get("/jobs/999/events").status_code == 404
    assert server.get("/jobs/abc/events").status_code == 404
    worker = FakeWorker(database)
    response = server.get(f"/jobs/{worker.job_id}/events", headers={"Last-Event-ID": "x7"})
    assert response.status_code == 422
    assert response.json()["message"].startswith("header.last_event_id: 'x7' is not an event id")
    response = server.get(f"/jobs/{worker.job_id}/events", params={"last_event_id": "-3"})
    assert response.status_code == 422


def test_an_id_past_any_step_sends_the_state_alone(
    server: httpx.Client, database: Database
) -> None:
    # Steps are 32-bit in the database; PostgreSQL refuses a larger bound in the query.
    worker = FakeWorker(database)
    worker.run()
    seen, ended = read_stream(server, worker.job_id, "99999999999")
    assert ended and [(e.type, e.data["state"]) for e in seen] == [("state", "succeeded")]


@pytest.mark.parametrize(
    ("text", "cursor"),
    [(None, events.Cursor()), ("", events.Cursor()), ("-1", events.Cursor()),
     ("0", events.Cursor(0)), ("41", events.Cursor(41)), ("41e", events.Cursor(41, True)),
     (" 7 ", events.Cursor(7)), ("99999999999e", events.Cursor(2**31 - 1, True))],
)
def test_cursor_parsing(text: str | None, cursor: events.Cursor) -> None:
    assert events.parse_cursor(text) == cursor
    if text and text.strip() not in ("-1",):
        assert events.parse_cursor(cursor.id) == cursor


@pytest.mark.parametrize("text", ["e", "1.5", "-2", "41ee", "1" * 19, "abc"])
def test_bad_cursors(text: str) -> None:
    with pytest.raises(ValueError, match="not an event id"):
        events.parse_cursor(text)


def test_heartbeats_while_nothing_happens(database: Database) -> None:
    worker = FakeWorker(database)

    async def collect() -> list[str]:
        hubs = EventHubs(database, max_streams=10, poll_interval=0.02, heartbeat_interval=0.1)
        first = await hubs.opening(job_id=worker.job_id, cursor=events.Cursor())
        stream = hubs.stream(job_id=worker.job_id, first=first)
        chunks = []
        deadline = time.monotonic() + 0.5
        async for chunk in stream:
            chunks.append(chunk)
            if time.monotonic() > deadline:
                break
        await stream.aclose()
        await hubs.close()
        return chunks

    chunks = asyncio.run(collect())
    assert chunks[0] == "retry: 2000\n\n"
    assert chunks[1].startswith("event: state\n")
    assert chunks[2:] and set(chunks[2:]) == {": keep-alive\n\n"}


def test_a_long_backlog_goes_out_in_pages(database: Database) -> None:
    worker = FakeWorker(database)
    worker.run()
    snapshot = events.load(database, job_id=worker.job_id, cursor=events.Cursor(), limit=5)
    assert [b.step for b in snapshot.batches] == [0, 1, 2, 3, 4] and snapshot.more
    assert [e.epoch for _, e in snapshot.epochs] == [0]  # epoch 1 ends after this page

    async def collect() -> tuple[str, dict[str, int]]:
        hubs = EventHubs(database, max_streams=10, page_rows=5, poll_interval=600)
        first = await hubs.opening(job_id=worker.job_id, cursor=events.Cursor())
        text = "".join([chunk async for chunk in hubs.stream(job_id=worker.job_id, first=first)])
        await hubs.close()
        return text, hubs.stats

    # Any wait of a poll interval between pages would blow far past this.
    text, stats = asyncio.run(asyncio.wait_for(collect(), timeout=30))
    assert history(list(parse_sse(text.splitlines(keepends=True)))) == FULL
    # Pages of 5 rows: 12 rows are 3 reads; a finished job has no live part, so no hub.
    assert stats["reads"] == 3 and stats["hubs"] == 0


def watch_in_thread(
    base_url: httpx.URL, job_id: int, seen: list[Event], last_event_id: str = ""
) -> threading.Thread:
    """A thread reading one stream of `job_id` into `seen` until the server ends it."""

    def watch() -> None:
        headers = {"Last-Event-ID": last_event_id}
        with httpx.Client(base_url=base_url, timeout=30) as own:
            with own.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
                assert response.status_code == 200
                for event in parse_sse(response.iter_lines()):
                    seen.append(event)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Pace a test by what the streams received (the deadline only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_many_streams_share_one_poller_per_job(
    server: httpx.Client, database: Database, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve streams follow a running job, two more join it half-way with their own
    Last-Event-ID: its rows are read by one poller, not by each stream, every stream gets
    every event after its id once, and all reads run in the streams' own pool."""
    worker = FakeWorker(database)
    worker.claim()
    hubs: EventHubs = app.state.event_hubs
    threads: list[str] = []
    original_load = events.load

    def counted_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        threads.append(threading.current_thread().name)
        return original_load(*args, **kwargs)

    monkeypatch.setattr(events, "load", counted_load)
    streams: list[list[Event]] = [[] for _ in range(12)]
    late: dict[str, list[Event]] = {"3": [], "5": []}
    watchers = [watch_in_thread(server.base_url, worker.job_id, seen) for seen in streams]

    def every_stream_has(kind: str, number: int) -> bool:
        # A stream that resumed after step 5 never gets step 5: it has it already.
        return all(
            any(e.type == kind and e.data["epoch" if kind == "epoch" else "step"] == number
                for e in seen)
            or (seen is late["5"] and kind == "batch" and number <= 5)
            for seen in streams
        )

    try:
        wait_until(lambda: all(seen and seen[0].type == "state" for seen in streams),
                   "every stream got its first event")
        # The job writes its next group only once every stream has the one before.
        for epoch in range(EPOCHS):
            for first in range(epoch * BATCHES, (epoch + 1) * BATCHES, 2):
                worker.rows(first, first + 1)
                wait_until(lambda last=first + 1: every_stream_has("batch", last),
                           f"every stream got step {first + 1}")
            worker.epoch(epoch)
            wait_until(lambda e=epoch: every_stream_has("epoch", e), f"epoch {epoch}")
            if epoch == 0:  # late streams: one lacks epoch 0 ("3", not "3e"), one has step 5
                watchers += [watch_in_thread(server.base_url, worker.job_id, seen, last_id)
                             for last_id, seen in late.items()]
                wait_until(lambda: all(late.values()), "the late streams are open")
                streams += late.values()
        reads_while_live = hubs.stats["reads"]
        worker.finish()
    finally:
        for thread in watchers:
            thread.join(timeout=30)
    assert [history(seen) for seen in streams] == [FULL] * 12 + [FULL[4:], FULL[7:]]
    assert history(late["3"])[0] == ("epoch", 0)
    assert all(seen[-1].data["state"] == "succeeded" for seen in streams)
    # One hub for the job, polling for all fourteen. Each stream read its backlog once
    # (twice if the hub's first poll raced that read), then only followed the hub.
    assert hubs.stats["hubs"] == 1
    assert hubs.stats["reads"] <= 2 * 14 and hubs.stats["reads"] == reads_while_live
    assert len(threads) == hubs.stats["polls"] + hubs.stats["reads"]
    assert set(threads) and all(name.startswith("tapefit-events") for name in threads)
    wait_until(lambda: hubs.running_hubs == 0 and hubs.open_streams == 0,
               "the hub stopped and every slot was freed")


def test_a_slow_stream_falls_back_to_reading_and_loses_nothing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that stops reading is let go by the hub once its queue is full (so the hub
    holds nothing for it), and then reads from its own cursor: every event still comes once."""
    monkeypatch.setattr(event_hub, "QUEUE_UPDATES", 2)
    worker = FakeWorker(database)
    worker.claim()

    async def scenario() -> tuple[str, dict[str, int], int]:
        hubs = EventHubs(database, max_streams=10, poll_interval=0.01)
        fast, slow = [
            hubs.stream(job_id=worker.job_id,
                        first=await hubs.opening(job_id=worker.job_id, cursor=events.Cursor()))
            for _ in range(2)
        ]
        fast_text = ""

        async def fast_reaches(marker: str) -> None:
            nonlocal fast_text
            while marker not in fast_text:
                fast_text += await anext(fast)

        slow_text = await anext(slow) + await anext(slow)  # retry:, then the state
        # Its next chunk: it catches up, subscribes, and gets the first live group.
        slow_next = asyncio.create_task(anext(slow))
        await fast_reaches("event: state")
        for epoch in range(EPOCHS):  # each group reaches the hub, then the fast stream
            for first in range(epoch * BATCHES, (epoch + 1) * BATCHES, 2):
                await asyncio.to_thread(worker.rows, first, first + 1)
                await fast_reaches(f"id: {first + 1}\n")
                if first == 0:
                    slow_text += await slow_next  # then it stops reading for a while
            await asyncio.to_thread(worker.epoch, epoch)
            await fast_reaches(f"id: {(epoch + 1) * BATCHES - 1}e\n")
        drops = hubs.stats["drops"]
        await asyncio.to_thread(worker.finish)
        slow_text += "".join([chunk async for chunk in slow])
        fast_text += "".join([chunk async for chunk in fast])
        await hubs.close()
        return slow_text, hubs.stats, drops

    slow_text, stats, drops = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert drops == 1  # the slow one, once: its queue of 2 could not take the third group
    slow = list(parse_sse(slow_text.splitlines(keepends=True)))
    assert history(slow) == FULL
    assert slow[-1].type == "state" and slow[-1].data["state"] == "succeeded"
    assert stats["hubs"] == 1


def test_past_the_stream_limit_is_503_naming_the_setting(
    settings: Settings, database: Database
) -> None:
    app = create_app(settings.model_copy(update={"max_streams": 2}))
    hubs: EventHubs = app.state.event_hubs
    worker = FakeWorker(database)
    with live_server(app) as server:
        kept: list[Event] = []
        watcher = watch_in_thread(server.base_url, worker.job_id, kept)
        with server.stream("GET", f"/jobs/{worker.job_id}/events") as leaving:
            lines = leaving.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            wait_until(lambda: bool(kept), "the other stream is open")
            response = server.get(f"/jobs/{worker.job_id}/events")
            assert response.status_code == 503
            assert response.headers["Retry-After"].isdigit()
            detail = response.json()["detail"]
            assert "2 event streams are open" in detail and "TAPEFIT_MAX_STREAMS" in detail
        # A client that hangs up frees its slot: the next stream is let in.
        wait_until(lambda: hubs.open_streams == 1, "the slot of the client that left is free")
        assert server.get("/jobs/999/events").status_code == 404
        assert hubs.open_streams == 1  # a refused stream holds no slot
        with server.stream("GET", f"/jobs/{worker.job_id}/events") as response:
            assert response.status_code == 200
        # A job that ends frees its streams' slots, and its hub stops.
        worker.claim()
        worker.finish()
        watcher.join(timeout=30)
        assert kept[-1].data["state"] == "succeeded"
        wait_until(lambda: hubs.open_streams == 0 and hubs.running_hubs == 0,
                   "every slot is free and no hub runs")


def test_streams_catching_up_together_read_each_full_page_once(database: Database) -> None:
    """Ten streams read a finished job's backlog at once, in pages of 5 of its 12 rows: the
    two full pages are read once for all of them, only the last (partial) page per stream."""
    worker = FakeWorker(database)
    worker.run()

    async def collect() -> tuple[list[str], dict[str, int]]:
        hubs = EventHubs(database, max_streams=10, page_rows=5)

        async def one() -> str:
            first = await hubs.opening(job_id=worker.job_id, cursor=events.Cursor())
            return "".join([chunk async for chunk in hubs.stream(job_id=worker.job_id,
                                                                 first=first)])

        texts = await asyncio.gather(*(one() for _ in range(10)))
        await hubs.close()
        return texts, hubs.stats

    texts, stats = asyncio.run(asyncio.wait_for(collect(), timeout=30))
    for text in texts:
        assert history(list(parse_sse(text.splitlines(keepends=True)))) == FULL
    assert stats["reads"] <= 2 + 10  # not 3 pages x 10 streams
    assert stats["reads"] + stats["shared"] == 3 * 10


def test_a_follower_takes_only_what_is_past_its_cursor() -> None:
    """An Update read from an earlier cursor than a client's (the hub's, or its own older
    read) gives it the events past its cursor only, and an older view of the job than one it
    has sent never moves its state back."""
    job = JobRead.model_validate(
        {"id": 1, "state": "running", "spec": JobSpec(epochs=EPOCHS).model_dump(),
         "created_at": "2024-01-01T00:00:00Z", "started_at": None, "finished_at": None,
         "loss": None, "test_accuracy": None, "error": None,
         "progress": {"epoch": 0, "epochs": EPOCHS, "step": 6, "total_steps": STEPS,
                      "fraction": 0.5}, "cancel_requested": False}
    )
    queued = job.model_copy(update={"state": JobState.queued})

    def update(start: events.Cursor, steps: range, view: JobRead, read_at: float) -> events.Update:
        items = [(events.Cursor(s), f"batch {s}\n") for s in steps]
        if 3 in steps:  # epoch 0 ends at step 3
            items.insert(items.index((events.Cursor(3), "batch 3\n")) + 1,
                         (events.Cursor(3, True), "epoch 0\n"))
        end = items[-1][0] if items else start
        return events.Update(start=start, end=end, job=view, items=tuple(items), more=False,
                             read_at=read_at, run=1)

    follower = events.Follower(events.Cursor(3))  # has batch 3, lacks epoch 0
    first = update(events.Cursor(1), range(2, 6), job, read_at=2.0)
    text, final = follower.apply(first)
    assert not final
    assert text == (first.state_event + "epoch 0\nbatch 4\nbatch 5\n" + first.progress_event)
    assert follower.cursor == events.Cursor(5)
    # An older read that shows the job queued: its rows past the cursor count, its state not.
    text, _ = follower.apply(update(events.Cursor(5), range(6, 7), queued, read_at=1.0))
    assert text == "batch 6\n"
    # Nothing past the cursor, nothing new: nothing to send.
    assert follower.apply(update(events.Cursor(2), range(3, 6), job, read_at=3.0)) == ("", False)
    done = job.model_copy(update={"state": JobState.succeeded})
    text, final = follower.apply(update(events.Cursor(6), range(7, 8), done, read_at=0.5))
    assert final and text.startswith("batch 7\n") and '"state":"succeeded"' in text


@pytest.mark.parametrize("cursor", ["١", "١e", "４２", "٤٢"])
def test_event_ids_are_ascii_digits(cursor: str) -> None:
    with pytest.raises(ValueError):
        events.parse_cursor(cursor)
