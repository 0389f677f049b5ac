"""The API's Prometheus metrics, served at GET /metrics. Two kinds:

- **From the database, read at scrape time** (`DatabaseCollector`): jobs by state, the queue's
  depth and the age of its oldest job, live workers, lease expiries, requeues and the loss
  rows stored. Every API process answers the same figures, whichever process (API or worker,
  on any machine) caused them: the counters are rows of the `counters` table, raised in the
  same transaction as the change they count (service/queue/counters.py), and the loss rows
  are each job's `steps_done`, which the flush that writes them sets.
- **Per process** (`ServiceMetrics`): HTTP requests and their latency, predictions and theirs,
  and the process's own CPU, memory and file descriptors. Each API process counts what it
  served; Prometheus sums them over the processes it scrapes.

One registry per app (not prometheus_client's global one), so every app, in a test or a
process, has its own counters and one collector of its own database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from service.db import Database
from service.models import Job, utcnow
from service.queue import counters, workers
from service.schemas import JobState
from service.serving.catalog import Catalog, ModelRef

log = logging.getLogger("tapefit.metrics")

# No `_created` series beside every counter and histogram: a timestamp per series that
# Prometheus does not need, and as many series again to store.
disable_created_metrics()

# Seconds: an API answer is milliseconds, a model upload or a cold model load seconds.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# One LiteRT call on a batch of digits: tens of microseconds to a fraction of a second.
PREDICTION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1,
)


class ServiceMetrics:
    """The per-process instruments and the registry /metrics renders."""

    def __init__(self, database: Database) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "tapefit_http_requests", "HTTP requests answered by this API process, by method, "
            "route template and status.", ["method", "route", "status"], registry=self.registry,
        )
        self.http_duration = Histogram(
            "tapefit_http_request_duration_seconds", "Seconds from a request's arrival to its "
            "response's headers (an event stream counts until its first byte), by method and "
            "route template; this process.", ["method", "route"], buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.http_in_progress = Gauge(
            "tapefit_http_requests_in_progress", "Requests this API process is serving now, "
            "open event streams included.", registry=self.registry,
        )
        self.predictions = Counter(
            "tapefit_predictions", "Model calls (one per predict request, any protocol) by "
            "this API process.", registry=self.registry,
        )
        self.predicted_images = Counter(
            "tapefit_predicted_images", "Images read by those calls.", registry=self.registry,
        )
        self.prediction_duration = Histogram(
            "tapefit_prediction_duration_seconds", "Seconds one model call takes (the LiteRT "
            "inference, the model cached), this process.", buckets=PREDICTION_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(DatabaseCollector(database))

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition and its content type, in the format the scraper asked for
        (Prometheus' text format, or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class ObservedCatalog(Catalog):
    """The catalog, counting and timing every model call for /metrics."""

    def __init__(self, *, metrics: ServiceMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics

    def predict(self, ref: ModelRef, images: np.ndarray, *, wait: bool = True) -> np.ndarray:
        started = time.perf_counter()
        probabilities = super().predict(ref, images, wait=wait)
        self._metrics.prediction_duration.observe(time.perf_counter() - started)
        self._metrics.predictions.inc()
        self._metrics.predicted_images.inc(len(images))
        return probabilities


class DatabaseCollector:
    """The figures the database holds, read at each scrape in one short read session of four
    queries: jobs counted by state with their loss rows (one pass over the jobs table, not
    the rows), the oldest queued job (the queued rows only), the live workers, and the
    counters (a few rows). When the database does not answer, `tapefit_database_up` is 0 and
    the rest is left out: the scrape still succeeds with the per-process figures."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def describe(self) -> Iterable[Metric]:
        return []  # no query at registration; the names are checked by the tests

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("tapefit_database_up",
                               "1 when the database answered this scrape, else 0.")
        try:
            with self.database.session() as session:
                by_state = {state: (count, rows) for state, count, rows in session.execute(
                    select(Job.state, func.count(), func.coalesce(func.sum(Job.steps_done), 0))
                    .group_by(Job.state)
                )}
                oldest = session.scalar(
                    select(func.min(Job.created_at)).where(Job.state == JobState.queued)
                )
                alive = workers.count_alive(session=session)
                totals = counters.read_all(session=session)
        except SQLAlchemyError as exc:
            log.warning("metrics: the database does not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _job_families(by_state, oldest)
        yield GaugeMetricFamily("tapefit_workers_alive", "Workers whose last heartbeat is "
                                "within their lease timeout (on any machine).", value=alive)
        yield from _counter_families(totals)


def _job_families(by_state: dict[str, tuple[int, int]], oldest: Any) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("tapefit_jobs", "Jobs in the database, by state.",
                             labels=["state"])
    for state in JobState:
        jobs.add_metric([state.value], by_state.get(state.value, (0, 0))[0])
    yield jobs
    # A job's rows are its steps 0 .. steps_done - 1, exactly (a resumed job rewinds both).
    yield GaugeMetricFamily(
        "tapefit_loss_rows", "Per-batch loss rows stored, over all jobs: it grows as workers "
        "write them and falls when jobs are deleted.",
        value=sum(int(rows) for _, rows in by_state.values()),
    )
    queued = by_state.get(JobState.queued.value, (0, 0))[0]
    yield GaugeMetricFamily("tapefit_queue_depth", "Jobs waiting for a worker.", value=queued)
    # SQLite hands back naive datetimes where no ORM type converts them (an aggregate).
    age = 0.0
    if oldest is not None:
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=utcnow().tzinfo)
        age = max(0.0, (utcnow() - oldest).total_seconds())
    yield GaugeMetricFamily(
        "tapefit_queue_oldest_age_seconds", "Seconds since the oldest queued job was submitted "
        "(0 when none waits).", value=age,
    )


def _counter_families(totals: dict[str, int]) -> Iterator[Metric]:
    expired = (totals.get(counters.LEASE_EXPIRED_REQUEUED, 0)
               + totals.get(counters.LEASE_EXPIRED_FAILED, 0))
    yield CounterMetricFamily(
        "tapefit_lease_expiries", "Running jobs taken back from a worker that stopped "
        "heartbeating (requeued, or failed when out of attempts).", value=expired,
    )
    requeues = CounterMetricFamily(
        "tapefit_requeues", "Running jobs put back in the queue: after a lease expiry, or "
        "handed back by a worker that was stopping (SIGTERM) or lost its database.",
        labels=["reason"],
    )
    requeues.add_metric(["lease_expired"], totals.get(counters.LEASE_EXPIRED_REQUEUED, 0))
    requeues.add_metric(["handed_back"], totals.get(counters.HANDED_BACK, 0))
    yield requeues
