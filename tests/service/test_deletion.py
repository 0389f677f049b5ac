"""Deleting a finished job takes everything it owns and every route of it answers 404;
retention deletes old ones; SQLite gives the space back and keeps its WAL small."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, insert, select, update

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.migrate import upgrade
from service.models import Artifact, Checkpoint, EpochSummary, Job, Metric, utcnow
from service.queue import jobs, leases, sweeper
from service.schemas import JobSpec, JobState
from tests.helpers.processes import TAPEFIT
from tests.helpers.settings import make_settings
from tests.helpers.tenancy import ADMIN, make_key, run_to_success, secured_client, sha256

PIXELS = {"instances": [[0.0] * 784]}
EVERY_ROUTE = [
    ("GET", "/jobs/{}"), ("GET", "/jobs/{}/metrics"), ("GET", "/jobs/{}/metrics?max_points=9"),
    ("GET", "/jobs/{}/epochs"), ("GET", "/jobs/{}/events"), ("POST", "/jobs/{}/cancel"),
    ("DELETE", "/jobs/{}"), ("GET", "/jobs/{}/model"), ("POST", "/jobs/{}/predict"),
    ("GET", "/v1/models/{}"), ("GET", "/v1/models/{}/metadata"),
    ("POST", "/v1/models/{}:predict"), ("GET", "/v2/models/{}"),
    ("GET", "/v2/models/{}/ready"), ("POST", "/v2/models/{}/infer"),
]


def rows_of(database: Database, job_id: int) -> dict[str, int]:
    with database.session() as session:
        return {
            table.__tablename__: session.scalar(
                select(func.count()).select_from(table).where(table.job_id == job_id))
            for table in (Metric, EpochSummary, Artifact, Checkpoint)
        } | {"jobs": session.scalar(select(func.count()).where(Job.id == job_id))}


def cached_file(settings: Settings, content: bytes) -> Path:
    return settings.models_dir / f"{sha256(content)}.tflite"


def test_deleting_a_finished_job_takes_all_it_owns_and_every_route_is_404(
    client: TestClient, database: Database, settings: Settings
) -> None:
    job_id = client.post("/jobs", json={}).json()["id"]
    model = run_to_success(database, job_id, steps=7)
    # A checkpoint left behind (none should be, for a finished job) goes too.
    with database.session(write=True) as session:
        session.execute(insert(Checkpoint).values(job_id=job_id, step=7, lease_epoch=1,
                                                  content=b"x", created_at=utcnow()))
    assert client.get(f"/jobs/{job_id}/model").content == model  # now in the API's cache
    assert cached_file(settings, model).exists()
    assert rows_of(database, job_id) == {"metrics": 7, "epochs": 1, "artifacts": 1,
                                         "checkpoints": 1, "jobs": 1}
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 204 and response.content == b""
    assert rows_of(database, job_id) == {"metrics": 0, "epochs": 0, "artifacts": 0,
                                         "checkpoints": 0, "jobs": 0}
    assert not cached_file(settings, model).exists()
    for method, path in EVERY_ROUTE:
        body = PIXELS if method == "POST" and "cancel" not in path else None
        answer = client.request(method, path.format(job_id), json=body)
        assert answer.status_code == 404, (method, path, answer.text)
    for alias in ("latest", "best"):
        assert client.get(f"/jobs/{alias}/model").status_code == 404
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize("state", ["queued", "running"])
def test_a_queued_or_running_job_is_409_cancel_it_first(
    client: TestClient, database: Database, state: str
) -> None:
    job_id = client.post("/jobs", json={}).json()["id"]
    if state == "running":
        with database.session(write=True) as session:
            leases.claim_job(session=session, worker_id="w")
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 409
    assert response.json()["message"] == f"job {job_id} is {state}: cancel it first"
    assert client.get(f"/jobs/{job_id}").json()["state"] == state
    if state == "queued":  # cancelled, it can go
        client.post(f"/jobs/{job_id}/cancel")
        assert client.delete(f"/jobs/{job_id}").status_code == 204
        assert client.delete(f"/jobs/{job_id}").status_code == 404


def test_a_model_file_another_job_shares_stays(client: TestClient, database: Database,
                                               settings: Settings) -> None:
    first, second = (client.post("/jobs", json={}).json()["id"] for _ in range(2))
    run_to_success(database, first, model=b"the same bytes")
    run_to_success(database, second, model=b"the same bytes")
    assert client.get(f"/jobs/{first}/model").status_code == 200
    assert client.delete(f"/jobs/{first}").status_code == 204
    assert cached_file(settings, b"the same bytes").exists()
    assert client.get(f"/jobs/{second}/model").content == b"the same bytes"
    assert client.delete(f"/jobs/{second}").status_code == 204
    assert not cached_file(settings, b"the same bytes").exists()


def test_a_big_jobs_rows_go_in_chunks(database: Database,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "DELETE_CHUNK_ROWS", 100)
    with database.session(write=True) as session:
        job_id = jobs.submit_job(session=session, spec=JobSpec()).id
    run_to_success(database, job_id, steps=1_050)
    deletes: list[str] = []

    def spy(_conn, _cursor, statement, *_):  # noqa: ANN001, ANN202
        if statement.lstrip().upper().startswith("DELETE FROM METRICS"):
            deletes.append(statement)

    event.listen(database.engine, "before_cursor_execute", spy)
    try:
        jobs.delete_job(database=database, job_id=job_id)
    finally:
        event.remove(database.engine, "before_cursor_execute", spy)
    assert len(deletes) == 11  # 1,050 rows, 100 a transaction
    assert rows_of(database, job_id)["metrics"] == 0


def test_another_api_process_forgets_a_deleted_job(settings: Settings,
                                                   database: Database) -> None:
    """Two API processes on one database (two apps): B has served the model, A deletes
    the job. B's catalog looks the job up again after RECHECK_AFTER, and its sweeper's
    pass drops the model file B kept."""
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        job_id = a.post("/jobs", json={}).json()["id"]
        model = run_to_success(database, job_id)
        b_models = b.app.state.catalog.store.models_dir
        assert b.get(f"/jobs/{job_id}/model").content == model
        assert a.delete(f"/jobs/{job_id}").status_code == 204
        b.app.state.catalog.RECHECK_AFTER = 0.0  # as if that much time had passed
        assert b.get(f"/jobs/{job_id}/model").status_code == 404
        assert b.post(f"/v1/models/{job_id}:predict", json=PIXELS).status_code == 404
        (b_models / f"{sha256(model)}.tflite").write_bytes(model)  # B's own cache copy
        b.app.state.catalog.after_sweep([])
        assert not (b_models / f"{sha256(model)}.tflite").exists()


def test_a_key_deletes_its_own_jobs_only(settings: Settings, database: Database) -> None:
    with secured_client(settings) as secured:
        alice, reader = make_key(secured, "alice"), make_key(secured, "r", scopes=["read"])
        job_id = secured.post("/jobs", headers=alice.headers, json={}).json()["id"]
        secured.post(f"/jobs/{job_id}/cancel", headers=alice.headers)
        assert secured.delete(f"/jobs/{job_id}", headers=reader.headers).status_code == 404
        assert secured.delete(f"/jobs/{job_id}", headers=alice.headers).status_code == 204
        other = secured.post("/jobs", headers=ADMIN, json={}).json()["id"]
        secured.post(f"/jobs/{other}/cancel", headers=ADMIN)
        assert secured.delete(f"/jobs/{other}", headers=alice.headers).status_code == 404
        assert secured.delete(f"/jobs/{other}", headers=ADMIN).status_code == 204


def _finished_days_ago(database: Database, job_id: int, days: float) -> None:
    with database.session(write=True) as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(finished_at=utcnow() - timedelta(days=days)))


def test_retention_deletes_finished_jobs_older_than_the_setting(
    settings: Settings, database: Database
) -> None:
    kept = settings.model_copy(update={"retention_days": None})
    retained = settings.model_copy(update={"retention_days": 7})
    with TestClient(create_app(retained)) as client:
        old, recent, failed_old, queued = (client.post("/jobs", json={}).json()["id"]
                                           for _ in range(4))
        model = run_to_success(database, old)
        run_to_success(database, recent)
        with database.session(write=True) as session:
            lease = leases.claim_job(session=session, worker_id="w")
            leases.fail_job(session=session, lease=lease, error="boom")
        assert client.get(f"/jobs/{old}/model").status_code == 200  # cached
        for job_id in (old, failed_old):
            _finished_days_ago(database, job_id, 8)
        _finished_days_ago(database, recent, 6)
        assert sweeper.delete_expired(database, kept) == []  # off by default
        deleted = sweeper.delete_expired(database, retained)
        assert sorted(deleted) == sorted([(old, sha256(model)), (failed_old, None)])
        client.app.state.catalog.after_sweep(deleted)
        assert not cached_file(settings, model).exists()
        assert [j["id"] for j in client.get("/jobs").json()["items"]] == [queued, recent]
        assert rows_of(database, old)["metrics"] == 0
        assert sweeper.delete_expired(database, retained) == []


def test_the_apis_sweeper_applies_retention(settings: Settings, database: Database) -> None:
    """The API's own background sweeper, paced by its heartbeat interval."""
    retained = settings.model_copy(update={"retention_days": 1, "heartbeat_interval": 0.05,
                                           "lease_timeout": 1.0})
    with TestClient(create_app(retained)) as client:
        job_id = client.post("/jobs", json={}).json()["id"]
        client.post(f"/jobs/{job_id}/cancel")
        _finished_days_ago(database, job_id, 2)
        for _ in range(400):
            if client.get(f"/jobs/{job_id}").status_code == 404:
                break
            time.sleep(0.05)
        assert client.get(f"/jobs/{job_id}").status_code == 404


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[tuple[Settings, Database]]:
    """SQLite's own upkeep (PostgreSQL's autovacuum does this there): a fresh file."""
    settings = make_settings(tmp_path / "data")
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    yield settings, database
    database.dispose()


def test_sqlite_gives_space_back_after_a_deletion_and_truncates_its_wal(
    sqlite: tuple[Settings, Database],
) -> None:
    settings, database = sqlite
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental
    with database.session(write=True) as session:
        job_id = jobs.submit_job(session=session, spec=JobSpec()).id
    run_to_success(database, job_id, steps=120_000)  # one transaction: a big WAL
    path = settings.data_dir / "tapefit.db"
    wal = Path(f"{path}-wal")
    full = os.path.getsize(path)
    jobs.delete_job(database=database, job_id=job_id)
    assert wal.stat().st_size > sweeper.WAL_TRUNCATE_BYTES
    sweeper.compact_sqlite(database)
    with database.engine.connect() as connection:
        free = connection.exec_driver_sql("PRAGMA freelist_count").scalar()
    assert free <= sweeper.VACUUM_ABOVE_PAGES
    assert wal.stat().st_size == 0
    assert os.path.getsize(path) < full / 4, (os.path.getsize(path), full)


def test_the_wal_is_left_alone_while_a_job_runs(sqlite: tuple[Settings, Database]) -> None:
    settings, database = sqlite
    with database.session(write=True) as session:
        first, second = (jobs.submit_job(session=session, spec=JobSpec()).id for _ in range(2))
    run_to_success(database, first, steps=120_000)
    with database.session(write=True) as session:
        leases.claim_job(session=session, worker_id="w2")  # the second one runs now
    wal = Path(f"{settings.data_dir / 'tapefit.db'}-wal")
    size = wal.stat().st_size
    assert size > sweeper.WAL_TRUNCATE_BYTES
    sweeper.compact_sqlite(database)
    assert wal.stat().st_size == size > 0
    assert second


def test_an_older_sqlite_file_is_switched_to_incremental_by_a_command(
    sqlite: tuple[Settings, Database],
) -> None:
    _, database = sqlite
    with database.engine.connect() as connection:
        raw = connection.connection.driver_connection
        raw.execute("PRAGMA auto_vacuum=NONE")
        raw.execute("VACUUM")  # as a file made before this version is
        assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    assert sweeper.make_incremental(database) is True
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
    assert sweeper.make_incremental(database) is False


def test_postgresql_needs_no_such_command(settings: Settings, database: Database) -> None:
    if database.is_sqlite:
        assert sweeper.make_incremental(database) is False  # a new file is so already
        return
    with pytest.raises(ValueError, match="autovacuum"):
        sweeper.make_incremental(database)
    sweeper.compact_sqlite(database)  # nothing to do, no error


def test_a_job_not_finished_is_never_expired(database: Database, settings: Settings) -> None:
    with database.session(write=True) as session:
        job_id = jobs.submit_job(session=session, spec=JobSpec()).id
        session.flush()
        session.execute(update(Job).where(Job.id == job_id).values(
            state=JobState.running, finished_at=utcnow() - timedelta(days=30)))
    retained = settings.model_copy(update={"retention_days": 1})
    assert sweeper.delete_expired(database, retained) == []
    assert rows_of(database, job_id)["jobs"] == 1


def test_tapefit_db_compact_switches_an_older_file(tmp_path: Path) -> None:
    """The command, as a real process, on a file made before incremental vacuum existed."""
    settings = make_settings(tmp_path / "data")
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    with database.engine.connect() as connection:
        raw = connection.connection.driver_connection
        raw.execute("PRAGMA auto_vacuum=NONE")
        raw.execute("VACUUM")
    database.dispose()
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(settings.data_dir)}
    env.pop("TAPEFIT_DATABASE_URL", None)
    first = subprocess.run([TAPEFIT, "db", "compact"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "compacted; space freed by deletions now goes back to the disk"
    again = subprocess.run([TAPEFIT, "db", "compact"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.stdout.strip() == "compacted (it already gave space back after deletions)"
    database = Database(settings.sqlalchemy_url)
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
    database.dispose()
