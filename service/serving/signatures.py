"""What a model reads and the labels it answers in: MNIST's digits, or the uploaded dataset
its job trained on (kept with the job at submit, `job_datasets`, so it outlives the dataset).

Inputs are checked against it before they reach the model: an MNIST model takes its images
as it always has (store.check_images); an image dataset's model takes pixels in [0, 1] in its
(height, width, channels) shape, flat or nested; a tabular one takes raw feature rows, any
finite values (its .tflite standardises them).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from service.db import Database
from service.models import Dataset, Job, JobDataset
from service.serving.store import MAX_INSTANCES, BadInput, ModelUnavailable, check_images

MNIST_CLASSES = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True)
class Signature:
    """A model's input and output in its dataset's terms."""

    kind: str  # mnist, image or tabular
    classes: tuple[str, ...]
    sample_shape: tuple[int, ...]  # one sample: (28, 28, 1), (H, W, C) or (features,)
    dataset: str  # its name

    @property
    def mnist(self) -> bool:
        return self.kind == "mnist"

    @property
    def size(self) -> int:
        return math.prod(self.sample_shape)


MNIST = Signature("mnist", MNIST_CLASSES, (28, 28, 1), "mnist")


def check_inputs(array: np.ndarray, signature: Signature) -> np.ndarray:
    """A batch for the model as float32 rows (N, values per sample); BadInput saying what
    the model takes otherwise."""
    if signature.mnist:
        return check_images(array)
    shape, sample = array.shape, signature.sample_shape
    accepted = [(signature.size,), sample]
    if len(sample) == 3 and sample[2] == 1:
        accepted.append(sample[:2])  # a gray image without its channel axis
    if array.ndim < 2 or shape[1:] not in accepted:
        expected = " or ".join(str([-1, *s]).replace("-1", "N") for s in accepted)
        raise BadInput(f"the model of dataset '{signature.dataset}' takes {expected}, "
                       f"got {list(shape)}")
    if not 1 <= shape[0] <= MAX_INSTANCES:
        raise BadInput(f"expected 1 to {MAX_INSTANCES} instances, got {shape[0]}")
    if not np.isfinite(array).all():
        raise BadInput("values must be finite numbers (no NaN or infinity)")
    if signature.kind == "image":
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            hint = " (divide 0-255 pixels by 255)" if high > 1.0 else ""
            raise BadInput(f"pixel values must be in [0, 1], got [{low:g}, {high:g}]{hint}")
    return np.ascontiguousarray(array.reshape(shape[0], -1), dtype=np.float32)


def load(*, database: Database, job_id: int) -> Signature:
    """The signature of a job's model, from what the job kept of its dataset (or, for a job
    made without that copy, from the dataset while it exists)."""
    with database.session() as session:
        kept = session.get(JobDataset, job_id)
        if kept is not None:
            return Signature(kept.kind, tuple(kept.classes), tuple(kept.input_shape), kept.name)
        spec = session.scalar(select(Job.spec).where(Job.id == job_id)) or {}
        dataset_id = (spec.get("dataset") or {}).get("id")
        if dataset_id is None:
            return MNIST
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise ModelUnavailable(f"job {job_id}'s dataset {dataset_id} was deleted before "
                                   "its labels were kept with the job")
        return Signature(dataset.kind, tuple(dataset.classes), tuple(dataset.input_shape),
                         dataset.name)


class Signatures:
    """Each served model's signature, looked up once: a job's dataset never changes."""

    _MAX_REMEMBERED = 100_000

    def __init__(self, database: Database) -> None:
        self.database = database
        self._known: dict[int, Signature] = {}
        self._lock = threading.Lock()

    def known(self, job_id: int) -> bool:
        """True when the job's signature was looked up already (`of` reads no database)."""
        return job_id in self._known

    def of(self, job_id: int) -> Signature:
        known = self._known.get(job_id)
        if known is not None:
            return known
        signature = load(database=self.database, job_id=job_id)
        with self._lock:
            if len(self._known) >= self._MAX_REMEMBERED:
                self._known.clear()  # bounded; the next lookups refill it
            self._known[job_id] = signature
        return signature
