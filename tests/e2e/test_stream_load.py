"""Fifty event streams on a job a real `tapefit worker` is training, against the API under
uvicorn in this process (so its hub counters and its engine's statements can be read).

The full figure (200 streams for 12 s on the default job, GET /jobs meanwhile, the API's
memory) is the benchmark's: benchmarks/streams.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event

from service.api.app import create_app
from service.cli.client import Event, parse_sse
from service.queue import jobs
from service.queue.event_hub import EventHubs
from tests.helpers.cluster import Cluster
from tests.service.test_events import live_server

STREAMS = 50
PER_EPOCH = 200  # 2,000 images in batches of 10
# Long enough to outlast the test by far: it is cancelled once the streams have what they need.
SPEC = {"epochs": 100, "batch_size": 10,
        "dataset": {"train_limit": 2000, "test_limit": 100},
        "model": {"layers": [{"units": 32, "activation": "relu"},
                             {"units": 10, "activation": "softmax"}]}}


class Readers:
    """`count` streams of one job read at once by an asyncio client in a thread of its own."""

    def __init__(self, url: str, job_id: int, count: int) -> None:
        self.url, self.job_id = url, job_id
        self.lines: list[list[str]] = [[] for _ in range(count)]
        self.latest = [-1] * count  # the last batch step each stream received
        self.statuses: list[int | None] = [None] * count
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._read_all()))
        self.thread.start()

    async def _read_all(self) -> None:
        limits = httpx.Limits(max_connections=len(self.lines))
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits) as client:
            await asyncio.gather(*(self._read(client, index) for index in range(len(self.lines))))

    async def _read(self, client: httpx.AsyncClient, index: int) -> None:
        try:
            async with client.stream("GET", f"/jobs/{self.job_id}/events") as response:
                self.statuses[index] = response.status_code
                async for line in response.aiter_lines():
                    self.lines[index].append(line)
                    if line.startswith("id: ") and not line.endswith("e"):
                        self.latest[index] = int(line[4:])
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.errors.append(exc)

    def events(self, index: int) -> list[Event]:
        return list(parse_sse(self.lines[index]))

    def first_events(self) -> list[str | None]:
        return [next((line[7:] for line in lines if line.startswith("event: ")), None)
                for lines in self.lines]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.close()


def test_fifty_streams_on_a_training_job_share_one_poller(cluster: Cluster) -> None:
    app = create_app(cluster.settings)
    hubs: EventHubs = app.state.event_hubs
    statements = [0]  # the API's reads of the metrics table

    @event.listens_for(app.state.database.engine, "before_cursor_execute")
    def count(_conn, _cursor, statement: str, *_args: object) -> None:  # noqa: ANN001
        if "FROM metrics" in statement:
            statements[0] += 1

    job_id = cluster.submit(SPEC)
    cluster.start_worker()
    # A backlog of several pages before the streams open, from step 0.
    cluster.wait(lambda: cluster.job(job_id).steps_done >= 5 * PER_EPOCH, 90, "five epochs")
    with live_server(app) as server:
        readers = Readers(str(server.base_url), job_id, STREAMS)
        try:
            cluster.wait(lambda: all(readers.first_events()), 60, "every stream's first event")
            opened = cluster.job(job_id).steps_done
            cluster.wait(lambda: min(readers.latest) >= opened - 1, 60, "every stream caught up")
            # Every stream has read what was written before the last one opened: from here
            # on they all follow the job live. The rows after `mark` are written after this
            # count, so some read after it must bring them.
            live = (dict(hubs.stats), statements[0])
            mark = cluster.job(job_id).steps_done
            cluster.wait(lambda: min(readers.latest) >= mark + 2 * PER_EPOCH, 60,
                         "two more epochs on every stream")
            after = (dict(hubs.stats), statements[0])
            with cluster.database.session(write=True) as session:
                jobs.cancel_job(session=session, job_id=job_id)
            readers.thread.join(timeout=60)
            # The streams ended with the job: their slots are free and its hub is gone.
            cluster.wait(lambda: hubs.open_streams == 0 and hubs.running_hubs == 0, 10,
                         "the streams' slots and the hub to go")
        finally:
            readers.thread.join(timeout=60)
    assert not readers.errors, readers.errors[:3]
    assert readers.statuses == [200] * STREAMS
    assert readers.first_events() == ["state"] * STREAMS
    final = cluster.wait_final(job_id)
    assert final.state == "cancelled"
    steps = cluster.steps(job_id)
    for index in range(STREAMS):
        seen = readers.events(index)
        # Every row the job wrote, once and in order; each epoch once, after its last batch.
        assert [e.data["step"] for e in seen if e.type == "batch"] == steps, f"stream {index}"
        epochs = [e.id for e in seen if e.type == "epoch"]
        assert epochs == [f"{(e + 1) * PER_EPOCH - 1}e" for e in range(len(epochs))]
        assert len(epochs) >= 7
        assert seen[-1].type == "state" and seen[-1].data["state"] == "cancelled"
    # One poller for the job. While all fifty followed it, the API read the metrics table
    # once per poll, plus once for any stream that fell behind and read for itself: bounded
    # by the job, not by the streams (fifty streams polling each would read fifty times).
    (stats_live, statements_live), (stats_after, statements_after) = live, after
    polls = stats_after["polls"] - stats_live["polls"]
    reads = stats_after["reads"] - stats_live["reads"]
    drops = stats_after["drops"] - stats_live["drops"]
    assert hubs.stats["hubs"] == 1
    assert polls > 0 and reads <= 2 * drops
    # (±1: a poll in flight as a snapshot is taken is counted on one side of it only.)
    assert abs((statements_after - statements_live) - (polls + reads)) <= 1
    # Before that, each stream read its backlog itself, in pages of 500 rows.
    assert stats_live["reads"] <= STREAMS * (opened // 500 + 3)
