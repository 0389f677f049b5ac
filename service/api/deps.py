"""Typed dependencies for the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from service.api.middleware.auth import IDENTITY
from service.db import Database
from service.ids import PATTERN, parse_id
from service.queue.jobs import JobNotFound, check_visible
from service.serving.catalog import NAME_PATTERN
from service.tenancy.identity import Identity, Scope

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


async def get_identity(request: Request) -> Identity:
    """Who is asking: the identity the auth middleware found; on a server without an admin
    token (no auth middleware), the admin. Async and without I/O: no thread hop."""
    identity = request.scope.get(IDENTITY)
    if identity is not None:
        return identity
    if request.app.state.settings.api_token is None:
        return Identity.ADMIN
    raise RuntimeError(f"{request.url.path} is a public path: it has no identity to read")


def requires(scope: Scope):  # noqa: ANN202 (a dependency factory)
    async def dependency(request: Request) -> Identity:
        identity = await get_identity(request)
        identity.require(scope, f"{request.method} {request.url.path}")
        return identity

    dependency.__name__ = f"requires_{scope}"
    return dependency


def parse_job_id(
    request: Request,
    job_id: Annotated[str, Path(description="the job's id", json_schema_extra=_ID_SCHEMA)],
) -> int:
    """Job ids are server-made integers (service/ids.py); anything else names no job (404,
    not 422), and so does another key's job: a key sees only its own (an admin, all)."""
    parsed = parse_id(job_id)
    if parsed is None:
        raise JobNotFound(job_id[:40])  # echo a little of it, not a whole oversized path
    identity = request.scope.get(IDENTITY)
    if identity is not None and identity.sees is not None:
        database: Database = request.app.state.database
        with database.session() as session:
            check_visible(session=session, job_id=parsed, identity=identity)
    return parsed


# scope="function": the commit happens when the route returns, before the response is sent,
# so a 201 means the job is in the database.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
JobIdDep = Annotated[int, Depends(parse_job_id)]
# Who is asking (any valid token holds `read`), and the scopes that writes need. Routes that
# change something take TrainerDep; the keys take AdminDep.
IdentityDep = Annotated[Identity, Depends(get_identity)]
TrainerDep = Annotated[Identity, Depends(requires(Scope.train))]
AdminDep = Annotated[Identity, Depends(requires(Scope.admin))]

# A served model's name and version, in the TF Serving and KServe paths: told in the schema
# but not checked there either, since any other is a 404 that says why (service/serving/catalog.py).
Name = Annotated[
    str, Path(description="a job id, latest or best", json_schema_extra={"pattern": NAME_PATTERN})
]
Version = Annotated[str, Path(description="the job id", json_schema_extra=_ID_SCHEMA)]
