"""Alembic environment: the models' metadata is the target; SQLite migrates in batch mode.

`service.migrate.upgrade` passes the connection it holds the migration lock on; the
`alembic` command line (for developers writing migrations) opens its own.
"""

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from service.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        migrate(given)
        return
    # A plain engine, not the app's: the app turns SQLite foreign keys on, and batch mode
    # recreates tables, which with ON DELETE CASCADE would empty the child tables.
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=NullPool)
    with engine.connect() as connection:
        migrate(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
