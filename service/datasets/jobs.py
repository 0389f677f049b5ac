"""Jobs on uploaded datasets, as the API submits them: the dataset must exist, the model
must fit it (its input shape, one output unit per class), and the job keeps a copy of what
the dataset was (`job_datasets`), so its model answers in those labels after a delete."""

from __future__ import annotations

import math

from sqlalchemy.orm import Session

from service.datasets import storage
from service.datasets.errors import DatasetNotFound
from service.layers import ShapeError, check_model
from service.models import Dataset, JobDataset
from service.schemas import JobSpec


class JobDatasetError(ValueError):
    """A job's dataset does not exist, or its model does not fit it (422); `field` is the
    part of the spec at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check(*, session: Session, spec: JobSpec, max_rows: int | None = None) -> Dataset | None:
    """The uploaded dataset `spec` names (None for MNIST), locked against a concurrent delete
    until the caller's transaction ends; JobDatasetError when it is not there or the model
    does not fit it, or the job would write more than `max_rows` loss rows on it."""
    if spec.dataset.id is None:
        return None
    try:
        dataset = storage.get_shared(session=session, dataset_id=spec.dataset.id)
    except DatasetNotFound:
        raise JobDatasetError(
            "dataset.id", f"dataset {spec.dataset.id} does not exist (or was deleted); "
            "GET /datasets lists them"
        ) from None
    try:
        check_model(spec.model.layers, tuple(dataset.input_shape),
                    num_classes=len(dataset.classes))
    except ShapeError as exc:
        raise JobDatasetError(
            "model.layers", f"{exc} (dataset {dataset.id} '{dataset.name}' has "
            f"{len(dataset.classes)} classes and input shape {tuple(dataset.input_shape)})"
        ) from None
    samples = min(spec.dataset.train_limit or dataset.train_count, dataset.train_count)
    rows = spec.epochs * math.ceil(samples / spec.batch_size)
    if max_rows is not None and rows > max_rows:
        raise JobDatasetError(
            "epochs", f"this job would write {rows:,} loss rows ({spec.epochs} epochs of "
            f"{samples:,} samples in batches of {spec.batch_size}), more than "
            f"TAPEFIT_MAX_JOB_ROWS ({max_rows:,}) allows: use fewer epochs, a larger "
            "batch_size or a train_limit"
        )
    return dataset


def attach(*, session: Session, job_id: int, dataset: Dataset) -> None:
    """Keep with the job what its dataset is now: name, kind, input shape and classes (once:
    a retried submission that found its earlier job finds its copy too)."""
    if session.get(JobDataset, job_id) is not None:
        return
    session.add(JobDataset(job_id=job_id, dataset_id=dataset.id, name=dataset.name,
                           kind=dataset.kind, input_shape=list(dataset.input_shape),
                           classes=list(dataset.classes)))
