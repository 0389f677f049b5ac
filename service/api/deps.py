"""Typed dependencies for the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from service.db import Database
from service.ids import PATTERN, parse_id
from service.queue.jobs import JobNotFound
from service.serving.catalog import NAME_PATTERN

# Told, not checked: FastAPI would answer a mismatch with a 422, and an id that names no
# job is a 404 (parse_id says which).
_ID_SCHEMA = {"pattern": f"^{PATTERN}$"}


def get_session(request: Request) -> Iterator[Session]:
    """A read session for this request."""
    database: Database = request.app.state.database
    with database.session() as session:
        yield session


def get_write_session(request: Request) -> Iterator[Session]:
    """A session that commits when the route returns without error.

    It takes SQLite's write lock up front (see service/db.py), so only routes that write use it.
    """
    database: Database = request.app.state.database
    with database.session(write=True) as session:
        yield session


def parse_job_id(
    job_id: Annotated[str, Path(description="the job's id", json_schema_extra=_ID_SCHEMA)],
) -> int:
    """Job ids are server-made integers (service/ids.py); anything else names no job (404,
    not 422)."""
    parsed = parse_id(job_id)
    if parsed is None:
        raise JobNotFound(job_id[:40])  # echo a little of it, not a whole oversized path
    return parsed


# scope="function": the commit happens when the route returns, before the response is sent,
# so a 201 means the job is in the database.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
JobIdDep = Annotated[int, Depends(parse_job_id)]

# A served model's name and version, in the TF Serving and KServe paths: told in the schema
# but not checked there either, since any other is a 404 that says why (service/serving/catalog.py).
Name = Annotated[
    str, Path(description="a job id, latest or best", json_schema_extra={"pattern": NAME_PATTERN})
]
Version = Annotated[str, Path(description="the job id", json_schema_extra=_ID_SCHEMA)]
