"""Submit, list, read, cancel and delete training jobs: each key its own (an admin, all)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from service.api.deps import (
    IdentityDep,
    JobIdDep,
    SessionDep,
    TrainerDep,
    WriteSessionDep,
)
from service.api.responses import errors
from service.api.serving_deps import CatalogDep
from service.datasets import jobs as job_datasets
from service.queue import jobs
from service.schemas import JobRead, JobSpec, JobsRead, JobState
from service.tenancy import quotas

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead,
    responses={200: {"model": JobRead, "description": "A retry with the same Idempotency-Key"},
               **errors(403, 409, 413, 415, 429, 503)},
)
def submit_job(
    identity: TrainerDep,  # first: a key without the scope never takes the write lock
    session: WriteSessionDep,
    request: Request,
    response: Response,
    spec: JobSpec | None = None,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="A retry with the same key returns the same job."),
    ] = None,
) -> JobRead:
    """Queue a training job; every field is optional and defaults to the book's example.
    422 past TAPEFIT_MAX_JOB_ROWS loss rows; 429 past the key's max_queued."""
    spec = spec or JobSpec()
    earlier = idempotency_key and jobs.find_submission(
        session=session, idempotency_key=idempotency_key, spec=spec, owner=identity.owner
    )
    dataset = None
    if earlier:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    else:
        if spec.dataset.id is None:  # an uploaded dataset's rows are counted on its own size
            jobs.check_size(spec, request.app.state.settings.max_job_rows)
        quotas.check_submit(session=session, identity=identity)
        # An uploaded dataset must exist and fit the model (MNIST's was checked on parsing).
        dataset = job_datasets.check(session=session, spec=spec,
                                     max_rows=request.app.state.settings.max_job_rows)
    job = earlier or jobs.submit_job(session=session, spec=spec,
                                     idempotency_key=idempotency_key, owner=identity.owner)
    if dataset is not None:
        job_datasets.attach(session=session, job_id=job.id, dataset=dataset)
    response.headers["Location"] = f"/jobs/{job.id}"
    return jobs.describe(job)


@router.get("", response_model=JobsRead)
def list_jobs(
    session: SessionDep,
    identity: IdentityDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> JobsRead:
    """Jobs, newest first, optionally only those in one state: a key's own (an admin's: all,
    each with its owner)."""
    rows, total = jobs.list_jobs(session=session, state=state, limit=limit, offset=offset,
                                 identity=identity)
    return JobsRead(
        items=jobs.describe_page(session=session, jobs=rows), total=total, limit=limit,
        offset=offset,
    )


@router.get("/{job_id}", response_model=JobRead, responses=errors(404))
def read_job(session: SessionDep, job_id: JobIdDep) -> JobRead:
    """One job: its state, progress, latest loss and final test accuracy."""
    return jobs.describe(jobs.get_job(session=session, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobRead, responses=errors(403, 404, 409, 503))
def cancel_job(job_id: JobIdDep, identity: TrainerDep, session: WriteSessionDep) -> JobRead:
    """Cancel a queued job now, or stop a running one within a second (409 when finished)."""
    return jobs.describe(jobs.cancel_job(session=session, job_id=job_id))


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               responses=errors(403, 404, 409, 503))
def delete_job(
    job_id: JobIdDep, identity: TrainerDep, request: Request, catalog: CatalogDep
) -> Response:
    """Delete a finished job with its loss rows, epochs, checkpoint and model (409 while it
    is queued or running: cancel it first); every route of it is then 404."""
    sha256 = jobs.delete_job(database=request.app.state.database, job_id=job_id)
    catalog.forget(job_id, sha256)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
