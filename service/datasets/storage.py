"""Datasets in the database: rows in `datasets`, their canonical .npz in `dataset_chunks`.

Chunks, not PostgreSQL large objects: the same table works on SQLite and PostgreSQL, a
dataset's rows go with it on delete (a foreign key's cascade; large objects would need their
own cleanup), and each statement moves one bounded chunk, so neither storing nor fetching a
dataset holds it whole in memory (a single 200 MB value would be held whole by the driver,
more than once). A worker copies a dataset to its own data dir once, checked against the
sha256 the row holds, and reuses the copy while the hash matches: workers on other machines
need no shared disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from service.datasets import builtin
from service.datasets.errors import DatasetConflict, DatasetError, DatasetNotFound
from service.datasets.prepare import Prepared
from service.datasets.schemas import DatasetDetail, DatasetRead, DatasetsRead
from service.db import Database
from service.files import NO_SPACE, DiskFull, owned_folder
from service.models import Dataset, DatasetChunk, Job, utcnow
from service.schemas import JobState

CHUNK_BYTES = 1024 * 1024
KEYS = ("x_train", "y_train", "x_test", "y_test")
# A worker's copy of a dataset is made in a folder of its own under the data dir's tmp/, swept
# at the next worker's start if it was killed mid-copy, then renamed into the cache.
SCRATCH_PREFIX = "dataset-"
# Cached copies a worker keeps (the least recently used go first).
CACHE_FILES = 8
ACTIVE = (JobState.queued.value, JobState.running.value)


def store(*, session: Session, prepared: Prepared, name: str, source_name: str) -> Dataset:
    """Add the dataset and its bytes, one chunk per statement, in the caller's transaction."""
    dataset = Dataset(
        name=name,
        format=prepared.format,
        kind=prepared.kind,
        input_shape=prepared.input_shape,
        classes=prepared.classes,
        train_count=prepared.train_count,
        test_count=prepared.test_count,
        size_bytes=prepared.size_bytes,
        sha256=prepared.sha256,
        preprocessing=prepared.preprocessing,
        samples=prepared.samples,
        source_name=source_name,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()  # its id, for the chunks
    with prepared.path.open("rb") as file:
        seq = 0
        while chunk := file.read(CHUNK_BYTES):
            session.execute(insert(DatasetChunk),
                            [{"dataset_id": dataset.id, "seq": seq, "content": chunk}])
            seq += 1
    return dataset


def get(*, session: Session, dataset_id: int) -> Dataset:
    """The dataset, or DatasetNotFound."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DatasetNotFound(dataset_id)
    return dataset


def get_shared(*, session: Session, dataset_id: int) -> Dataset:
    """The dataset, its row locked against a concurrent delete until the transaction ends
    (PostgreSQL's FOR SHARE; SQLite's writers are serialised already). For a job that is
    about to name it."""
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id).with_for_update(read=True)
    )
    if dataset is None:
        raise DatasetNotFound(dataset_id)
    return dataset


def list_datasets(*, session: Session, limit: int, offset: int) -> tuple[Sequence[Dataset], int]:
    """A page of datasets, newest first, and how many there are."""
    total = session.scalar(select(func.count()).select_from(Dataset)) or 0
    rows = session.scalars(
        select(Dataset).order_by(Dataset.id.desc()).limit(limit).offset(offset)
    ).all()
    return rows, total


def jobs_using(*, session: Session, dataset_id: int) -> list[int]:
    """The queued and running jobs that train on the dataset."""
    named = Job.spec["dataset"]["id"].as_integer()
    return list(session.scalars(
        select(Job.id).where(Job.state.in_(ACTIVE), named == dataset_id).order_by(Job.id)
    ))


def delete(*, session: Session, dataset_id: int) -> None:
    """Delete the dataset and its bytes; DatasetConflict while a queued or running job uses it.
    Jobs that already ended keep their models (and the labels stored with them)."""
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id).with_for_update()
    )
    if dataset is None:
        raise DatasetNotFound(dataset_id)
    using = jobs_using(session=session, dataset_id=dataset_id)
    if using:
        jobs = ", ".join(str(job_id) for job_id in using[:10])
        raise DatasetConflict(
            f"dataset {dataset_id} is in use by queued or running job(s) {jobs}: cancel "
            "them, or wait until they end"
        )
    session.delete(dataset)


def samples(*, session: Session, dataset_id: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A few training images (k, h, w, c) uint8 and their class indices; None for tabular."""
    get(session=session, dataset_id=dataset_id)
    content = session.scalar(select(Dataset.samples).where(Dataset.id == dataset_id))
    if content is None:
        return None
    with np.load(io.BytesIO(content), allow_pickle=False) as archive:
        return archive["x"], archive["y"]


def fetch(*, database: Database, dataset_id: int, cache_dir: Path, scratch: Path) -> Path:
    """The dataset's canonical .npz on this machine: a cached copy whose sha256 matches the
    row's, or a fresh copy of the chunks, checked before it is kept. DatasetNotFound when it
    was deleted; DatasetError when the stored bytes do not match their hash; DiskFull."""
    with database.session() as session:
        dataset = get(session=session, dataset_id=dataset_id)
        sha256, size = dataset.sha256, dataset.size_bytes
    path = cache_dir / f"{sha256}.npz"
    if path.is_file() and _sha256_of(path) == sha256:
        path.touch()  # recently used
        return path
    try:
        _copy(database, dataset_id, sha256, size, path, scratch)
    except OSError as exc:
        if exc.errno in NO_SPACE and not isinstance(exc, DiskFull):
            raise DiskFull(exc.errno, f"no space left to copy dataset {dataset_id}") from exc
        raise
    _evict(cache_dir, keep=path)
    return path


def _copy(
    database: Database, dataset_id: int, sha256: str, size: int, path: Path, scratch: Path
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with owned_folder(scratch, prefix=SCRATCH_PREFIX) as folder:
        temporary = folder / path.name
        digest, written = hashlib.sha256(), 0
        with temporary.open("wb") as file, database.session() as session:
            chunks = session.execute(
                select(DatasetChunk.content)
                .where(DatasetChunk.dataset_id == dataset_id)
                .order_by(DatasetChunk.seq)
                .execution_options(yield_per=1)
            )
            for (content,) in chunks:
                file.write(content)
                digest.update(content)
                written += len(content)
            file.flush()
            os.fsync(file.fileno())
        if written == 0:
            raise DatasetNotFound(dataset_id)  # deleted between the two reads
        if digest.hexdigest() != sha256 or written != size:
            raise DatasetError(f"dataset {dataset_id}'s stored bytes do not match their "
                               "recorded sha256: refusing to train on them")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)


def _evict(cache_dir: Path, *, keep: Path) -> None:
    cached = sorted(cache_dir.glob("*.npz"), key=_mtime, reverse=True)
    for old in cached[CACHE_FILES:]:
        if old != keep:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The canonical .npz's four arrays, read-only (shared by the jobs of one worker)."""
    stat = path.stat()
    return _read_arrays(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=2)
def _read_arrays(path: Path, _size: int, _mtime_ns: int) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in KEYS}
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def describe(dataset: Dataset, *, detail: bool = False) -> DatasetRead | DatasetDetail:
    """The dataset as the API shows it; `detail` adds its preprocessing."""
    values = dict(
        id=dataset.id, name=dataset.name, format=dataset.format, kind=dataset.kind,
        input_shape=dataset.input_shape, classes=dataset.classes,
        train_count=dataset.train_count, test_count=dataset.test_count,
        bytes=dataset.size_bytes, sha256=dataset.sha256, source_name=dataset.source_name,
        created_at=dataset.created_at,
    )
    if detail:
        return DatasetDetail(**values, preprocessing=dataset.preprocessing)
    return DatasetRead(**values)


def page(
    *, session: Session, mnist_path: Path | None, limit: int, offset: int
) -> DatasetsRead:
    """The datasets, the built-in mnist first, then the uploaded ones, newest first."""
    rows, total = list_datasets(session=session, limit=limit - (offset == 0),
                                offset=max(offset - 1, 0))
    items = [builtin.mnist(mnist_path)] if offset == 0 else []
    items += [describe(row) for row in rows]
    return DatasetsRead(items=items, total=total + 1, limit=limit, offset=offset)
