"""A job's training history as the API serves it: loss rows by step, the curve folded into
buckets, and the per-epoch figures. Read-only; the worker writes it through service.queue.leases."""

from __future__ import annotations

import math

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import EpochSummary, Metric
from service.queue.jobs import get_job
from service.schemas import EpochRead, MetricBucket, MetricPage, MetricRead, MetricSummary


def metrics_page(*, session: Session, job_id: int, after_step: int, limit: int) -> MetricPage:
    """Per-batch rows after `after_step`, in step order."""
    get_job(session=session, job_id=job_id)
    rows = session.scalars(
        select(Metric)
        .where(Metric.job_id == job_id, Metric.step > after_step)
        .order_by(Metric.step)
        .limit(limit)
    ).all()
    items = [MetricRead.model_validate(row, from_attributes=True) for row in rows]
    return MetricPage(items=items, next_after_step=items[-1].step if items else after_step)


def metrics_summary(*, session: Session, job_id: int, max_points: int) -> MetricSummary:
    """The loss curve folded into at most `max_points` buckets of consecutive steps, each
    with its mean, min and max loss: a long run's shape in a small response."""
    get_job(session=session, job_id=job_id)
    count = session.scalar(select(func.count()).where(Metric.job_id == job_id)) or 0
    size = max(1, math.ceil(count / max_points))
    bucket = (Metric.step // size).label("bucket")
    rows = session.execute(
        select(
            func.min(Metric.step),
            func.max(Metric.step),
            func.min(Metric.epoch),
            func.avg(Metric.loss),
            func.min(Metric.loss),
            func.max(Metric.loss),
            func.avg(Metric.accuracy),
            func.max(Metric.time),
        )
        .where(Metric.job_id == job_id)
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    fields = ("step", "step_end", "epoch", "loss", "loss_min", "loss_max", "accuracy", "time")
    items = [MetricBucket(**dict(zip(fields, row, strict=True))) for row in rows]
    return MetricSummary(items=items, bucket_size=size, total_steps=count)


def epoch_rows(*, session: Session, job_id: int) -> list[EpochRead]:
    """The job's finished epochs, in order."""
    get_job(session=session, job_id=job_id)
    rows = session.scalars(
        select(EpochSummary).where(EpochSummary.job_id == job_id).order_by(EpochSummary.epoch)
    ).all()
    return [EpochRead.model_validate(row, from_attributes=True) for row in rows]
