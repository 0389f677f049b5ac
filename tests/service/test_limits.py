"""Request limits in front of every route: 413 for big bodies (chunked too), 415 for bodies
of a media type no route reads, and ids that cannot reach outside the data dir."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.migrate import upgrade
from tests.helpers.settings import make_settings

LIMIT = 4096


@pytest.fixture
def small(settings: Settings, database: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"max_request_bytes": LIMIT}))) as c:
        yield c


def test_a_body_over_the_limit_is_413(small: TestClient) -> None:
    body = b'{"seed": 1, "x": "' + b"a" * LIMIT + b'"}'
    response = small.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert f"{LIMIT:,} bytes" in response.json()["detail"]
    assert small.get("/jobs").json()["total"] == 0


def test_a_chunked_body_over_the_limit_is_413(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"seed": 1, "x": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    response = small.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert small.get("/jobs").json()["total"] == 0


def test_a_body_under_the_limit_is_read(small: TestClient) -> None:
    assert small.post("/jobs", json={"epochs": 1}).status_code == 201


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""]
)
def test_a_body_no_route_reads_is_415(client: TestClient, content_type: str) -> None:
    response = client.post("/jobs", content=b'{"epochs": 1}',
                           headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_json_with_a_charset_and_no_body_at_all_are_fine(client: TestClient) -> None:
    with_charset = client.post("/jobs", content=b"{}",
                               headers={"Content-Type": "application/json; charset=utf-8"})
    assert with_charset.status_code == 201
    assert client.post("/jobs").status_code == 201


@pytest.mark.parametrize(
    "path", ["/jobs/../x", "/jobs/%2e%2e", "/jobs/%2e%2e/model", "/jobs/..%2f..%2fetc/model",
             "/jobs/%2e%2e%2f%2e%2e%2fpasswd/predict"]
)
def test_ids_that_look_like_paths_are_404(client: TestClient, path: str) -> None:
    method = "POST" if path.endswith("predict") else "GET"
    response = client.request(method, path, json={"instances": [[0.0] * 784]})
    assert response.status_code == 404, (path, response.status_code)


def test_a_write_lock_held_too_long_is_503_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", sqlite_busy_timeout=0.2)
    upgrade(settings.sqlalchemy_url)
    # Another process's writer, holding SQLite's write lock.
    holder = sqlite3.connect(settings.data_dir / "tapefit.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with TestClient(create_app(settings)) as client:
            busy = client.post("/jobs")
            assert busy.status_code == 503
            assert busy.headers["Retry-After"] == "1"
            assert "busy" in busy.json()["detail"]
            assert client.get("/jobs").status_code == 200  # readers are not blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with TestClient(create_app(settings)) as client:
        assert client.post("/jobs").status_code == 201  # and nothing was half-written
        assert client.get("/jobs").json()["total"] == 1


def test_a_database_out_of_reach_is_503_with_retry_after(tmp_path: Path) -> None:
    # A PostgreSQL URL where nothing listens: the server is down or restarting.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"postgresql+psycopg://postgres@127.0.0.1:{held.getsockname()[1]}/test"
        settings = make_settings(tmp_path / "data", database_url=url)
        with TestClient(create_app(settings)) as client:
            response = client.get("/jobs")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "unreachable" in response.json()["detail"]


def test_an_inflated_protocol_body_is_capped_by_the_setting(settings: Settings) -> None:
    """TAPEFIT_MAX_REQUEST_BYTES bounds what a gzip body inflates to, as it bounds the wire."""
    import gzip

    upgrade(settings.sqlalchemy_url)
    small = settings.model_copy(update={"max_request_bytes": 64 * 1024})
    bomb = gzip.compress(b" " * (1024 * 1024))  # ~1 KB that inflates to 1 MiB
    with TestClient(create_app(small)) as client:
        response = client.post(
            "/v2/models/best/infer", content=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert response.status_code == 413, response.text
    assert response.json() == {"error": "the inflated body is over the limit of 65,536 bytes"}
