"""The engine and sessions: SQLite tuned for one writer at a time, PostgreSQL as it is.

Transactions are committed at the edge: `Database.session()` commits when its block ends
without error and rolls back otherwise. Writers ask for `write=True`, which on SQLite starts
the transaction with BEGIN IMMEDIATE: the write lock is taken up front, so a read-then-write
transaction can never fail half-way with "database is locked" (a deferred transaction that
read an old snapshot cannot be upgraded and is refused at once, whatever the busy timeout).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.files import NO_SPACE

# Seconds a SQLite writer waits for the lock before giving up with "database is locked".
SQLITE_BUSY_TIMEOUT_S = 10.0


def _configure_sqlite(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 (DBAPI objects)
        # Let SQLAlchemy's "begin" event, not the sqlite3 module, decide how a transaction
        # starts, so writers can say BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer and the writer never blocks readers, so the
        # API answers while a worker writes loss rows.
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode; only an OS crash can
        # lose the last commits, and it never corrupts the file.
        cursor.execute("PRAGMA synchronous=NORMAL")
        # SQLite ignores foreign keys unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
        # Wait for a lock held by another process instead of failing at once.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(
    url: str, *, busy_timeout: float = SQLITE_BUSY_TIMEOUT_S, pool_size: int | None = None
) -> Engine:
    """An engine for `url`, with the SQLite settings above when it is SQLite. `pool_size`
    bounds its connections (threads beyond it wait for one); None: SQLAlchemy's default."""
    pool = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 0}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": busy_timeout}, **pool)
        _configure_sqlite(engine, busy_timeout)
        return engine
    # pool_pre_ping: a worker idle for hours must not fail on a connection the server closed.
    return create_engine(url, pool_pre_ping=True, **pool)


# PostgreSQL's SQLSTATE disk_full: "could not extend file", "could not write to file" with
# ENOSPC. psycopg raises it as errors.DiskFull, an OperationalError.
_POSTGRES_DISK_FULL = "53100"


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` means the disk is full: SQLite's "database or disk is full", its
    PostgreSQL counterpart (SQLSTATE 53100), or a file write that got ENOSPC or EDQUOT.

    Unlike a busy lock, waiting alone does not fix it: someone has to free space. Clients
    are told so (507), and workers hand their job back and wait until there is room."""
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE
    if not isinstance(exc, OperationalError):
        return False
    # SQLite's extended result code: SQLITE_FULL (the database's disk, or its temporary
    # files' disk), or the WAL index (-shm) failing to grow, which SQLite documents as a
    # sign of a full volume. Checked by code, since the message can vary.
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL or code == sqlite3.SQLITE_IOERR_SHMSIZE
    if getattr(exc.orig, "sqlstate", None) == _POSTGRES_DISK_FULL:
        return True
    return "database or disk is full" in str(exc.orig).lower()


def is_transient(exc: OperationalError) -> bool:
    """True for an error that waiting fixes: SQLite's lock held past the busy timeout, or a
    lost or refused connection (PostgreSQL restarting). False for the rest, such as a missing
    table or a read-only file, which retrying would only hide, and for a full disk, which
    `is_disk_full` tells apart."""
    if is_disk_full(exc):
        return False
    message = str(exc.orig).lower()
    if "database is locked" in message or "database is busy" in message:
        return True
    # sqlite3 reports schema and file errors as OperationalError too; psycopg keeps
    # OperationalError for connection trouble (its schema errors are ProgrammingError).
    return exc.connection_invalidated or type(exc.orig).__module__.startswith("psycopg")


class Database:
    """One engine and its two kinds of session: read and write."""

    def __init__(
        self, url: str, *, busy_timeout: float = SQLITE_BUSY_TIMEOUT_S,
        pool_size: int | None = None,
    ) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout=busy_timeout, pool_size=pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        writer = self.engine.execution_options(sqlite_immediate=True)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session whose transaction commits when the block succeeds."""
        factory = self._write if write else self._read
        with factory() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
