"""A job's training, live: Server-Sent Events of its batches, epochs and state changes."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.api.deps import JobIdDep
from service.api.responses import ErrorRead, errors
from service.queue import events
from service.queue.event_hub import EventHubs

router = APIRouter(prefix="/jobs/{job_id}", tags=["metrics"])

_STREAM = {
    200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
    **errors(404),
    503: {
        "model": ErrorRead,
        "description": "As many streams are open as TAPEFIT_MAX_STREAMS allows (or the "
        "database is busy); retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"},
                                    "description": "seconds to wait"}},
    },
}


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that closes its stream and frees its slot however it ends: the
    job ended, the client left, or the response never started."""

    def __init__(self, stream: AsyncGenerator[str, None], *, on_close: Callable[[], None]) -> None:
        super().__init__(
            stream,
            media_type="text/event-stream",
            # No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._stream, self._on_close = stream, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._stream.aclose()
            finally:
                self._on_close()


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
    change as the worker writes it; the stream ends when the job reaches a final state.
    503 with Retry-After when TAPEFIT_MAX_STREAMS streams are open."""
    try:
        cursor = events.parse_cursor(last_event_id or last_event_id_query)
    except ValueError as exc:
        where = "header" if last_event_id else "query"
        raise RequestValidationError(
            [{"loc": (where, "last_event_id"), "msg": str(exc), "type": "value_error"}]
        ) from None
    hubs: EventHubs = request.app.state.event_hubs
    hubs.admit()  # StreamsFull past the cap: a 503 with Retry-After (service/api/errors.py)
    try:
        # Read here, so an unknown job is a plain 404 rather than a stream.
        first = await hubs.opening(job_id=job_id, cursor=cursor)
    except BaseException:
        hubs.release()
        raise
    return EventStreamResponse(hubs.stream(job_id=job_id, first=first), on_close=hubs.release)
