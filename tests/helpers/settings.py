"""Settings for a test (its own data dir, the committed MNIST sample, quick polling) and
scratch databases on the PostgreSQL server at 127.0.0.1:5432 (TAPEFIT_TEST_POSTGRES_URL to
point elsewhere)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.config import Settings

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mnist_sample.npz"

# A job small enough to train in a couple of seconds on the committed sample.
TINY_SPEC = {
    "model": {"layers": [{"units": 32, "activation": "relu"},
                         {"units": 10, "activation": "softmax"}]},
    "epochs": 1,
    "batch_size": 100,
    "dataset": {"train_limit": 500, "test_limit": 200},
}


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test: its own data dir, the committed sample, quick polling."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": None,
        "mnist_path": SAMPLE,
        "poll_interval": 0.05,
        "flush_interval": 0.2,
    }
    return Settings(**{**values, **overrides})


POSTGRES_URL = os.environ.get(
    "TAPEFIT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def scratch_postgres(suffix: str) -> Iterator[str]:
    """The URL of a new, empty database on the PostgreSQL server, dropped afterwards."""
    server = make_url(POSTGRES_URL)
    name = f"tapefit_test_{os.getpid()}_{suffix}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty_postgres(url: str) -> None:
    """Every row gone, ids from 1 again: the tables' state after a fresh migration."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(
            "TRUNCATE jobs, metrics, epochs, workers, api_keys, datasets, studies "
            "RESTART IDENTITY CASCADE"
        ))
    engine.dispose()
