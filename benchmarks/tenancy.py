"""What keys and fair claiming cost: a claim and the queue positions with a long queue of
many owners, and a request authenticated by a key against the admin token.

    tapefit bench tenancy [--queued 3000] [--owners 50] [--url URL]

A claim is measured inside its own write transaction, as a worker makes it (on SQLite that
is the time the write lock is held); the queue stays long because each claimed job is put
back. Requests go in-process (FastAPI's TestClient): the difference between the two is the
key's lookup, one indexed read in a worker thread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import insert, update

from benchmarks.queue import scratch_database
from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.models import Job, utcnow
from service.queue import leases
from service.schemas import JobSpec, JobState
from service.tenancy import keys
from service.tenancy.identity import Scope

ADMIN_TOKEN = "a-token-for-the-tenancy-benchmark"


def _percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def fill(database: Database, *, queued: int, owners: int) -> list[int]:
    """`owners` keys (every other one with max_running 2) and `queued` jobs among them."""
    with database.session(write=True) as session:
        ids = []
        for n in range(owners):
            key, _ = keys.create_key(session=session, name=f"user {n}", scopes=[Scope.train],
                                     max_running=2 if n % 2 else None)
            ids.append(key.id)
        spec = JobSpec().model_dump(mode="json")
        session.execute(insert(Job), [
            {"state": JobState.queued, "spec": spec, "created_at": utcnow(),
             "owner": ids[n % owners], "priority": n % 3} for n in range(queued)
        ])
    return ids


def claims(database: Database, rounds: int = 200) -> list[float]:
    """Seconds per claim; each claimed job goes back to the queue after it is timed."""
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        with database.session(write=True) as session:
            lease = leases.claim_job(session=session, worker_id="bench")
        seconds.append(time.perf_counter() - started)
        if lease is None:
            break
        with database.session(write=True) as session:
            session.execute(update(Job).where(Job.id == lease.job_id)
                            .values(state=JobState.queued, worker_id=None))
    return seconds


def positions(database: Database, rounds: int = 20) -> list[float]:
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        with database.session() as session:
            leases.claim_order(session=session)
        seconds.append(time.perf_counter() - started)
    return seconds


def requests(url: str, rounds: int = 500) -> dict[str, float]:
    """p50 seconds of GET /jobs/{id} (a finished job) with the admin token and with a key."""
    with tempfile.TemporaryDirectory(prefix="tapefit-bench-tenancy-") as folder:
        settings = Settings(data_dir=folder, database_url=url, api_token=SecretStr(ADMIN_TOKEN))
        return _requests(settings, rounds)


def _requests(settings: Settings, rounds: int) -> dict[str, float]:
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        token = client.post("/keys", json={"name": "bench"}, headers=admin).json()["token"]
        key = {"Authorization": f"Bearer {token}"}
        job_id = client.post("/jobs", json={}, headers=key).json()["id"]
        client.post(f"/jobs/{job_id}/cancel", headers=key)
        results: dict[str, list[float]] = {"admin token": [], "API key": []}
        for _ in range(rounds):  # interleaved, so drift hits both alike
            for name, headers in (("admin token", admin), ("API key", key)):
                started = time.perf_counter()
                assert client.get(f"/jobs/{job_id}", headers=headers).status_code == 200
                results[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tapefit bench tenancy", description=__doc__)
    parser.add_argument("--queued", type=int, default=3000)
    parser.add_argument("--owners", type=int, default=50)
    parser.add_argument("--url", help="a database of the kind to measure (a scratch one of "
                        "its kind is used); default TAPEFIT_DATABASE_URL or SQLite")
    args = parser.parse_args(argv)
    url = args.url or Settings().sqlalchemy_url
    with scratch_database(url) as scratch:
        database = Database(scratch)
        fill(database, queued=args.queued, owners=args.owners)
        claim = claims(database)
        order = positions(database)
        database.dispose()
    with scratch_database(url) as scratch:
        timed = requests(scratch)
    kind = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    print(f"| figure ({kind}, {args.queued:,} queued jobs of {args.owners} keys) | measured |")
    print("|---|---|")
    print(f"| a claim (fair order, max_running), p50 / p99 | {1000 * _percentile(claim, 0.5):.1f}"
          f" / {1000 * _percentile(claim, 0.99):.1f} ms |")
    print(f"| every queued job's position, p50 | {1000 * statistics.median(order):.1f} ms |")
    print(f"| GET /jobs/{{id}} in process, admin token / API key, p50 | "
          f"{1000 * timed['admin token']:.2f} / {1000 * timed['API key']:.2f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
