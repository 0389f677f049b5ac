"""A job's training, live: Server-Sent Events of its batches, epochs and state changes."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from service import events
from service.api.deps import JobIdDep
from service.api.responses import errors
from service.db import Database

router = APIRouter(prefix="/jobs/{job_id}", tags=["metrics"])

_STREAM = {
    200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
    **errors(404),
}


@router.get("/events", response_class=StreamingResponse, responses=_STREAM)
async def job_events(
    request: Request,
    job_id: JobIdDep,
    # Plain optional strings (not nullable): an HTTP header or query value is never null.
    last_event_id: Annotated[
        str,
        Header(
            description="resume after this event id (a step, or a step and 'e')",
            json_schema_extra={"pattern": events.CURSOR_PATTERN},  # our parser says why
        ),
    ] = "",
    last_event_id_query: Annotated[
        str,
        Query(
            alias="last_event_id",
            description="the same, for clients without headers",
            json_schema_extra={"pattern": events.CURSOR_PATTERN},  # our parser says why
        ),
    ] = "",
) -> StreamingResponse:
    """Server-Sent Events: the backlog after Last-Event-ID, then each batch, epoch and state
    change as the worker writes it; the stream ends when the job reaches a final state."""
    try:
        cursor = events.parse_cursor(last_event_id or last_event_id_query)
    except ValueError as exc:
        where = "header" if last_event_id else "query"
        raise RequestValidationError(
            [{"loc": (where, "last_event_id"), "msg": str(exc), "type": "value_error"}]
        ) from None
    database: Database = request.app.state.database
    # The first poll happens here, so an unknown job is a plain 404 rather than a stream.
    first = await asyncio.to_thread(events.load, database, job_id=job_id, cursor=cursor)
    return StreamingResponse(
        events.stream(database, job_id=job_id, cursor=cursor, first=first),
        media_type="text/event-stream",
        # No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
