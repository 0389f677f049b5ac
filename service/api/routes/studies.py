"""Studies: hyperparameter searches whose trials are jobs (service/studies/)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from service.api.deps import SessionDep, WriteSessionDep, requires
from service.api.responses import ErrorRead, errors
from service.api.routes.events import EventStreamResponse
from service.ids import PATTERN, parse_id
from service.queue.event_hub import EventHubs
from service.studies import events, studies
from service.studies.schemas import StudiesRead, StudyCreate, StudyRead
from service.studies.trials import StudyNotFound
from service.tenancy.identity import Scope

# Studies are the admin's until they carry an owner as jobs do: a study's trials are made
# by the API, not by a key, so a key could neither see them nor tell its studies apart.
router = APIRouter(prefix="/studies", tags=["studies"], responses=errors(403),
                   dependencies=[Depends(requires(Scope.admin))])


def parse_study_id(
    study_id: Annotated[str, Path(description="the study's id",
                                  json_schema_extra={"pattern": f"^{PATTERN}$"})],
) -> int:
    """Study ids follow the one id rule (service/ids.py): anything else names no study."""
    parsed = parse_id(study_id)
    if parsed is None:
        raise StudyNotFound(study_id[:40])
    return parsed


StudyIdDep = Annotated[int, Depends(parse_study_id)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyRead,
             responses=errors(413, 415, 503))
def create_study(session: WriteSessionDep, response: Response, spec: StudyCreate) -> StudyRead:
    """Start a study: its first trials are queued when the 201 arrives."""
    study = studies.create_study(session=session, spec=spec)
    response.headers["Location"] = f"/studies/{study.id}"
    return studies.describe(session=session, study=study)


@router.get("", response_model=StudiesRead)
def list_studies(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> StudiesRead:
    """Studies, newest first, each with its trial counts and best trial."""
    rows, total = studies.list_studies(session=session, limit=limit, offset=offset)
    return StudiesRead(items=[studies.summarize(session=session, study=s) for s in rows],
                       total=total, limit=limit, offset=offset)


@router.get("/{study_id}", response_model=StudyRead, responses=errors(404))
def read_study(session: SessionDep, study_id: StudyIdDep) -> StudyRead:
    """One study: its spec, every trial (params, state, value, epochs) and the best."""
    return studies.describe(session=session,
                            study=studies.get_study(session=session, study_id=study_id))


@router.post("/{study_id}/cancel", response_model=StudyRead, responses=errors(404, 409, 503))
def cancel_study(session: WriteSessionDep, study_id: StudyIdDep) -> StudyRead:
    """Stop the study: no new trials, its queued ones cancelled, running ones stopped."""
    study = studies.cancel_study(session=session, study_id=study_id)
    return studies.describe(session=session, study=study)


_STREAM = {
    200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
    **errors(404),
    503: {"model": ErrorRead, "description": "As many streams are open as "
          "TAPEFIT_MAX_STREAMS allows; retry after Retry-After seconds"},
}


@router.get("/{study_id}/events", response_class=StreamingResponse, responses=_STREAM)
async def study_events(request: Request, study_id: StudyIdDep) -> StreamingResponse:
    """Server-Sent Events: trial_started, trial_reported (an epoch), trial_ended, best, and
    the study's state; the stream ends when the study does."""
    hubs: EventHubs = request.app.state.event_hubs
    hubs.admit()  # counts against TAPEFIT_MAX_STREAMS like a job's stream
    database = request.app.state.database
    try:
        first = await asyncio.to_thread(events.read, database, study_id)
    except BaseException:
        hubs.release()
        raise
    return EventStreamResponse(events.stream(database, study_id, first), on_close=hubs.release)
