"""The datasets room's domain errors; service/api/errors.py answers each (native status,
protocol status) in its one table."""

from __future__ import annotations


class DatasetError(ValueError):
    """The uploaded file cannot be a dataset: the message names what is wrong (422)."""


class DatasetTooLarge(ValueError):
    """The upload, or what it unpacks to, is over a limit; the message names the setting (413)."""


class NotMultipart(ValueError):
    """POST /datasets got a body that is not a multipart/form-data upload (415)."""


class DatasetNotFound(LookupError):
    """No dataset has this id, or it was deleted (404)."""

    def __init__(self, dataset_id: int | str, message: str | None = None) -> None:
        super().__init__(message or f"dataset {dataset_id} not found")


class DatasetConflict(RuntimeError):
    """The dataset cannot be changed now: a queued or running job uses it, or it is the
    built-in MNIST (409)."""
