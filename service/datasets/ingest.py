"""An upload becomes a dataset: received to disk (upload.py), read by its format
(formats.py, images.py), checked and split (prepare.py), then stored (storage.py) in one
transaction, so a refused or broken upload leaves nothing behind.

Everything an upload writes to disk is in a folder of its own under the data dir's tmp/,
removed when the upload ends however it ends (and swept at the next upload if the API was
killed meanwhile). One upload is parsed at a time per API process: parsing holds the
dataset's arrays in memory, up to TAPEFIT_MAX_DATASET_UNPACKED_BYTES.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from service.config import Settings
from service.datasets import formats, images, prepare, storage
from service.datasets.errors import DatasetError
from service.datasets.schemas import UploadForm
from service.datasets.upload import Upload, receive
from service.db import Database
from service.files import owned_folder, sweep_abandoned
from service.models import Dataset

UPLOAD_PREFIX = "upload-"
FORMATS = {".npz": "npz", ".csv": "csv", ".zip": "images"}
_PARSING = threading.Lock()


@contextlib.asynccontextmanager
async def receiving(
    chunks: AsyncIterator[bytes], *, content_type: str, settings: Settings
) -> AsyncIterator[Upload]:
    """The upload received to a folder of its own, removed when the block ends."""
    scratch = settings.data_dir / "tmp"
    sweep_abandoned(scratch, prefix=UPLOAD_PREFIX)
    with owned_folder(scratch, prefix=UPLOAD_PREFIX) as folder:
        yield await receive(chunks, content_type=content_type, folder=folder,
                            max_bytes=settings.max_dataset_bytes)


def create(*, database: Database, settings: Settings, upload: Upload, form: UploadForm) -> Dataset:
    """Parse, check and store the received upload; DatasetError (and DatasetTooLarge) name
    what is wrong with it."""
    kind = format_of(upload.filename)
    with _PARSING:
        raw = _read(upload, kind, form, settings)
        prepared = prepare.prepare(raw, test_fraction=form.test_fraction,
                                   out=upload.path.with_name("dataset.npz"))
        del raw
    name = form.name or PurePosixPath(upload.filename).stem[:100] or "dataset"
    with database.session(write=True) as session:
        return storage.store(session=session, prepared=prepared, name=name,
                             source_name=upload.filename)


def format_of(filename: str) -> str:
    """npz, csv or images, by the file's extension."""
    suffix = Path(filename).suffix.lower()
    if suffix not in FORMATS:
        raise DatasetError(
            f"{filename!r}: name the file .npz (arrays), .csv (a table) or .zip (a folder per "
            "class of images)"
        )
    return FORMATS[suffix]


def _read(upload: Upload, kind: str, form: UploadForm, settings: Settings) -> formats.RawDataset:
    what = repr(upload.filename)
    limits = {"max_unpacked": settings.max_dataset_unpacked_bytes}
    if kind == "npz":
        return formats.read_npz(upload.path, what=what, max_entries=settings.max_dataset_entries,
                                **limits)
    if kind == "csv":
        return formats.read_csv(upload.path, what=what, label_column=form.label_column,
                                **limits)
    return images.read_image_zip(
        upload.path, what=what, image_size=form.size(),
        color=form.color.value if form.color else None,
        max_entries=settings.max_dataset_entries,
        max_decoded_image_bytes=settings.max_decoded_image_bytes, **limits,
    )
