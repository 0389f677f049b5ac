"""Typed dependencies for the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.db import Database
from service.jobs import JobNotFound


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


def parse_job_id(job_id: str) -> int:
    """Job ids are server-made integers; anything else names no job (404, not 422)."""
    if not job_id.isdecimal() or len(job_id) > 18:
        raise JobNotFound(job_id)
    return int(job_id)


# scope="function": the commit happens when the route returns, before the response is sent,
# so a 201 means the job is in the database.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
JobIdDep = Annotated[int, Depends(parse_job_id)]
