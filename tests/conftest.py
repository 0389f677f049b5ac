"""Fixtures: settings on a temporary data dir, a migrated database, an API client.

The `settings` fixture (and so `database` and `client`) runs each test twice: on a SQLite
file and on the PostgreSQL server at 127.0.0.1:5432 (TAPEFIT_TEST_POSTGRES_URL to point
elsewhere), in a scratch database made for this test session and emptied between tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.migrate import upgrade
from tests.helpers.settings import empty_postgres, make_settings, scratch_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated scratch database on the PostgreSQL server, dropped after the session."""
    with scratch_postgres("session") as url:
        upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return make_settings(tmp_path / "data")
    url = request.getfixturevalue("postgres_url")
    empty_postgres(url)
    return make_settings(tmp_path / "data", database_url=url)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    yield database
    database.dispose()


@pytest.fixture
def client(settings: Settings, database: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


# Real processes and TensorFlow training: `make test-fast` leaves these out, `make test` runs
# everything. Besides these folders and the tests that train models, a test says so itself
# with @pytest.mark.slow.
SLOW_FOLDERS = ("e2e", "worker")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        if folder in SLOW_FOLDERS or "trained" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
