"""Apply the Alembic migrations: the only way the schema is made.

Every process that needs the schema (`tapefit serve`, each `tapefit worker`, `tapefit db
upgrade`) calls `upgrade`, so it runs once per start of each: it must be cheap when there is
nothing to do and safe when several processes start at once. A database already at the head
is left alone after one read; otherwise the migration runs under a lock (PostgreSQL: an
advisory lock; SQLite: a lock file beside the database), and whoever takes it second finds
the work done.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

# In a source tree (and an editable install) migrations/ stands beside the packages; a wheel
# ships the same folder as service/migrations (see setup.py).
_CANDIDATES = (
    Path(__file__).resolve().parent / "migrations",
    Path(__file__).resolve().parent.parent / "migrations",
)
# Any constant shared by every tapefit process: the key of the PostgreSQL advisory lock.
_ADVISORY_LOCK_KEY = 0x7A9EF17


def migrations_dir() -> Path:
    """Where the migration scripts are, installed or in a source tree."""
    for candidate in _CANDIDATES:
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError(f"migrations not found at {' or '.join(map(str, _CANDIDATES))}")


def alembic_config(url: str) -> Config:
    """An Alembic config for `url`, independent of the current directory."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser treats % as interpolation; URLs may hold %-escaped passwords.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision`; a SQLite file is made, in WAL mode."""
    config = alembic_config(url)
    database = make_url(url).database if url.startswith("sqlite") else None
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if revision == "head" and _at_head(connection, config):
                return
        with _migration_lock(engine, database) as connection:
            # Whoever held the lock before may have done it all.
            if revision == "head" and _at_head(connection, config):
                return
            if engine.dialect.name == "sqlite":
                # Space freed by deletions can go back to the file system (the API's sweeper
                # runs incremental_vacuum). It takes hold only in a file without tables yet;
                # an older file is switched by `tapefit db compact`.
                connection.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
                connection.commit()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            if engine.dialect.name == "sqlite":
                # WAL is a property of the file; switching to it needs the file to itself,
                # so it happens here, before the API and workers open it.
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def _at_head(connection: Connection, config: Config) -> bool:
    heads = set(ScriptDirectory.from_config(config).get_heads())
    current = set(MigrationContext.configure(connection).get_current_heads())
    connection.rollback()  # end the read, so no snapshot or lock outlives the check
    return current == heads


@contextlib.contextmanager
def _migration_lock(engine, database: str | None) -> Iterator[Connection]:  # noqa: ANN001
    """A connection held under the migration lock until the block ends."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            connection.commit()
            try:
                yield connection
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                )
                connection.commit()
        elif database and database != ":memory:":
            with open(f"{database}.migrate-lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                yield connection
        else:
            yield connection
