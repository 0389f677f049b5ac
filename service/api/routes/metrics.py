"""A job's training history: per-batch loss and per-epoch figures."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import JobIdDep, SessionDep
from service.api.responses import errors
from service.queue import history
from service.schemas import EpochRead, MetricPage, MetricSummary

router = APIRouter(prefix="/jobs/{job_id}", tags=["metrics"])


@router.get("/metrics", response_model=MetricPage | MetricSummary, responses=errors(404))
def read_metrics(
    session: SessionDep,
    job_id: JobIdDep,
    # Steps are 32-bit in the database; a larger cursor would be a 500 on PostgreSQL.
    after_step: Annotated[int, Query(ge=-1, le=2**31 - 1)] = -1,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
    max_points: Annotated[
        int | None,
        Query(ge=1, le=10_000, description="fold the whole curve into at most this many points"),
    ] = None,
) -> MetricPage | MetricSummary:
    """Per-batch rows with step > after_step (poll with next_after_step), or with max_points
    the whole curve in buckets with min, max and mean loss."""
    if max_points is not None:
        return history.metrics_summary(session=session, job_id=job_id, max_points=max_points)
    return history.metrics_page(session=session, job_id=job_id, after_step=after_step, limit=limit)


@router.get("/epochs", response_model=list[EpochRead], responses=errors(404))
def read_epochs(session: SessionDep, job_id: JobIdDep) -> list[EpochRead]:
    """One row per finished epoch: mean training loss and accuracy, test loss and accuracy."""
    return history.epoch_rows(session=session, job_id=job_id)
