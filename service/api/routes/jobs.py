"""Submit, list, read and cancel training jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from service.api.deps import JobIdDep, SessionDep, WriteSessionDep
from service.api.responses import errors
from service.queue import jobs
from service.schemas import JobRead, JobSpec, JobsRead, JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead,
    responses={200: {"model": JobRead, "description": "A retry with the same Idempotency-Key"},
               **errors(409, 413, 415, 503)},
)
def submit_job(
    session: WriteSessionDep,
    response: Response,
    spec: JobSpec | None = None,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="A retry with the same key returns the same job."),
    ] = None,
) -> JobRead:
    """Queue a training job; every field is optional and defaults to the book's example."""
    spec = spec or JobSpec()
    earlier = idempotency_key and jobs.find_submission(
        session=session, idempotency_key=idempotency_key, spec=spec
    )
    if earlier:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    job = earlier or jobs.submit_job(session=session, spec=spec, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/jobs/{job.id}"
    return jobs.describe(job)


@router.get("", response_model=JobsRead)
def list_jobs(
    session: SessionDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> JobsRead:
    """Jobs, newest first, optionally only those in one state."""
    rows, total = jobs.list_jobs(session=session, state=state, limit=limit, offset=offset)
    return JobsRead(
        items=jobs.describe_page(session=session, jobs=rows), total=total, limit=limit,
        offset=offset,
    )


@router.get("/{job_id}", response_model=JobRead, responses=errors(404))
def read_job(session: SessionDep, job_id: JobIdDep) -> JobRead:
    """One job: its state, progress, latest loss and final test accuracy."""
    return jobs.describe(jobs.get_job(session=session, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobRead, responses=errors(404, 409, 503))
def cancel_job(session: WriteSessionDep, job_id: JobIdDep) -> JobRead:
    """Cancel a queued job now, or stop a running one within a second (409 when finished)."""
    return jobs.describe(jobs.cancel_job(session=session, job_id=job_id))
