"""GET /metrics: scraped and parsed with prometheus-client's own parser, after real actions
(jobs submitted, claimed, requeued, handed back, loss rows written, predictions), on SQLite
and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import delete, func, select, update

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.models import Job, Metric, WorkerHeartbeat, utcnow
from service.queue import leases, workers
from service.queue.sweeper import sweep_once
from service.schemas import JobState
from tests.helpers.serving import Trained
from tests.helpers.settings import make_settings

TOKEN = "s3cret-token-for-tests"
QUICK = {"epochs": 1, "dataset": {"train_limit": 100}}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    """Every sample of a scrape, by (name, labels), parsed as Prometheus would."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def no_workers(database: Database) -> Iterator[None]:
    """The PostgreSQL scratch database is shared by the session: no worker rows left over."""
    with database.session(write=True) as session:
        session.execute(delete(WorkerHeartbeat))
    yield
    with database.session(write=True) as session:
        session.execute(delete(WorkerHeartbeat))


def submit(client: TestClient, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        response = client.post("/jobs", json=QUICK)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


@pytest.mark.usefixtures("no_workers")
def test_jobs_queue_and_workers_are_read_from_the_database(
    client: TestClient, database: Database
) -> None:
    before = scrape(client)
    assert value(before, "tapefit_database_up") == 1
    assert value(before, "tapefit_queue_depth") == 0
    assert value(before, "tapefit_queue_oldest_age_seconds") == 0
    assert value(before, "tapefit_workers_alive") == 0

    first, second, third = submit(client, 3)
    with database.session(write=True) as session:
        # The oldest waits 10 minutes; one is running; one is cancelled.
        session.execute(update(Job).where(Job.id == first)
                        .values(created_at=utcnow() - timedelta(minutes=10)))
        session.execute(update(Job).where(Job.id == second).values(state=JobState.running))
        workers.beat(session=session, worker_id="host:1", hostname="host", pid=1,
                     lease_timeout=30)
    assert client.post(f"/jobs/{third}/cancel").status_code == 200

    after = scrape(client)
    assert value(after, "tapefit_jobs", state="queued") == 1
    assert value(after, "tapefit_jobs", state="running") == 1
    assert value(after, "tapefit_jobs", state="cancelled") == 1
    assert value(after, "tapefit_jobs", state="succeeded") == 0  # every state, zeros too
    assert value(after, "tapefit_queue_depth") == 1
    assert 600 <= value(after, "tapefit_queue_oldest_age_seconds") < 3600
    assert value(after, "tapefit_workers_alive") == 1


def test_requeues_lease_expiries_and_loss_rows_are_read_from_the_database(
    client: TestClient, database: Database, settings: Settings
) -> None:
    before = scrape(client)
    lost, stopping = submit(client, 2)

    # A worker writes 7 loss rows, then stops heartbeating: the sweeper requeues its job.
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="gone:1")
    assert lease is not None and lease.job_id == lost
    rows = [{"step": step, "epoch": 0, "batch": step, "loss": 1.0, "accuracy": 0.5,
             "time": 0.1 * step} for step in range(7)]
    with database.session(write=True) as session:
        leases.record_progress(session=session, lease=lease, rows=rows)
    with database.session(write=True) as session:
        session.execute(update(Job).where(Job.id == lost)
                        .values(heartbeat_at=utcnow() - timedelta(hours=1)))
    assert sweep_once(database, settings) == [(lost, JobState.queued)]

    # Another worker is stopping (SIGTERM) and hands its job back.
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="stopping:2")
    assert lease is not None
    with database.session(write=True) as session:
        leases.release_job(session=session, lease=lease)

    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tapefit_lease_expiries_total") == 1
    assert delta("tapefit_requeues_total", reason="lease_expired") == 1
    assert delta("tapefit_requeues_total", reason="handed_back") == 1
    assert value(after, "tapefit_loss_rows") == 7
    assert value(after, "tapefit_jobs", state="queued") == 2
    # Another API process (a second app on the same database) reads the same figures.
    with TestClient(create_app(settings)) as other:
        elsewhere = scrape(other)
    for name in ("tapefit_lease_expiries_total", "tapefit_loss_rows"):
        assert value(elsewhere, name) == value(after, name)

    # The next worker resumes the first job from a checkpoint at step 3: the rows after it go.
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="next:3")
        if lease is not None and lease.job_id != lost:
            lease = leases.claim_job(session=session, worker_id="next:3")
    assert lease is not None and lease.job_id == lost
    with database.session(write=True) as session:
        leases.start_job(session=session, lease=lease, total_steps=10, step=3)
    with database.session() as session:
        stored = session.scalar(select(func.count()).select_from(Metric))
    assert stored == 3
    assert value(scrape(client), "tapefit_loss_rows") == stored


def test_http_requests_are_labelled_by_route_template_never_by_id(client: TestClient) -> None:
    (job_id,) = submit(client, 1)
    for _ in range(3):
        assert client.get(f"/jobs/{job_id}").status_code == 200
    assert client.get("/jobs/987654").status_code == 404
    assert client.get(f"/jobs/{job_id}/metrics").status_code == 200
    assert client.get("/no/such/path/42").status_code == 404
    assert client.delete("/healthz").status_code == 405
    assert client.request("BREW", "/healthz").status_code == 405

    samples = scrape(client)
    requests = {labels: count for (name, labels), count in samples.items()
                if name == "tapefit_http_requests_total"}

    def count(method: str, route: str, status: str) -> float:
        key = frozenset({"method": method, "route": route, "status": status}.items())
        return requests.get(key, 0)

    assert count("GET", "/jobs/{job_id}", "200") == 3
    assert count("GET", "/jobs/{job_id}", "404") == 1
    assert count("GET", "/jobs/{job_id}/metrics", "200") == 1
    assert count("POST", "/jobs", "201") == 1
    assert count("GET", "unmatched", "404") == 1
    assert count("DELETE", "/healthz", "405") == 1
    assert count("other", "/healthz", "405") == 1  # a made-up method is one label
    routes = {dict(labels)["route"] for labels in requests}
    assert not any(str(job_id) in route or "987654" in route for route in routes), routes
    # The latency histogram counts the same requests.
    assert value(samples, "tapefit_http_request_duration_seconds_count",
                 method="GET", route="/jobs/{job_id}") == 4
    # The process's own figures come along.
    assert value(samples, "process_resident_memory_bytes") > 0


def test_metrics_need_the_token_unless_made_public(
    settings: Settings, database: Database
) -> None:
    secured = settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(secured)) as client:
        assert client.get("/metrics").status_code == 401
        # Refused before routing, still counted under the route's template.
        assert client.get("/jobs/5").status_code == 401
        samples = scrape(client, authorization=f"Bearer {TOKEN}")
        assert value(samples, "tapefit_http_requests_total",
                     method="GET", route="/jobs/{job_id}", status="401") == 1
        assert value(samples, "tapefit_http_requests_total",
                     method="GET", route="/metrics", status="401") == 1

    public = secured.model_copy(update={"metrics_public": True})
    with TestClient(create_app(public)) as client:
        assert value(scrape(client), "tapefit_database_up") == 1
        assert client.get("/jobs").status_code == 401  # only /metrics is opened


def test_a_database_that_does_not_answer_still_scrapes(tmp_path) -> None:  # noqa: ANN001
    # A PostgreSQL port where nothing listens; no lifespan, so no sweeper either.
    settings = make_settings(
        tmp_path / "data",
        database_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2",
    )
    client = TestClient(create_app(settings))
    samples = scrape(client)
    assert value(samples, "tapefit_database_up") == 0
    assert not any(name == "tapefit_jobs" for name, _ in samples)
    # The process's own figures are there: this very scrape is in progress.
    assert value(samples, "tapefit_http_requests_in_progress") == 1
    assert value(samples, "process_resident_memory_bytes") > 0


def test_predictions_are_counted_and_timed(trained: Trained) -> None:
    with TestClient(create_app(trained.settings)) as client:
        before = scrape(client)
        images = trained.x_test[:5].reshape(5, -1)
        response = client.post(f"/jobs/{trained.good}/predict",
                               json={"instances": images.tolist()})
        assert response.status_code == 200
        response = client.post(f"/v1/models/{trained.good}:predict",
                               json={"instances": images[:2].reshape(2, 28, 28).tolist()})
        assert response.status_code == 200, response.text
        after = scrape(client)
    assert value(before, "tapefit_predictions_total") == 0
    assert value(after, "tapefit_predictions_total") == 2
    assert value(after, "tapefit_predicted_images_total") == 7
    assert value(after, "tapefit_prediction_duration_seconds_count") == 2
    assert value(after, "tapefit_prediction_duration_seconds_sum") > 0
    assert np.isfinite(value(after, "tapefit_prediction_duration_seconds_sum"))
    assert value(after, "tapefit_http_requests_total", method="POST",
                 route="/jobs/{job_id}/predict", status="200") == 1
